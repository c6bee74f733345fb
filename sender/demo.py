"""`sendguard demo`: seed a database with a small, internally consistent world to look at.

Campaigns, leads and enrollments go through the product's own code paths (campaign file parser,
`create_or_update`, `import_leads` with a generated CSV, `start`/`pause`), so they are exactly what an
operator would have produced. The history of past sends cannot be produced that way without waiting
three days, so it is simulated with the protocol's own rules (claims in `next_attempt_at, id` order,
one claim per pacing turn, exponential backoff after a deferral, hard bounces suppressed) and written
with Core bulk inserts. Every time is an aware UTC datetime and reserved <= transmit <= finished.

Deterministic: a seeded `random.Random`, so two seeds of an empty database hold the same data (apart
from the moment they were seeded: times are relative to the database clock's "now").
"""

from __future__ import annotations

import csv
import heapq
import io
import random
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update

from models import (
    Campaign,
    CampaignLead,
    EnrollmentStatus,
    Lead,
    SenderInstance,
    SendLog,
    SendStatus,
    Suppression,
)
from sender import campaigns
from sender.campaign_file import parse_campaign
from sender.clock import DatabaseClock
from sender.config import load_settings, redact_database_url
from sender.db import make_engine
from sender.enroll import import_leads
from sender.message import message_id
from sender.migrate import current_revision, head_revision, upgrade
from sender.sendlog_import import import_sendlog
from sender.version import VERSION

SEED = 42
DEMO_CAMPAIGNS = ("welcome-series", "spring-outreach", "q4-newsletter", "draft-ideas")
SENDER_HOSTS = ("mail-1", "mail-1", "mail-2", "mail-2")  # four past sender instances, one after another
OPERATOR = "cli:marta@ops-laptop"

C = Campaign.__table__.c
CL = CampaignLead.__table__.c
L = Lead.__table__.c
SL = SendLog.__table__.c
SU = Suppression.__table__.c

# --- campaign files (parsed by the same code as `sendguard campaign create`) ----------------------

_WELCOME = '''
name = "welcome-series@SUFFIX@"
from = "Example Team <hello@example.com>"
reply_to = "support@example.com"

[[variants]]
letter = "A"
weight = 3
subject = "Welcome to Example, {{ first_name }}"
body = """Hi {{ first_name }},

thanks for signing up for {{ company | default("your team") }}. Reply to this email if anything is unclear.

The Example team"""

[[variants]]
letter = "B"
weight = 1
subject = "{{ first_name }}, your Example account is ready"
body = """Hello {{ first_name }},

your account is ready. Three things to try first: import a list, write a template, press start.

The Example team"""
'''

_SPRING = '''
name = "spring-outreach@SUFFIX@"
from = "Ana Nowak <ana@example.net>"
reply_to = "ana@example.net"
daily_limit = 1000
min_interval_seconds = 30
jitter_seconds = 10
timezone = "Europe/Warsaw"

[[variants]]
letter = "A"
weight = 1
subject = "Quick question, {{ first_name }}"
body = """Hi {{ first_name | default("there") }},

is spring planning at {{ company }} already settled? I have one idea that might save your team a week.

Ana"""

[[variants]]
letter = "B"
weight = 1
subject = "{{ company }} and spring planning"
body = """Hello {{ first_name | default("there") }},

a short note before your spring planning: teams in {{ city | default("your city") }} told us this helped.

Ana"""
'''

_Q4 = '''
name = "q4-newsletter@SUFFIX@"
from = "Example Newsletter <news@example.org>"
unsubscribe = "mailto:unsubscribe@example.org"
min_interval_seconds = 60
jitter_seconds = 15

[[variants]]
letter = "A"
weight = 1
subject = "Q4 at Example: what changed"
body = """Hi {{ first_name | default("there") }},

here is what changed this quarter.

The Example team"""
'''

_DRAFT = '''
name = "draft-ideas@SUFFIX@"
from = "Ana Nowak <ana@example.net>"
timezone = "Europe/Warsaw"
window = { days = ["mon", "tue", "wed", "thu", "fri"], start = "09:00", end = "17:00" }

[[variants]]
letter = "A"
weight = 1
subject = "An idea for {{ company }}"
body = """Hi {{ first_name }}, (draft: not reviewed yet)"""
'''

# --- people ---------------------------------------------------------------------------------------

_FIRST = (
    "Anna", "Piotr", "Katarzyna", "Tomasz", "Magdalena", "Łukasz", "Zofia", "Michał", "Agnieszka",
    "Paweł", "Emma", "Liam", "Olivia", "Noah", "Zoë", "Mateo", "Aisha", "Chen", "Sofía", "Jonas",
)  # fmt: skip
_LAST = (
    "Nowak", "Kowalski", "Wiśniewska", "Wójcik", "Kamińska", "Lewandowski", "Smith", "Johnson",
    "García", "Müller", "O'Brien", "Rossi", "Dubois", "Tanaka", "Jensen",
)  # fmt: skip
_COMPANIES = (
    "Acme Sp. z o.o.", "Globex", "Initech", "Nowak & Syn", "Umbrella Labs", "Hooli", "Stark Industries",
    "Wayne Logistics", "Soylent", "Tyrell Systems", "Żabka Digital",
)  # fmt: skip
_CITIES = ("Warszawa", "Kraków", "Gdańsk", "Wrocław", "Poznań", "Berlin", "London", "Lisboa")
_ASCII = str.maketrans({"ł": "l", "Ł": "L", "'": ""})


def _slug(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name.translate(_ASCII))
    return "".join(ch for ch in decomposed if ch.isascii() and ch.isalnum()).lower()


def _people(
    rng: random.Random, n: int, domains: tuple[str, ...], prefix: str, tag: str
) -> list[dict[str, str]]:
    people = []
    for i in range(n):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        email = f"{_slug(first)}.{_slug(last)}.{prefix}{i + 1}{tag}@{domains[i % len(domains)]}"
        people.append(
            {
                "email": email,
                "first_name": first,
                "last_name": last,
                "company": rng.choice(_COMPANIES),
                "city": rng.choice(_CITIES),
            }
        )
    return people


def _csv(people: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["email", "first_name", "last_name", "company", "city"])
    writer.writeheader()
    writer.writerows(people)
    return out.getvalue().encode("utf-8")


# --- simulated history ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PastSender:
    id: str
    host: str
    pid: int
    started_at: datetime
    stopped_at: datetime
    heartbeat_at: datetime


@dataclass
class Enrollment:
    id: int
    lead_id: int
    email: str
    variant: str
    plan: str = "sent"  # sent | hard_bounce | unknown | suppressed | duplicate | deferred:N | max_attempts
    attempts: int = 0
    deferrals_left: int = 0
    final: dict[str, Any] = field(default_factory=dict)


@dataclass
class History:
    send_rows: list[dict[str, Any]] = field(default_factory=list)
    enrollment_rows: list[dict[str, Any]] = field(default_factory=list)
    suppressions: list[dict[str, Any]] = field(default_factory=list)
    guard_events: list[dict[str, Any]] = field(default_factory=list)
    last_claim: datetime | None = None


def _past_senders(rng: random.Random, start: datetime, end: datetime) -> list[PastSender]:
    """Four sender instances that ran one after another over [start, end], with short restarts."""
    span = (end - start).total_seconds()
    cuts = [0.0, 0.21, 0.47, 0.73, 1.0]
    senders = []
    for i, host in enumerate(SENDER_HOSTS):
        began = start + timedelta(seconds=span * cuts[i] + (rng.uniform(60, 180) if i else 0))
        stopped = start + timedelta(seconds=span * cuts[i + 1])
        senders.append(
            PastSender(
                id=f"{rng.getrandbits(64):016x}",
                host=host,
                pid=rng.randint(1200, 65000),
                started_at=began,
                stopped_at=stopped,
                heartbeat_at=stopped - timedelta(seconds=rng.uniform(2, 95)),
            )
        )
    return senders


def _slots(
    rng: random.Random, senders: list[PastSender], start: datetime, end: datetime, count: int
) -> list[tuple[datetime, PastSender]]:
    """`count` claim moments spread evenly (with jitter) over the time senders ran within [start, end]."""
    margin = timedelta(seconds=20)
    spans = [
        (max(s.started_at + margin, start), min(s.stopped_at - margin, end), s)
        for s in senders
        if min(s.stopped_at - margin, end) > max(s.started_at + margin, start)
    ]
    total = sum((b - a).total_seconds() for a, b, _ in spans)
    gap = total / count
    out: list[tuple[datetime, PastSender]] = []
    for j in range(count):
        pos = (j + 0.5) * gap
        for a, b, s in spans:
            length = (b - a).total_seconds()
            if pos <= length:
                offset = min(max(pos + rng.uniform(-0.2, 0.2) * gap, 0.0), length)
                out.append((a + timedelta(seconds=offset), s))
                break
            pos -= length
    return out


def _simulate(
    rng: random.Random,
    campaign: Campaign,
    enrollments: list[Enrollment],
    slots: list[tuple[datetime, PastSender]],
    retry_base: float,
    max_attempts: int,
) -> History:
    """Replay the claim-and-send protocol over the given claim moments, one claim per moment."""
    h = History()
    due: list[tuple[datetime, int]] = [(slots[0][0], e.id) for e in enrollments]  # all due at the first turn
    heapq.heapify(due)
    by_id = {e.id: e for e in enrollments}
    for at, sender in slots:
        if not due:
            break
        if due[0][0] > at:
            continue  # nothing due at this turn: the sender waits
        _, eid = heapq.heappop(due)
        e = by_id[eid]
        e.attempts += 1
        h.last_claim = at
        token = f"{sender.id}.{rng.getrandbits(48):012x}.{e.id}"
        claimed = {"claim_token": token, "claimed_by": sender.id, "attempts": e.attempts}
        if e.plan == "suppressed":
            e.final = {**claimed, "status": "skipped", "reason": "suppressed", "last_error": None, "at": at}
            continue
        transmit = at + timedelta(seconds=rng.uniform(0.004, 0.04))
        finished = transmit + timedelta(seconds=rng.uniform(0.15, 1.2))
        row = {
            "campaign_id": campaign.id,
            "lead_id": e.lead_id,
            "enrollment_id": e.id,
            "step": 0,
            "variant_letter": e.variant,
            "claim_token": token,
            "attempt": e.attempts,
            "message_id": message_id(campaign.id, e.lead_id, 0, campaign.from_addr),
            "instance_id": sender.id,
            "host": sender.host,
            "pid": sender.pid,
            "created_at": at,
            "transmit_at": transmit,
        }
        if e.deferrals_left > 0:
            e.deferrals_left -= 1
            reply = "451 4.7.1 Greylisted, please try again later"
            row.update(status=SendStatus.DEFERRED.value, smtp_code=451, smtp_reply=reply)
            if e.attempts >= max_attempts:
                e.final = {**claimed, "status": "failed", "reason": "max_attempts", "last_error": reply}
            else:
                backoff = retry_base * 2 ** (e.attempts - 1)
                heapq.heappush(due, (finished + timedelta(seconds=backoff), e.id))
        elif e.plan == "hard_bounce":
            reply = (
                f"550 5.1.1 <{e.email}>: Recipient address rejected: User unknown in virtual mailbox table"
            )
            row.update(status=SendStatus.FAILED.value, smtp_code=550, smtp_reply=reply)
            e.final = {**claimed, "status": "failed", "reason": "hard_bounce", "last_error": reply}
            h.suppressions.append(
                {"email": e.email, "reason": "hard_bounce", "detail": reply, "created_at": finished}
            )
        elif e.plan == "unknown":
            finished = transmit + timedelta(seconds=30)  # the SMTP timeout
            reply = "connection lost after DATA payload: timed out"
            row.update(status=SendStatus.UNKNOWN.value, smtp_code=None, smtp_reply=reply)
            e.final = {
                **claimed,
                "status": "unknown",
                "reason": "ambiguous_smtp_outcome",
                "last_error": reply,
            }
        else:
            reply = f"250 2.0.0 Ok: queued as {rng.getrandbits(40):010X}"
            row.update(status=SendStatus.SENT.value, smtp_code=250, smtp_reply=reply)
            e.final = {**claimed, "status": "sent", "reason": None, "last_error": None}
        row["finished_at"] = finished
        e.final.setdefault("at", finished)
        h.send_rows.append(row)
    if due:
        raise AssertionError(f"demo history: {len(due)} enrollments never got a turn")
    for e in enrollments:
        final = dict(e.final)
        at = final.pop("at")
        h.enrollment_rows.append(
            {
                "b_id": e.id,
                "b_lease": None,
                "b_next": at,
                "b_updated": at,
                **{f"b_{k}": v for k, v in final.items()},
            }
        )
    return h


def _guard_fired(
    rng: random.Random, h: History, e: Enrollment, senders: list[PastSender], campaign: Campaign
) -> None:
    """The one duplicate the guard stopped: a second claim of a lead that already had a live send, from
    another sender instance. The enrollment ends skipped(duplicate_prevented), as sender/sending.py does."""
    sent = next(r for r in h.send_rows if r["enrollment_id"] == e.id and r["status"] == SendStatus.SENT.value)
    other = next(s for s in senders if s.started_at > sent["finished_at"])
    at = other.started_at + timedelta(seconds=rng.uniform(30, 300))
    token = f"{other.id}.{rng.getrandbits(48):012x}.{e.id}"
    row = next(r for r in h.enrollment_rows if r["b_id"] == e.id)
    row.update(
        b_status="skipped", b_reason="duplicate_prevented", b_claim_token=token, b_claimed_by=other.id,
        b_attempts=e.attempts + 1, b_last_error=None, b_next=at, b_updated=at,
    )  # fmt: skip
    h.guard_events.append(
        {
            "campaign_id": campaign.id,
            "kind": "duplicate_prevented",
            "actor": f"sender:{other.id}",
            "reason": f"enrollment {e.id} (step 0) already has a live send",
            "lead_id": e.lead_id,
            "instance_id": other.id,
            "now": at,
        }
    )


_UPDATE_ENROLLMENT = (
    update(CampaignLead.__table__)
    .where(CL.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status", type_=CL.status.type),
        reason=bindparam("b_reason", type_=CL.reason.type),
        attempts=bindparam("b_attempts", type_=CL.attempts.type),
        claim_token=bindparam("b_claim_token", type_=CL.claim_token.type),
        claimed_by=bindparam("b_claimed_by", type_=CL.claimed_by.type),
        lease_expires_at=bindparam("b_lease", type_=CL.lease_expires_at.type),
        next_attempt_at=bindparam("b_next", type_=CL.next_attempt_at.type),
        last_error=bindparam("b_last_error", type_=CL.last_error.type),
        updated_at=bindparam("b_updated", type_=CL.updated_at.type),
    )
)


def _write_history(conn: Connection, h: History, senders: list[PastSender]) -> None:
    if senders:
        conn.execute(
            insert(SenderInstance.__table__),
            [
                {
                    "id": s.id, "host": s.host, "pid": s.pid, "version": VERSION, "started_at": s.started_at,
                    "heartbeat_at": s.heartbeat_at, "stopped_at": s.stopped_at, "slot": None,
                    "lock_file": "/var/lib/sendguard/sender.lock",
                }
                for s in senders
            ],
        )  # fmt: skip
    if h.send_rows:
        conn.execute(insert(SendLog.__table__), h.send_rows)
    if h.enrollment_rows:
        conn.execute(_UPDATE_ENROLLMENT, h.enrollment_rows)
    if h.suppressions:
        conn.execute(insert(Suppression.__table__), h.suppressions)


def _record_guard_events(conn: Connection, h: History) -> None:
    for ev in h.guard_events:
        extra = {k: v for k, v in ev.items() if k not in ("campaign_id", "kind", "actor", "reason", "now")}
        campaigns.record_event(
            conn, ev["campaign_id"], ev["kind"], ev["actor"], ev["reason"], ev["now"], **extra
        )


def _enrollments(conn: Connection, campaign_id: int) -> list[Enrollment]:
    rows = conn.execute(
        select(CL.id, CL.lead_id, L.email, CL.variant_letter)
        .join(Lead.__table__, L.id == CL.lead_id)
        .where(CL.campaign_id == campaign_id)
        .order_by(CL.id)
    ).all()
    return [Enrollment(r[0], r[1], r[2], r[3]) for r in rows]


# --- the seed -------------------------------------------------------------------------------------


def _enroll(engine: Engine, name: str, data: bytes, *, source: str, now: datetime) -> None:
    """`leads import` with a generated CSV; the demo's own rows must all be valid."""
    result = import_leads(engine, name, data, source=source, now=now)
    if result.rejected:
        raise AssertionError(f"demo {source}: rejected rows {result.as_json()['rejected']}")


def _existing(engine: Engine, names: list[str]) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(C.name).where(C.name.in_(names)).order_by(C.name)).scalars())


def _create(engine: Engine, source: str, suffix: str, now: datetime) -> Campaign:
    spec = parse_campaign(source.replace("@SUFFIX@", suffix), "demo campaign")
    campaigns.create_or_update(engine, spec, update_existing=False, now=now)
    with engine.connect() as conn:
        return campaigns.get_campaign(conn, spec.name)


def seed_demo(database_url: str, *, fresh: bool = False) -> str:
    """Seed the demo data; a no-op (saying so) when it is already there, unless `fresh` adds a new set."""
    began = time.monotonic()
    engine = make_engine(database_url)
    try:
        if current_revision(engine) != head_revision():
            upgrade(database_url)
        set_no = 1
        while _existing(engine, [f"{n}{_suffix(set_no)}" for n in DEMO_CAMPAIGNS]):
            if not fresh:
                found = ", ".join(_existing(engine, list(DEMO_CAMPAIGNS)))
                return (
                    f"demo data already present in {redact_database_url(database_url)} ({found}): nothing changed\n"
                    "(`sendguard demo --fresh` adds another set)"
                )
            set_no += 1
        return _seed(engine, database_url, set_no, began)
    finally:
        engine.dispose()


def _suffix(set_no: int) -> str:
    return "" if set_no == 1 else f"-{set_no}"


def _seed(engine: Engine, database_url: str, set_no: int, began: float) -> str:
    rng = random.Random(SEED if set_no == 1 else SEED * 1000 + set_no)
    settings = load_settings()
    suffix, tag = _suffix(set_no), "" if set_no == 1 else f"+set{set_no}"
    now = DatabaseClock(engine).now()

    def ago(**kw: float) -> datetime:
        return now - timedelta(**kw)

    senders = _past_senders(rng, ago(days=3, minutes=10), ago(minutes=25))

    # (b) spring-outreach: three days of history by four past senders, now nearly done.
    spring = _create(engine, _SPRING, suffix, ago(days=3, hours=2))
    spring_people = _people(rng, 2480, ("example.net",), "s", tag)
    _enroll(
        engine, spring.name, _csv(spring_people), source="demo spring-outreach.csv", now=ago(days=3, hours=1)
    )
    with engine.connect() as conn:
        spring_enrolled = _enrollments(conn, spring.id)
    # The guard's firing needs a later sender instance than the one that sent: pick an early lead.
    duplicate = rng.randrange(100, 400)
    picks = [duplicate, *rng.sample([i for i in range(40, len(spring_enrolled) - 40) if i != duplicate], 43)]
    plans = (
        ["duplicate"] + ["hard_bounce"] * 4 + ["unknown"] * 3 + ["suppressed"] * 2 + ["max_attempts"]
        + ["deferred:1"] * 24 + ["deferred:2"] * 6 + ["unsubscribed_later"] * 3
    )  # fmt: skip
    for index, plan in zip(picks, plans, strict=True):
        e = spring_enrolled[index]
        e.plan = plan
        if plan.startswith("deferred:"):
            e.deferrals_left = int(plan.split(":")[1])
        elif plan == "max_attempts":
            e.deferrals_left = settings.max_attempts
    started = ago(days=3)
    extra_turns = sum(e.deferrals_left for e in spring_enrolled) + 30  # retries come after the fresh claims
    slots = _slots(rng, senders, started, ago(minutes=30), len(spring_enrolled) + extra_turns)
    history = _simulate(
        rng, spring, spring_enrolled, slots, settings.retry_base_seconds, settings.max_attempts
    )
    _guard_fired(rng, history, next(e for e in spring_enrolled if e.plan == "duplicate"), senders, spring)
    for e in spring_enrolled:
        if e.plan == "suppressed":  # unsubscribed after the import, before the sender reached them
            history.suppressions.append(
                {"email": e.email, "reason": "unsubscribe", "detail": "reply: please remove me",
                 "created_at": ago(days=3, minutes=30)}
            )  # fmt: skip
        elif e.plan == "unsubscribed_later":  # clicked List-Unsubscribe after the email arrived
            sent_at = next(r["finished_at"] for r in history.send_rows if r["enrollment_id"] == e.id)
            history.suppressions.append(
                {"email": e.email, "reason": "unsubscribe", "detail": "List-Unsubscribe mailto",
                 "created_at": sent_at + timedelta(hours=rng.uniform(1, 20))}
            )  # fmt: skip
    with engine.begin() as conn:
        _write_history(conn, history, senders)
        conn.execute(
            update(Campaign.__table__)
            .where(C.id == spring.id)
            .values(next_send_at=history.last_claim + timedelta(seconds=spring.min_interval_seconds))
        )
    # Started before the history it explains; nothing of it is queued, so no sender picks it up now.
    campaigns.start(engine, spring.name, actor=OPERATOR, reason="spring list approved", now=started)
    with engine.begin() as conn:  # after `started`, so the audit trail's ids follow its times
        _record_guard_events(conn, history)

    # (c) q4-newsletter: 15 sent, then paused for review; the rest of the list imported while paused.
    q4 = _create(engine, _Q4, suffix, ago(days=1, hours=4))
    q4_people = _people(rng, 290, ("example.org",), "q", tag)
    overlap = [dict(p) for p in rng.sample(spring_people, 20)]  # also on the spring list
    _enroll(engine, q4.name, _csv(q4_people[:15]), source="demo q4-first.csv", now=ago(days=1, hours=3))
    with engine.connect() as conn:
        q4_first = _enrollments(conn, q4.id)
    q4_started = ago(days=1, hours=2)
    q4_slots = _slots(rng, senders, q4_started, q4_started + timedelta(minutes=25), len(q4_first))
    q4_history = _simulate(rng, q4, q4_first, q4_slots, settings.retry_base_seconds, settings.max_attempts)
    with engine.begin() as conn:
        _write_history(conn, q4_history, [])
        conn.execute(
            update(Campaign.__table__)
            .where(C.id == q4.id)
            .values(next_send_at=q4_history.last_claim + timedelta(seconds=q4.min_interval_seconds))
        )
    campaigns.start(engine, q4.name, actor=OPERATOR, reason=None, now=q4_started)
    q4_paused = q4_started + timedelta(minutes=27)
    pause_reason = "legal review of the new footer; resume once approved"
    campaigns.pause(engine, q4.name, actor=OPERATOR, reason=pause_reason, now=q4_paused)
    _enroll(
        engine,
        q4.name,
        _csv(q4_people[15:] + overlap),
        source="demo q4-rest.csv",
        now=q4_paused + timedelta(minutes=40),
    )
    late_unsubscribe = q4_people[-1]["email"]  # unsubscribed while the campaign was paused
    with engine.begin() as conn:
        conn.execute(
            insert(Suppression.__table__).values(
                email=late_unsubscribe,
                reason="unsubscribe",
                detail="unsubscribe page",
                created_at=ago(hours=6),
            )
        )

    # (d) draft-ideas: a draft with a few leads and a sending window.
    draft = _create(engine, _DRAFT, suffix, ago(hours=3))
    _enroll(
        engine,
        draft.name,
        _csv(_people(rng, 6, ("example.com",), "d", tag)),
        source="demo draft.csv",
        now=ago(hours=2),
    )

    # (f) the incident of SEED.md, replayed as another system's SendLog export, so the Duplicates
    # page shows a real onset (11:40 yesterday, when a second process started) on first run.
    import_sendlog(
        engine,
        incident_replay_csv(ago(days=1)),
        label=f"incident-replay{suffix}",
        source="demo incident SendLog.csv",
    )

    # (a) welcome-series: started last, so the running demo sender delivers its whole queue.
    welcome = _create(engine, _WELCOME, suffix, ago(minutes=10))
    welcome_people = _people(rng, 200, ("example.com", "example.org"), "w", tag)
    _enroll(engine, welcome.name, _csv(welcome_people), source="demo welcome.csv", now=ago(minutes=5))
    campaigns.start(engine, welcome.name, actor=OPERATOR, reason=None, now=DatabaseClock(engine).now())

    return _summary(engine, database_url, [welcome, spring, q4, draft], len(senders), began)


def incident_replay_csv(day: datetime) -> bytes:
    """SEED.md in a Prisma SendLog export (plus a host column): until 11:40 one process sends 20
    emails to 20 leads; from 11:40 two processes race and 16 leads get two emails each, half of the
    second copies with the other variant (the hole in the original unique key)."""
    start = day.astimezone(UTC).replace(hour=10, minute=0, second=0, microsecond=0)
    rows = ["id,campaignId,leadId,variantLetter,createdAt,host"]

    def add(lead: str, variant: str, at: datetime, host: str) -> None:
        rows.append(f"sl{len(rows):05d},cmp-spring-2024,{lead},{variant},{at:%Y-%m-%d %H:%M:%S.%f},{host}")

    for i in range(20):
        add(f"lead{i:04d}", "AB"[i % 2], start + timedelta(minutes=5 * i, seconds=7), "web-1")
    for i in range(16):
        first = start.replace(minute=40, hour=11) + timedelta(minutes=2 * i, seconds=3)
        variant = "AB"[i % 2]
        second = variant if i < 8 else {"A": "B", "B": "A"}[variant]
        add(f"lead{100 + i:04d}", variant, first, "web-1")
        add(f"lead{100 + i:04d}", second, first + timedelta(seconds=2), "web-2")
    return ("\n".join(rows) + "\n").encode()


def _summary(engine: Engine, database_url: str, seeded: list[Campaign], n_senders: int, began: float) -> str:
    ids = [c.id for c in seeded]
    with engine.connect() as conn:
        counts: dict[int, dict[str, int]] = {i: {} for i in ids}
        for cid, state, n in conn.execute(
            select(CL.campaign_id, CL.status, func.count())
            .where(CL.campaign_id.in_(ids))
            .group_by(CL.campaign_id, CL.status)
        ):
            counts[cid][state] = int(n)
        sends = dict(
            conn.execute(
                select(SL.campaign_id, func.count()).where(SL.campaign_id.in_(ids)).group_by(SL.campaign_id)
            ).all()  # type: ignore[arg-type]
        )
        rows = conn.execute(select(C.id, C.name, C.status, C.pause_reason).where(C.id.in_(ids))).all()
        suppressed = dict(conn.execute(select(SU.reason, func.count()).group_by(SU.reason)).all())  # type: ignore[arg-type]
    by_id = {r[0]: r for r in rows}
    lines = [
        f"demo data seeded into {redact_database_url(database_url)} in {time.monotonic() - began:.1f} s:"
    ]
    for c in seeded:
        _, name, status, pause_reason = by_id[c.id]
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts[c.id].items(), key=lambda kv: -kv[1]))
        line = f"  {name:<22} {status:<7} {sum(counts[c.id].values()):>5} enrolled ({states})"
        if sends.get(c.id):
            line += f"; {sends[c.id]} send_log rows"
        if pause_reason:
            line += f"; paused: {pause_reason}"
        lines.append(line)
    lines.append(
        f"  history: {n_senders} past sender instances over 3 days; 1 duplicate_prevented guard firing; "
        f"suppression list: {', '.join(f'{n} {r}' for r, n in sorted(suppressed.items()))}"
    )
    welcome = seeded[0]
    queued = counts[welcome.id].get(EnrollmentStatus.QUEUED.value, 0)
    lines.append(f"  {welcome.name} has {queued} queued: `sendguard run` delivers them")
    return "\n".join(lines)
