"""sender/failpoints.py: the SENDGUARD_FAILPOINTS syntax, odds, counts, the three actions, and the CLI's
exit 2 on a bad value. The crash cases of the fault catalogue (tests/integration/test_faults_crash.py)
rely on every one of these."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sender import failpoints as fp
from sender.errors import UsageError
from tests.conftest import run_cli


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    """Each test configures the module itself; afterwards it is as the environment set it at import."""
    fp.configure(None)
    yield
    fp.configure(os.environ.get(fp.ENV), os.environ.get(fp.SEED_ENV))


def _fires(name: str, hits: int) -> int:
    fired = 0
    for _ in range(hits):
        try:
            fp.hit(name)
        except fp.FailpointError:
            fired += 1
    return fired


# --- parsing --------------------------------------------------------------------------------------


def test_off_by_default_and_hit_is_a_no_op() -> None:
    assert fp.ENABLED is False and fp.CONFIG_ERROR is None
    for name in fp.NAMES:
        fp.hit(name)  # nothing configured: returns, never raises
    fp.check()


def test_names_are_the_documented_six() -> None:
    assert fp.NAMES == (
        "after_claim",
        "after_reserve",
        "after_gate",
        "mid_data",
        "after_250",
        "while_recording",
    )
    assert (
        fp.AFTER_CLAIM,
        fp.AFTER_RESERVE,
        fp.AFTER_GATE,
        fp.MID_DATA,
        fp.AFTER_250,
        fp.WHILE_RECORDING,
    ) == (fp.NAMES)


def test_parse_full_syntax() -> None:
    actions = fp.parse(
        " after_claim=crash ; mid_data=30%crash;after_250=5%2*error;while_recording=1*stall(0.5);"
    )
    assert actions == {
        "after_claim": fp.Action("crash"),
        "mid_data": fp.Action("crash", percent=30.0),
        "after_250": fp.Action("error", percent=5.0, remaining=2),
        "while_recording": fp.Action("stall", arg=0.5, remaining=1),
    }


def test_configure_enables_only_with_a_point() -> None:
    fp.configure(" ; ")
    assert fp.ENABLED is False and fp.CONFIG_ERROR is None
    fp.configure("after_gate=error")
    assert fp.ENABLED is True and fp.active() == {"after_gate": "error"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bogus=crash", "unknown failpoint 'bogus'"),
        ("after_claim", "expected name=action"),
        ("after_claim=", "expected name=action"),
        ("after_claim=explode", "unknown action 'explode'"),
        ("after_claim=stall", "stall needs seconds"),
        ("after_claim=stall(soon)", "must be a number"),
        ("after_claim=stall(-1)", ">= 0"),
        ("after_claim=stall(nan)", ">= 0"),
        ("after_claim=crash(3)", "takes no argument"),
        ("after_claim=150%crash", "over 100%"),
        ("after_claim=crash%30", "cannot parse action"),
        ("after_claim=-1*crash", "cannot parse action"),
        ("after_claim=crash;after_claim=error", "given twice"),
    ],
)
def test_malformed_values_disable_everything_and_are_reported(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        fp.parse(spec)
    fp.configure(f"after_gate=error;{spec}")
    assert fp.ENABLED is False  # never half-configured
    assert fp.CONFIG_ERROR is not None and message in fp.CONFIG_ERROR
    assert "\n" not in fp.CONFIG_ERROR
    with pytest.raises(UsageError, match="SENDGUARD_FAILPOINTS"):
        fp.check()
    fp.hit(fp.AFTER_GATE)  # off: no error raised


def test_bad_seed_is_reported() -> None:
    fp.configure("after_gate=error", seed="abc")
    assert fp.ENABLED is False
    assert fp.CONFIG_ERROR is not None and "SENDGUARD_FAILPOINTS_SEED" in fp.CONFIG_ERROR


# --- odds and counts ------------------------------------------------------------------------------


def test_error_raises_failpoint_error_every_time() -> None:
    fp.configure("after_reserve=error")
    with pytest.raises(fp.FailpointError, match="failpoint after_reserve: error") as info:
        fp.hit(fp.AFTER_RESERVE)
    assert isinstance(info.value, RuntimeError) and info.value.name == "after_reserve"
    assert _fires(fp.AFTER_RESERVE, 10) == 10
    fp.hit(fp.AFTER_CLAIM)  # another point is not configured


def test_count_limits_the_firings() -> None:
    fp.configure("after_gate=3*error")
    assert _fires(fp.AFTER_GATE, 10) == 3
    assert _fires(fp.AFTER_GATE, 10) == 0


def test_zero_count_never_fires() -> None:
    fp.configure("after_gate=0*error")
    assert fp.ENABLED is True
    assert _fires(fp.AFTER_GATE, 50) == 0


def test_probability_is_roughly_honoured_and_reproducible_with_a_seed() -> None:
    fp.configure("mid_data=30%error", seed="42")
    first = [_fires(fp.MID_DATA, 1) for _ in range(2000)]
    fp.configure("mid_data=30%error", seed="42")
    second = [_fires(fp.MID_DATA, 1) for _ in range(2000)]
    assert first == second  # same seed, same sequence
    assert 480 <= sum(first) <= 720  # 30% of 2000 = 600, far more than 5 sigma (~100) either side
    fp.configure("mid_data=0%error", seed="1")
    assert _fires(fp.MID_DATA, 500) == 0
    fp.configure("mid_data=100%error", seed="1")
    assert _fires(fp.MID_DATA, 500) == 500


def test_probability_and_count_combine() -> None:
    fp.configure("after_250=50%4*error", seed="7")
    assert _fires(fp.AFTER_250, 1000) == 4


def test_stall_sleeps() -> None:
    fp.configure("while_recording=1*stall(0.3)")
    start = time.monotonic()
    fp.hit(fp.WHILE_RECORDING)
    assert time.monotonic() - start >= 0.29
    start = time.monotonic()
    fp.hit(fp.WHILE_RECORDING)  # used up
    assert time.monotonic() - start < 0.29


def test_mid_payload_writes_half_then_fires() -> None:
    written: list[bytes] = []
    wire = b"0123456789.\r\n"
    assert fp.mid_payload(written.append, wire) == wire and written == []  # not configured
    fp.configure("mid_data=error")
    with pytest.raises(fp.FailpointError):
        fp.mid_payload(written.append, wire)
    assert written == [wire[: len(wire) // 2]]  # part of the payload left, the final dot did not
    fp.configure("mid_data=1*stall(0)")
    written.clear()
    rest = fp.mid_payload(written.append, wire)
    assert written[0] + rest == wire and not written[0].endswith(b".\r\n")


# --- crash: a real process --------------------------------------------------------------------------


def _python(code: str, spec: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SENDGUARD_FAILPOINTS=spec, **extra)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_crash_exits_86_at_once_with_one_line() -> None:
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "from sender import failpoints as fp\n"
        "assert fp.ENABLED\n"
        "try:\n"
        "    fp.hit(fp.AFTER_CLAIM); print('not reached')\n"
        "finally:\n"
        "    print('finally ran')\n"
    )
    result = _python(code, "after_claim=crash")
    assert result.returncode == fp.CRASH_EXIT_CODE == 86
    assert result.stderr == "failpoint after_claim: crash\n"
    # os._exit: no finally, no atexit, nothing flushed that the crash did not flush itself.
    assert result.stdout == ""


def test_environment_is_read_once_at_import_with_seed() -> None:
    code = (
        "from sender import failpoints as fp\n"
        "n = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        fp.hit(fp.AFTER_GATE)\n"
        "    except fp.FailpointError:\n"
        "        n += 1\n"
        "print(n)\n"
    )
    runs = [_python(code, "after_gate=50%error", SENDGUARD_FAILPOINTS_SEED="3") for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    assert 60 <= int(runs[0].stdout) <= 140


@pytest.mark.parametrize(
    "spec", ["nosuch=crash", "after_claim=boom", "after_claim=stall(x)", "mid_data=200%crash"]
)
def test_cli_exits_2_with_one_line_on_a_bad_value(spec: str, tmp_path: Path) -> None:
    env = dict(os.environ, SENDGUARD_FAILPOINTS=spec, SENDGUARD_DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    result = run_cli(["run", "--once", "--dry-run", str(tmp_path / "out")], env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sendguard: SENDGUARD_FAILPOINTS"), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.db").exists()  # refused before touching the database


def test_cli_exits_2_on_a_bad_seed(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        SENDGUARD_FAILPOINTS="after_claim=crash",
        SENDGUARD_FAILPOINTS_SEED="soon",
        SENDGUARD_DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
    )
    result = run_cli(["status"], env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sendguard: SENDGUARD_FAILPOINTS_SEED must be an integer, not 'soon'"
    ]
