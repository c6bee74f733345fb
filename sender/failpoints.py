"""Failpoints: named places in the claim-and-send path where a test can make the sender crash or stall.

In the spirit of FoundationDB's buggify and TiKV's fail-rs: the fault catalogue and the chaos soak
kill a real `sendguard run` at an exact protocol step and then check that no lead got two copies.

Configuration is read once, at import, from the environment variable ``SENDGUARD_FAILPOINTS``::

    SENDGUARD_FAILPOINTS="name=action[;name=action...]"
    action := [P%][N*]kind[(arg)]
    kind   := crash | stall(SECONDS) | error

- ``crash``: print ``failpoint NAME: crash`` to stderr, flush, then ``os._exit(86)`` (no cleanup,
  no `finally`, no atexit: the closest a test gets to SIGKILL at an exact line).
- ``stall(SECONDS)``: ``time.sleep(SECONDS)`` (e.g. to outlive a lease).
- ``error``: raise ``FailpointError(name)`` (a RuntimeError).
- ``P%``: fire with probability P percent per hit; ``N*``: fire at most N times.
  Examples: ``after_claim=crash``, ``mid_data=30%crash;after_250=5%crash``,
  ``while_recording=1*stall(5)``. ``SENDGUARD_FAILPOINTS_SEED`` makes the randomness reproducible.

A malformed value or an unknown name never crashes the import (this module is imported by the
send path): it leaves the failpoints off and `check()` raises UsageError, which the CLI calls at
start-up so that `sendguard` exits 2 with one clear line.

Use in code (one attribute check when off, hence zero cost in production)::

    from sender import failpoints as fp
    if fp.ENABLED:
        fp.hit(fp.AFTER_CLAIM)

The points, in protocol order:

- ``after_claim``: the claim UPDATE ran, its transaction (claim + reserve) is not committed yet.
- ``after_reserve``: claim and reservation committed; about to take the transmit gate.
- ``after_gate``: the gate committed (`transmitting`), before connecting to the SMTP server.
- ``mid_data``: inside DATA, part of the payload written, the final dot not yet sent.
- ``after_250``: the server answered 250 to the final dot; nothing recorded yet.
- ``while_recording``: inside the record transaction, after its UPDATEs, before COMMIT.
"""

from __future__ import annotations

import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sender.errors import UsageError

ENV = "SENDGUARD_FAILPOINTS"
SEED_ENV = "SENDGUARD_FAILPOINTS_SEED"
CRASH_EXIT_CODE = 86

AFTER_CLAIM = "after_claim"
AFTER_RESERVE = "after_reserve"
AFTER_GATE = "after_gate"
MID_DATA = "mid_data"
AFTER_250 = "after_250"
WHILE_RECORDING = "while_recording"
NAMES: tuple[str, ...] = (AFTER_CLAIM, AFTER_RESERVE, AFTER_GATE, MID_DATA, AFTER_250, WHILE_RECORDING)

KINDS: tuple[str, ...] = ("crash", "stall", "error")


class FailpointError(RuntimeError):
    """Raised by a failpoint whose action is `error`."""

    def __init__(self, name: str) -> None:
        super().__init__(f"failpoint {name}: error")
        self.name = name


@dataclass
class Action:
    kind: str  # one of KINDS
    arg: float | None = None  # stall: seconds
    percent: float = 100.0
    remaining: int | None = None  # None: unlimited


_ACTION_RE = re.compile(
    r"""^(?:(?P<pct>\d+(?:\.\d+)?)%)?
        (?:(?P<count>\d+)\*)?
        (?P<kind>[a-z_]+)
        (?:\((?P<arg>[^()]*)\))?$""",
    re.VERBOSE,
)


def _parse_action(name: str, text: str) -> Action:
    m = _ACTION_RE.match(text)
    if m is None:
        raise ValueError(
            f"{ENV}: failpoint {name}: cannot parse action {text!r} (expected [P%][N*]crash|stall(S)|error)"
        )
    kind, arg = m["kind"], m["arg"]
    if kind not in KINDS:
        raise ValueError(f"{ENV}: failpoint {name}: unknown action {kind!r} (known: {', '.join(KINDS)})")
    action = Action(kind)
    if kind == "stall":
        if arg is None:
            raise ValueError(f"{ENV}: failpoint {name}: stall needs seconds, e.g. stall(5)")
        try:
            action.arg = float(arg)
        except ValueError:
            raise ValueError(
                f"{ENV}: failpoint {name}: stall seconds must be a number, not {arg!r}"
            ) from None
        if not action.arg >= 0 or action.arg == float("inf"):
            raise ValueError(f"{ENV}: failpoint {name}: stall seconds must be finite and >= 0, not {arg!r}")
    elif arg is not None:
        raise ValueError(f"{ENV}: failpoint {name}: {kind} takes no argument")
    if m["pct"] is not None:
        action.percent = float(m["pct"])
        if action.percent > 100:
            raise ValueError(f"{ENV}: failpoint {name}: probability {m['pct']}% is over 100%")
    if m["count"] is not None:
        action.remaining = int(m["count"])
    return action


def parse(spec: str) -> dict[str, Action]:
    """`name=action;...` -> {name: Action}; ValueError with a one-line message on any mistake."""
    actions: dict[str, Action] = {}
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, text = part.partition("=")
        name, text = name.strip(), text.strip().replace(" ", "")
        if not sep or not name or not text:
            raise ValueError(f"{ENV}: expected name=action, got {part!r}")
        if name not in NAMES:
            raise ValueError(f"{ENV}: unknown failpoint {name!r} (known: {', '.join(NAMES)})")
        if name in actions:
            raise ValueError(f"{ENV}: failpoint {name!r} given twice")
        actions[name] = _parse_action(name, text)
    return actions


_lock = threading.Lock()
_actions: dict[str, Action] = {}
_rng = random.Random()
ENABLED: bool = False
CONFIG_ERROR: str | None = None


def configure(spec: str | None, seed: str | None = None) -> None:
    """(Re)load the configuration; the import does this once from the environment. Tests call it
    directly. A bad spec leaves every failpoint off and is reported by `check()`."""
    global ENABLED, CONFIG_ERROR, _actions
    with _lock:
        _actions, ENABLED, CONFIG_ERROR = {}, False, None
        if seed is not None and seed.strip():
            try:
                _rng.seed(int(seed))
            except ValueError:
                CONFIG_ERROR = f"{SEED_ENV} must be an integer, not {seed!r}"
                return
        else:
            _rng.seed()
        if not spec or not spec.strip():
            return
        try:
            _actions = parse(spec)
        except ValueError as exc:
            CONFIG_ERROR = str(exc)
            return
        ENABLED = bool(_actions)


def check() -> None:
    """Raise UsageError (exit 2) if the environment's configuration was malformed."""
    if CONFIG_ERROR is not None:
        raise UsageError(CONFIG_ERROR)


def active() -> dict[str, str]:
    """The configured failpoints, for a start-up log line (`{name: kind}`)."""
    with _lock:
        return {name: a.kind for name, a in _actions.items()}


def hit(name: str) -> None:
    """Pass through failpoint `name`: fire its action if configured and its odds and count allow."""
    with _lock:
        action = _actions.get(name)
        if action is None or action.remaining == 0:
            return
        if action.percent < 100 and _rng.random() * 100 >= action.percent:
            return
        if action.remaining is not None:
            action.remaining -= 1
    if action.kind == "crash":
        try:
            sys.stderr.write(f"failpoint {name}: crash\n")
            sys.stderr.flush()
        finally:
            os._exit(CRASH_EXIT_CODE)
    elif action.kind == "stall":
        time.sleep(action.arg or 0.0)  # the point of a stall: outlive a lease or a timeout
    else:
        raise FailpointError(name)


def mid_payload(send: Callable[[bytes], object], wire: bytes) -> bytes:
    """For `mid_data`: write the first half of the DATA payload with `send`, pass through the
    failpoint, and return the rest (which holds the final dot) for the caller to write."""
    if MID_DATA not in _actions:
        return wire
    half = len(wire) // 2
    send(wire[:half])
    hit(MID_DATA)
    return wire[half:]


configure(os.environ.get(ENV), os.environ.get(SEED_ENV))
