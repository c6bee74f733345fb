"""Jinja2 templates for subjects and bodies, in a sandbox.

Templates come from campaign files, values from lead CSVs: neither is trusted. Three layers:
`check_safe` refuses obvious sandbox-escape attempts up front (so `campaign create` fails, not the
send loop), the SandboxedEnvironment blocks what slips through at render time (SecurityError), and
StrictUndefined turns a missing lead field into an error instead of an email saying "Hi ,".
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NoReturn

import jinja2
from jinja2 import StrictUndefined, Undefined, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import internalcode

from sender.errors import UsageError

_TEMPLATE_CACHE_SIZE = 256


class FieldUndefinedError(UndefinedError):
    """An UndefinedError that also carries the missing name, so callers need not parse the message."""

    def __init__(self, message: str, name: str | None) -> None:
        super().__init__(message)
        self.name = name


class _FieldUndefined(StrictUndefined):
    __slots__ = ()

    @internalcode
    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> NoReturn:
        # The sandbox reuses undefined objects with exc=SecurityError for unsafe access: keep that.
        if self._undefined_exception is UndefinedError:
            name = self._undefined_name
            raise FieldUndefinedError(self._undefined_message, None if name is None else str(name))
        raise self._undefined_exception(self._undefined_message)


# Undefined/StrictUndefined alias their operators (__str__, __add__, __iter__, ...) to the base-class
# function object, so overriding the method alone would not be seen by `str(x)` or `x + 1`: rebind
# every alias to the override.
for _klass in (StrictUndefined, Undefined):
    for _attr, _value in list(vars(_klass).items()):
        if _value is Undefined._fail_with_undefined_error and _attr not in vars(_FieldUndefined):
            setattr(_FieldUndefined, _attr, _FieldUndefined._fail_with_undefined_error)


@functools.lru_cache(maxsize=1)
def _env() -> SandboxedEnvironment:
    # One environment per process: Jinja caches compiled code per environment.
    return SandboxedEnvironment(
        undefined=_FieldUndefined,
        # Plain-text email: HTML escaping would turn "O'Brien & Co" into entities.
        autoescape=False,
        # Keep the body exactly as written in the campaign file, final newline included.
        keep_trailing_newline=True,
    )


def _unsafe_name(node: nodes.Node) -> str | None:
    """The private name `node` reaches for, if it is one of the statically visible forms."""
    if isinstance(node, nodes.Getattr):
        return node.attr if node.attr.startswith("_") else None
    if isinstance(node, nodes.Getitem):
        arg = node.arg
        if isinstance(arg, nodes.Const) and isinstance(arg.value, str) and arg.value.startswith("_"):
            return arg.value
        return None
    if isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
        arg = node.args[0]
        if isinstance(arg, nodes.Const) and isinstance(arg.value, str) and arg.value.startswith("_"):
            return arg.value
    return None


def _find_unsafe(ast: nodes.Template) -> tuple[str, int] | None:
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name = _unsafe_name(node)
        if name is not None:
            return name, node.lineno
    return None


# Filters and tests that look attributes up by a name given as data (`map(attribute=...)`, `groupby(...)`).
_ATTRIBUTE_ARG_FILTERS = ("selectattr", "rejectattr", "groupby")


def _private_path(value: object) -> bool:
    return not isinstance(value, str) or any(part.startswith("_") for part in value.split("."))


def _find_escape_construct(ast: nodes.Template) -> tuple[str, int] | None:
    """Constructs an email template never needs but sandbox escapes are built from, where the name they
    reach for is computed or hidden in a string (the sandbox would refuse at render time too; refusing
    them here makes `campaign create` fail instead of the send loop). Security pass, issue 4."""
    kinds = (nodes.Const, nodes.Getitem, nodes.Filter, nodes.Test, nodes.Call, nodes.Include, nodes.Import,
             nodes.FromImport, nodes.Extends)  # fmt: skip
    for node in ast.find_all(kinds):
        problem = None
        if isinstance(node, nodes.Const) and isinstance(node.value, str) and "__" in node.value:
            problem = "a string containing '__'"  # '{0.__class__}'.format(x), '__cla' ~ 'ss__'
        elif isinstance(node, nodes.Getitem) and not isinstance(node.arg, (nodes.Const, nodes.Slice)):
            problem = "a computed subscript (use a constant key)"
        elif isinstance(node, (nodes.Filter, nodes.Test)):
            if node.name == "attr" and node.args and not isinstance(node.args[0], nodes.Const):
                problem = "attr() with a computed name"
            by_name = [kw.value for kw in node.kwargs if kw.key == "attribute"]
            if node.name in _ATTRIBUTE_ARG_FILTERS and node.args:
                by_name.append(node.args[0])
            if any(not isinstance(arg, nodes.Const) or _private_path(arg.value) for arg in by_name):
                problem = f"{node.name}() with a computed or private attribute name"
        elif isinstance(node, nodes.Call):
            if isinstance(node.node, nodes.Getattr) and node.node.attr in ("format", "format_map"):
                problem = "str.format() (use the format filter)"
        elif isinstance(node, (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            problem = f"{{% {type(node).__name__.lower()} %}}"  # no loader anyway: fail at create
        if problem is not None:
            return problem, node.lineno
    return None


@functools.lru_cache(maxsize=_TEMPLATE_CACHE_SIZE)
def _compiled(source: str) -> jinja2.Template:
    """Parse, statically vet and compile; cached by source. Raises jinja2's own errors."""
    env = _env()
    ast = env.parse(source)
    unsafe = _find_unsafe(ast)
    if unsafe is not None:
        # Also enforced here, not only in check_safe, so render() of a template that never went
        # through `campaign create` (e.g. edited in the database) gets the same refusal.
        raise SecurityError(f"access to private name {unsafe[0]!r} at line {unsafe[1]} is not allowed")
    construct = _find_escape_construct(ast)
    if construct is not None:
        raise SecurityError(f"{construct[0]} at line {construct[1]} is not allowed")
    return env.from_string(ast)


def check_safe(source: str, what: str) -> None:
    """UsageError if the template reaches for a name starting with "_" (the classic escape route)."""
    try:
        ast = _env().parse(source)
    except TemplateSyntaxError as exc:
        raise _syntax_usage_error(exc, what) from None
    unsafe = _find_unsafe(ast)
    if unsafe is not None:
        name, line = unsafe
        raise UsageError(
            f"{what}: template line {line} accesses {name!r}: names starting with '_' are not allowed"
        )
    construct = _find_escape_construct(ast)
    if construct is not None:
        raise UsageError(f"{what}: template line {construct[1]}: {construct[0]} is not allowed")


def compile_template(source: str, what: str) -> jinja2.Template:
    """Compile (cached) after check_safe; UsageError "<what>: template syntax error at line N: msg"."""
    check_safe(source, what)
    try:
        return _compiled(source)
    except TemplateSyntaxError as exc:
        raise _syntax_usage_error(exc, what) from None


@functools.lru_cache(maxsize=_TEMPLATE_CACHE_SIZE)
def _renderer(source: str) -> tuple[jinja2.Template, dict[str, Any]]:
    template = _compiled(source)
    return template, dict(template.globals)


def render(source: str, context: Mapping[str, object]) -> str:
    """Render with StrictUndefined in the sandbox; jinja2 errors (UndefinedError, SecurityError,
    TemplateSyntaxError) go to the caller."""
    template, names = _renderer(source)
    # Template.render, except that the template's globals (a ChainMap over the environment's) come
    # from a dict made once: iterating the ChainMap (twice) on every call was half the cost of
    # rendering a short template. The context sees the same names either way.
    env = template.environment
    ctx = env.context_class(env, {**names, **context}, template.name, template.blocks, globals=names)
    try:
        return template.environment.concat(template.root_render_func(ctx))  # type: ignore[attr-defined]
    except Exception:
        template.environment.handle_exception()


def missing_field(source: str, context: Mapping[str, object]) -> str | None:
    """The first field the template needs that `context` lacks, or None if it renders."""
    try:
        render(source, context)
    except FieldUndefinedError as exc:
        # An undefined without a name is not something our templates produce, but never report
        # "renders fine" for a template that did not render.
        return exc.name if exc.name is not None else str(exc)
    return None


def _syntax_usage_error(exc: TemplateSyntaxError, what: str) -> UsageError:
    message = " ".join(str(exc.message or exc).split())
    return UsageError(f"{what}: template syntax error at line {exc.lineno}: {message}")
