"""`sendguard`: the command-line contract of CLI.md. Exit codes: 0 ok, 1 unexpected, 2 bad input, 3 lock."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sender.config import Settings, load_config, redact_database_url
from sender.errors import LockHeld, UsageError

log = logging.getLogger("sendguard")


def _now() -> datetime:
    return datetime.now(UTC)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _engine(settings: Settings, *, readonly: bool = False):  # -> Engine
    """An engine on a database whose schema matches this code (exit 2 with the fix otherwise)."""
    from sender.db import make_engine
    from sender.migrate import require_current_schema

    engine = make_engine(settings.database_url, readonly=readonly)
    require_current_schema(engine)
    return engine


def _db_now(engine: Any) -> datetime:
    from sender.clock import DatabaseClock

    return DatabaseClock(engine).now()


# --- commands ------------------------------------------------------------------------------------


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from sender.migrate import head_revision, upgrade

    upgrade(settings.database_url)
    print(f"database {redact_database_url(settings.database_url)} is at revision {head_revision()}")
    return 0


def cmd_campaign_create(args: argparse.Namespace, settings: Settings) -> int:
    from sender.campaign_file import load_campaign_file
    from sender.campaigns import create_or_update

    spec = load_campaign_file(args.file)
    engine = _engine(settings)
    action = create_or_update(engine, spec, update_existing=args.update, now=_db_now(engine))
    print(f"campaign {spec.name!r} {action} ({len(spec.variants)} variant(s)); status draft until `campaign start`"
          if action == "created" else f"campaign {spec.name!r} updated")  # fmt: skip
    return 0


def cmd_campaign_list(args: argparse.Namespace, settings: Settings) -> int:
    from sender.campaigns import list_campaigns

    rows = list_campaigns(_engine(settings, readonly=True))
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no campaigns (create one with `sendguard campaign create FILE.toml`)")
    for row in rows:
        line = f"{row['name']:<30} {row['status']:<10} {row['enrolled']:>7} enrolled  variants {','.join(row['variants'])}"  # type: ignore[arg-type]
        if str(row["paused_by"] or "").startswith("breaker:"):
            line += f"  (auto-paused by {row['paused_by']}: {row['pause_reason']})"
        elif row["pause_reason"]:
            line += f"  (paused: {row['pause_reason']})"
        print(line)
    return 0


def _transition(fn_name: str) -> Callable[[argparse.Namespace, Settings], int]:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from sender import campaigns

        engine = _engine(settings)
        fn = getattr(campaigns, fn_name)
        campaign = fn(engine, args.name, actor=args.actor or campaigns.default_actor(), reason=args.reason,
                      now=_db_now(engine))  # fmt: skip
        print(f"campaign {campaign.name!r} is {campaign.status}")
        return 0

    return run


def cmd_leads_import(args: argparse.Namespace, settings: Settings) -> int:
    from sender.enroll import import_leads

    try:
        # "-": stdin, for a file the service user cannot open (README, Operations)
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    engine = _engine(settings)
    result = import_leads(engine, args.campaign, data, source=args.file, now=_db_now(engine))
    if args.json:
        _print_json(result.as_json())
    else:
        print(
            f"enrolled {result.enrolled}, already enrolled {result.already_enrolled}, duplicates in file "
            f"{result.duplicates_in_file}, suppressed {result.suppressed}, rejected {len(result.rejected)}"
        )
        for r in result.rejected:
            print(f"  line {r.line}: {r.reason}")
    return 0


def cmd_leads_list(args: argparse.Namespace, settings: Settings) -> int:
    from models import EnrollmentStatus
    from sender.status import leads_list

    if args.status and args.status not in {s.value for s in EnrollmentStatus}:
        raise UsageError(
            f"unknown status {args.status!r}: one of {', '.join(s.value for s in EnrollmentStatus)}"
        )
    rows = leads_list(_engine(settings, readonly=True), args.campaign, args.status)
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        reason = f" ({row['reason']})" if row["reason"] else ""
        print(
            f"{row['email']:<40} {row['status']:<8}{reason} variant {row['variant']} attempts {row['attempts']}"
        )
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from sender.status import status

    engine = _engine(settings, readonly=True)
    data = status(engine, now=_db_now(engine), lease_seconds=settings.lease_seconds)
    if args.json:
        _print_json(data)
        return 0
    for c in data["campaigns"]:  # type: ignore[attr-defined]
        counts = " ".join(f"{k}={v}" for k, v in c["counts"].items())
        auto = str(c["paused_by"] or "").startswith("breaker:")
        note = f"  (auto-paused by {c['paused_by']}: {c['pause_reason']})" if auto else ""
        print(f"{c['name']:<30} {c['status']:<10} {counts}{note}")
    for s in data["senders"]:  # type: ignore[attr-defined]
        state = "alive" if s["alive"] else ("stopped" if s["stopped_at"] else "stale")
        slot = f"slot {s['slot']}" if s["slot"] is not None else "standby"
        print(
            f"sender {s['instance']} {s['host']} pid {s['pid']} {state} {slot} heartbeat {s['heartbeat_at']}"
        )
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from sender.locks import SenderFileLock
    from sender.service import SenderService
    from sender.transport import make_transport

    if args.once and args.until_idle:
        raise UsageError("--once and --until-idle cannot be combined")
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    transport = make_transport(settings.smtp_url, args.dry_run, timeout=settings.smtp_timeout)
    lock = SenderFileLock(settings.resolved_lock_file())
    lock.acquire()  # LockHeld -> exit 3, before touching the database
    try:
        engine = _engine(settings)
        service = SenderService(settings, engine, transport, batch=args.batch, lock_file=lock.path)
        _serve_metrics(args, settings, service.ident, lock.path)

        def _stop(signum: int, _frame: object) -> None:
            log.info(
                "received %s: finishing the message in flight, then stopping", signal.Signals(signum).name
            )
            service.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        service.run(interval=args.interval, once=args.once, until_idle=args.until_idle)
        t = service.totals
        log.info("stopped: sent=%d failed=%d deferred=%d unknown=%d skipped=%d", t.sent, t.failed, t.deferred,
                 t.unknown, t.skipped)  # fmt: skip
    finally:
        lock.release()
    return 0


def _serve_metrics(args: argparse.Namespace, settings: Settings, ident: Any, lock_file: str) -> None:
    from sender import metrics

    labels = {
        "instance": ident.instance_id,
        "host": ident.host,
        "pid": str(ident.pid),
        "lock_file": lock_file,
    }
    if metrics.serve(args.metrics_port, args.metrics_bind, database_url=settings.database_url, labels=labels):
        metrics.file_lock_held(True)


def cmd_db_backup(args: argparse.Namespace, settings: Settings) -> int:
    from sender.backup import backup

    print(backup(settings.database_url, args.file, force=args.force))
    return 0


def cmd_review_list(args: argparse.Namespace, settings: Settings) -> int:
    from sender.review import list_unknown

    rows = list_unknown(_engine(settings, readonly=True))
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no unknown sends to review")
    for r in rows:
        print(f"{r['id']:>6}  {r['campaign']}  {r['email']}  step {r['step']}  variant {r['variant']}  "
              f"{r['message_id']}  by {r['instance']} ({r['host']} pid {r['pid']}) at {r['transmit_at']}: "
              f"{r['smtp_reply']}")  # fmt: skip
    return 0


def _review(requeue: bool) -> Callable[[argparse.Namespace, Settings], int]:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from sender.campaigns import default_actor
        from sender.review import resolve

        if requeue:
            print(
                "warning: requeueing sends this email again; the recipient may get a second copy",
                file=sys.stderr,
            )
        engine = _engine(settings)
        result = resolve(
            engine, args.id, requeue=requeue, actor=args.actor or default_actor(), now=_db_now(engine)
        )
        print(f"send {result['id']}: {result['resolution']}")
        return 0

    return run


def cmd_sink(args: argparse.Namespace, settings: Settings) -> int:
    from sender.sink import run_sink

    run_sink(args.host, args.port, args.maildir)
    return 0


def cmd_report_duplicates(args: argparse.Namespace, settings: Settings) -> int:
    import reports

    bucket = reports.parse_bucket(args.bucket)  # UsageError (exit 2) before touching the database
    source = reports.Source.imported(args.imported) if args.imported is not None else reports.LIVE
    engine = _engine(settings, readonly=True)
    reports.check_source(engine, source, args.campaign)  # a typo must not read as "no duplicates"
    span = {}
    if args.since or args.until:
        from sender.clock import DatabaseClock

        now = DatabaseClock(engine).now()  # ages count back from the senders' clock
        span = {
            name: reports.parse_time(value, now, f"--{name}")
            for name, value in (("since", args.since), ("until", args.until))
            if value
        }
    summary = reports.duplicate_summary(engine, source, campaign=args.campaign, bucket_seconds=bucket, **span)
    if args.json:
        _print_json(summary)
    else:
        print(reports.render_summary(summary, source=source, campaign=args.campaign, bucket_seconds=bucket))
    return 0


def cmd_sendlog_import(args: argparse.Namespace, settings: Settings) -> int:
    from sender.sendlog_import import import_sendlog

    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    result = import_sendlog(_engine(settings), data, label=args.label, timezone=args.timezone,
                            source=args.file, replace=args.replace)  # fmt: skip
    if args.json:
        _print_json(result)
        return 0
    replaced = f", replacing {result['replaced']} earlier rows" if result["replaced"] else ""
    print(f"imported {result['imported']} rows ({result['sends']} sends) as {result['label']!r}{replaced}, "
          f"rejected {len(result['rejected'])}")  # type: ignore[arg-type]  # fmt: skip
    for r in result["rejected"]:  # type: ignore[attr-defined]
        print(f"  line {r['line']}: {r['reason']}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from sender.demo import seed_demo

    print(seed_demo(settings.database_url, fresh=args.fresh))
    return 0


def cmd_config_show(args: argparse.Namespace, settings: Settings) -> int:
    from sender.config import masked

    loaded = args.loaded_config
    values = masked(settings)  # the only form of the settings this command ever prints
    if args.json:
        _print_json({"config_file": loaded.config_file, "settings": values, "sources": loaded.sources})
        return 0
    print(f"# config file: {loaded.config_file or 'none'}; passwords shown as ***")
    for name, value in values.items():
        if value is None:
            print(f"# {name} is unset  # {loaded.sources[name]}")
        else:
            print(f"{name} = {json.dumps(value)}  # {loaded.sources[name]}")
    return 0


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    from sender.health import check_all, render

    if args.heartbeat_within is not None and args.heartbeat_within <= 0:
        raise UsageError("--heartbeat-within must be positive")
    if args.unknown_older_than < 0:
        raise UsageError("--unknown-older-than must not be negative")
    report = check_all(
        settings,
        heartbeat_within=args.heartbeat_within or settings.lease_seconds,
        unknown_older_than_hours=args.unknown_older_than,
    )
    if args.json:
        _print_json(report.as_json())
    else:
        print(render(report))
    return report.exit_code


def cmd_campaign_ack(args: argparse.Namespace, settings: Settings) -> int:
    from sender.campaigns import default_actor
    from sender.health import acknowledge

    engine = _engine(settings)
    actor = args.actor or default_actor()
    acknowledge(engine, args.name, actor=actor, reason=args.reason, now=_db_now(engine))
    print(f"campaign {args.name!r}: auto-pause acknowledged (still paused; `campaign resume` to send again)")
    return 0


# --- parser --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (CLI.md)
        self.exit(2, f"sendguard: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sendguard", description="Email campaigns that never send a lead the same email twice.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    db = sub.add_parser("db", help="schema").add_subparsers(
        dest="db_command", required=True, parser_class=_Parser
    )
    db.add_parser("upgrade", help="create or migrate the schema (idempotent)").set_defaults(fn=cmd_db_upgrade)
    bk = db.add_parser("backup", help="online copy of a SQLite database (PostgreSQL: use pg_dump)")
    bk.add_argument("file")
    bk.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    bk.set_defaults(fn=cmd_db_backup)

    camp = sub.add_parser("campaign").add_subparsers(
        dest="campaign_command", required=True, parser_class=_Parser
    )
    create = camp.add_parser("create", help="draft campaign from a TOML file")
    create.add_argument("file", help="the campaign TOML file, - for stdin")
    create.add_argument("--update", action="store_true", help="update an existing campaign of that name")
    create.set_defaults(fn=cmd_campaign_create)
    lst = camp.add_parser("list")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(fn=cmd_campaign_list)
    for verb in ("start", "pause", "resume"):
        t = camp.add_parser(verb)
        t.add_argument("name")
        t.add_argument("--reason")
        t.add_argument("--actor", help="who does this (default: cli:USER@HOST)")
        t.set_defaults(fn=_transition(verb))
    ack = camp.add_parser("ack", help="acknowledge an auto-pause (clears the health warning; stays paused)")
    ack.add_argument("name")
    ack.add_argument("--reason")
    ack.add_argument("--actor", help="who does this (default: cli:USER@HOST)")
    ack.set_defaults(fn=cmd_campaign_ack)

    leads = sub.add_parser("leads").add_subparsers(dest="leads_command", required=True, parser_class=_Parser)
    imp = leads.add_parser("import", help="enroll leads from a CSV file")
    imp.add_argument("campaign")
    imp.add_argument("file", help="the leads CSV file, - for stdin")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(fn=cmd_leads_import)
    ll = leads.add_parser("list", help="one row per enrollment")
    ll.add_argument("campaign")
    ll.add_argument("--status")
    ll.add_argument("--json", action="store_true")
    ll.set_defaults(fn=cmd_leads_list)

    run = sub.add_parser("run", help="the sender service")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one tick, then exit")
    mode.add_argument("--until-idle", action="store_true", help="exit 0 once nothing is queued or sending")
    run.add_argument("--interval", type=float, default=5.0, help="seconds between ticks (default 5)")
    run.add_argument("--dry-run", metavar="DIR", help="write one .eml per message to DIR instead of sending")
    run.add_argument("--smtp-url", help="overrides SENDGUARD_SMTP_URL")
    run.add_argument("--max-senders", type=int, help="overrides SENDGUARD_MAX_SENDERS")
    run.add_argument("--lock-file", help="overrides SENDGUARD_LOCK_FILE")
    run.add_argument("--batch", type=int, default=32, help="enrollments claimed per transaction (default 32)")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (0: any free)")
    run.add_argument("--metrics-bind", help="address for --metrics-port (default 127.0.0.1)")
    run.set_defaults(fn=cmd_run)

    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)

    rev = sub.add_parser("review", help="resolve unknown sends").add_subparsers(
        dest="review_command", required=True, parser_class=_Parser
    )
    rl = rev.add_parser("list")
    rl.add_argument("--json", action="store_true")
    rl.set_defaults(fn=cmd_review_list)
    for verb, requeue in (("deliver", False), ("requeue", True)):
        r = rev.add_parser(verb)
        r.add_argument("id", type=int)
        r.add_argument("--actor")
        r.set_defaults(fn=_review(requeue))

    sink = sub.add_parser("sink", help="local capture SMTP server (demo)")
    sink.add_argument("--host", default="127.0.0.1")
    sink.add_argument("--port", type=int, default=2525)
    sink.add_argument("--maildir", default="maildir")
    sink.set_defaults(fn=cmd_sink)

    report = sub.add_parser("report", help="reports").add_subparsers(
        dest="report_command", required=True, parser_class=_Parser
    )
    dup = report.add_parser("duplicates", help="duplicate sends over time, by kind, with their onset")
    dup.add_argument("--campaign", help="one campaign (name; for --imported, the campaign column's value)")
    dup.add_argument("--imported", metavar="LABEL", help="an imported send log instead of the live one")
    dup.add_argument("--bucket", default="10m", help="time bucket: 30s, 10m, 1h, 1d (default 10m)")
    dup.add_argument(
        "--since", help="only sends from this time: ISO-8601 (UTC unless offset) or an age, 24h, 7d"
    )
    dup.add_argument("--until", help="only sends before this time (same forms as --since)")
    dup.add_argument("--json", action="store_true")
    dup.set_defaults(fn=cmd_report_duplicates)

    sendlog = sub.add_parser("sendlog", help="another system's send log").add_subparsers(
        dest="sendlog_command", required=True, parser_class=_Parser
    )
    sl_imp = sendlog.add_parser("import", help="import a SendLog CSV for duplicate analysis")
    sl_imp.add_argument("file")
    sl_imp.add_argument("--label", required=True, help="name of this import (report with --imported LABEL)")
    sl_imp.add_argument("--timezone", default="UTC", help="zone of times written without one (default UTC)")
    sl_imp.add_argument("--replace", action="store_true", help="replace an earlier import of the same label")
    sl_imp.add_argument("--json", action="store_true")
    sl_imp.set_defaults(fn=cmd_sendlog_import)

    demo = sub.add_parser("demo", help="seed a demo database")
    demo.add_argument("--fresh", action="store_true", help="seed even if demo data exists (adds a new set)")
    demo.set_defaults(fn=cmd_demo)
    cfg = sub.add_parser("config", help="configuration").add_subparsers(
        dest="config_command", required=True, parser_class=_Parser
    )
    show = cfg.add_parser("show", help="the effective configuration (passwords masked) and its sources")
    show.add_argument("--json", action="store_true")
    show.set_defaults(fn=cmd_config_show)

    health = sub.add_parser("health", help="for monitoring: exit 0 healthy, 1 degraded, 2 unhealthy")
    health.add_argument("--json", action="store_true")
    beat = "a live sender's heartbeat must be at most this old (default: the lease)"
    health.add_argument("--heartbeat-within", type=float, metavar="SECONDS", help=beat)
    old = "unknown sends waiting longer than this make it degraded (default 24)"
    health.add_argument("--unknown-older-than", type=float, default=24.0, metavar="HOURS", help=old)
    health.set_defaults(fn=cmd_health)
    _add_global_options(p)
    return p


# Accepted before or after the subcommand (`sendguard --config F status` = `sendguard status --config F`).
_GLOBAL_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--config", {"metavar": "FILE", "help": "a sendguard.toml (default: $SENDGUARD_CONFIG; none)"}),
    ("--database-url", {"help": "overrides SENDGUARD_DATABASE_URL"}),
    ("--log-level", {"help": "DEBUG, INFO (default), WARNING, ERROR"}),
    ("--log-format", {"choices": ["text", "json"], "help": "text (default) or json: one object per line"}),
    ("--log-recipients", {"action": "store_true", "help": "log recipients in full (default a***@x.com)"}),
]


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool = True) -> None:
    for flag, kwargs in _GLOBAL_OPTIONS:
        # Only the top level has a default: a subparser's default would overwrite a value given earlier.
        parser.add_argument(flag, default=None if top else argparse.SUPPRESS, **kwargs)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in {id(c): c for c in action.choices.values()}.values():
                _add_global_options(child, top=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _configure(args)
        return int(args.fn(args, settings))
    except UsageError as exc:
        print(f"sendguard: {exc}", file=sys.stderr)
        return 2
    except LockHeld as exc:
        print(f"sendguard: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for operators; the traceback only on request
        if os.environ.get("SENDGUARD_DEBUG"):
            raise
        print(
            f"sendguard: unexpected error: {_safe(exc)} (set SENDGUARD_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


def _configure(args: argparse.Namespace) -> Settings:
    """Settings from flags > environment > config file > defaults; then logging, then failpoints."""
    from sender import failpoints, logs
    from sender.config import secrets_of

    flags = {
        name: getattr(args, name, None)
        for name in ("database_url", "smtp_url", "max_senders", "lock_file", "log_level", "log_format")
    }
    flags["log_recipients"] = True if getattr(args, "log_recipients", None) else None
    loaded = load_config(config_file=getattr(args, "config", None), flags=flags)
    args.loaded_config = loaded  # `config show` reports where each value came from
    settings = loaded.settings
    if loaded.sources["sqlite_synchronous"] == "file":  # db.py reads only the variable when it opens SQLite
        os.environ["SENDGUARD_SQLITE_SYNCHRONOUS"] = settings.sqlite_synchronous
    logs.configure(
        level=settings.log_level,
        fmt=settings.log_format,
        show_recipients=settings.log_recipients,
        secrets=secrets_of(settings),
    )
    failpoints.check()  # a malformed SENDGUARD_FAILPOINTS is bad input, whatever the command
    if failpoints.ENABLED:
        log.warning("failpoints enabled (testing only): %s", failpoints.active())
    return settings


def _safe(exc: BaseException) -> str:
    """Exception text without credentials (SQLAlchemy puts URLs and statements in its messages)."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None)
        text = f"{exc.__class__.__name__}: {orig.__class__.__name__ if orig else ''} {str(orig or '').splitlines()[0:1]}"
    else:
        text = f"{exc.__class__.__name__}: {exc}"
    return text.replace("\n", " ")[:500]


if __name__ == "__main__":
    raise SystemExit(main())
