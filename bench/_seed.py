"""Seed a migrated sendguard database with a realistic send history, fast (used by bench/reports.py).

    python bench/_seed.py --url URL [--rows 1000000] [--seed 1]

prints one JSON line: seconds, rows/s and the row count of each table. The database must be migrated
(`sender.migrate.upgrade`) and empty. Run it in its own process (bench/reports.py does) so that the
generator's memory never counts in the peak RSS of the process that times the reports.

What it writes, for --rows N (N = 1,000,000):
- 50 campaigns (2 or 3 variants each; most active, some completed or paused), 200 sender_instance rows
  (two senders at a time, restarted every few hours, plus a hot-reloaded twin during a two-hour
  incident), 0.3 N leads, campaign_lead rows for up to 4 steps per (campaign, lead), queued ones for
  the steps not sent yet;
- exactly N send_log rows over ~4 weeks ending now, ids in time order: mostly sent, some failed,
  deferred (then retried), unknown, and a couple in flight (reserved/transmitting);
- the duplicates that a live log can hold (its partial unique index forbids two live rows per
  campaign+lead+step): address duplicates (lead records whose emails normalize the same), cross-campaign
  overlap, and `duplicate_prevented` campaign_event rows during the incident;
- imported_send_log: label `legacy-export` with N/10 rows of an older system (Prisma-like ids, emails,
  two hosts racing after an onset: exact and cross-variant duplicates, a few address and cross-campaign
  ones) and label `seed-incident` (the 52-row SEED.md replay), stored as the import stores them
  (sender/sendlog_import.py: normalized emails, derive_columns).

Loading: PostgreSQL uses COPY (psycopg `cursor.copy`), then VACUUM ANALYZE (what autovacuum does to a
table that grew over weeks); SQLite uses executemany in large transactions on one raw connection with
`PRAGMA synchronous = OFF` (that connection only), then a WAL checkpoint. Timestamps are written exactly
as SQLAlchemy writes them (checked against a row inserted through SQLAlchemy Core).
"""

from __future__ import annotations

import argparse
import itertools
import json
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from models import Campaign, SenderInstance, Variant  # noqa: E402
from sender.db import make_engine  # noqa: E402
from sender.leads_csv import normalize_email  # noqa: E402
from sender.sendlog_import import derive_columns  # noqa: E402

N_CAMPAIGNS = 50
N_STEPS = 4
SLOTS = 2  # senders running at any time
PER_SLOT = 99  # restarts over the whole range, per slot (2 x 99 + 2 twins = 200 instances)
BATCH = 50_000
# imported_send_log's columns computed at import (sender/sendlog_import.py: derive_columns), in this order
DERIVED_COLUMNS = ("address", "is_send", "key_repeats", "address_shared", "address_multi_campaign")
DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000

SEND_LOG_COLUMNS = (
    "id", "campaign_id", "lead_id", "enrollment_id", "step", "variant_letter", "status", "claim_token",
    "attempt", "message_id", "instance_id", "host", "pid", "created_at", "transmit_at", "finished_at",
    "smtp_code", "smtp_reply",
)  # fmt: skip
CAMPAIGN_LEAD_COLUMNS = (
    "id", "campaign_id", "lead_id", "step", "variant_letter", "status", "reason", "attempts", "claim_token",
    "claimed_by", "lease_expires_at", "next_attempt_at", "last_error", "created_at", "updated_at",
)  # fmt: skip
LEAD_COLUMNS = ("id", "email", "first_name", "last_name", "fields", "created_at")
EVENT_COLUMNS = ("id", "campaign_id", "kind", "actor", "reason", "lead_id", "instance_id", "created_at")
IMPORTED_COLUMNS = (
    "id", "label", "campaign", "lead", "email", "variant", "step", "status", "sent_at", "host", "pid", "instance",
    *DERIVED_COLUMNS,
)  # fmt: skip

# send_log status codes in the generator
SENT, FAILED, UNKNOWN, DEFERRED, RESERVED, TRANSMITTING = range(6)
STATUS_NAMES = np.array(["sent", "failed", "unknown", "deferred", "reserved", "transmitting"])
SMTP = {
    SENT: (250, "250 2.0.0 Ok: queued as {q}"),
    FAILED: (550, "550 5.1.1 <{e}>: Recipient address rejected: User unknown"),
    DEFERRED: (451, "451 4.7.1 Greylisted, please try again later"),
    UNKNOWN: (None, "timeout after DATA (connection lost before the reply)"),
    RESERVED: (None, None),
    TRANSMITTING: (None, None),
}

FIRST = ("ann", "bob", "cy", "dana", "eli", "fay", "gus", "hana", "ivo", "jo", "kim", "lea", "max", "nia")
LAST = ("smith", "jones", "garcia", "muller", "rossi", "dubois", "silva", "kowalski", "novak", "berg")
DOMAINS = ("example.com", "example.org", "mail.example.net", "corp.example", "shop.example.io")


# --- timestamps, exactly as SQLAlchemy stores them ----------------------------------------------


def ts_strings(us: np.ndarray, backend: str) -> list[str]:
    """Epoch microseconds -> SQLite 'YYYY-MM-DD HH:MM:SS.ffffff' (SQLAlchemy's storage format, UTC) or
    PostgreSQL timestamptz text with an explicit +00 offset, vectorized."""
    iso = np.datetime_as_string(us.astype("datetime64[us]"), unit="us")
    out = np.char.replace(iso, "T", " ")
    if backend == "postgresql":
        out = np.char.add(out, "+00")
    return out.tolist()


def ts_string(us: int, backend: str) -> str:
    return ts_strings(np.array([us], dtype="int64"), backend)[0]


def to_datetime(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))


def now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


# --- the plan: every row as numpy arrays, sorted and trimmed to exactly N sends ------------------


class Plan:
    def __init__(self, rows: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.rows = rows
        n_leads = max(2_000, int(rows * 0.3))
        n_addr = max(10, rows // 6_600)  # ~150 extra lead records sharing an address at 1M
        n_overlap = max(10, rows // 3_300)  # ~300 leads enrolled by a second campaign at 1M
        self.n_base_leads = n_leads

        # Campaigns: start day in [0, 26), 2 or 3 variants.
        self.c_start_us = (rng.uniform(0, 26, N_CAMPAIGNS) * DAY_US).astype("int64")
        self.c_variants = np.where(np.arange(N_CAMPAIGNS) % 5 == 4, 3, 2)

        # Leads: base leads split into one segment per campaign, then address-duplicate records.
        base_campaign = np.arange(n_leads) % N_CAMPAIGNS
        addr_of = rng.choice(n_leads, n_addr, replace=False)  # the original lead (0-based index)
        self.lead_alias_of = addr_of  # extra lead record i -> base lead index it duplicates
        self.n_leads = n_leads + n_addr

        # (campaign, lead) pairs: the segments, the address duplicates (same campaign as the original),
        # and the overlap (a lead enrolled by another campaign as well).
        over = rng.choice(n_leads, n_overlap, replace=False)
        over_campaign = (base_campaign[over] + rng.integers(1, N_CAMPAIGNS, n_overlap)) % N_CAMPAIGNS
        p_campaign = np.concatenate([base_campaign, base_campaign[addr_of], over_campaign])
        p_lead = np.concatenate([np.arange(n_leads), n_leads + np.arange(n_addr), over])
        n_pairs = len(p_campaign)
        p_variant = rng.integers(0, 3, n_pairs) % self.c_variants[p_campaign]

        # Enrollments: up to N_STEPS steps per pair, four days apart; a hard bounce ends the sequence.
        e_pair, e_step, e_time, e_final, e_ndef = [], [], [], [], []
        alive = np.ones(n_pairs, dtype=bool)
        for step in range(N_STEPS):
            idx = np.nonzero(alive)[0]
            t = self.c_start_us[p_campaign[idx]] + step * 4 * DAY_US + (rng.uniform(0, 3, len(idx)) * DAY_US)
            final = rng.choice([SENT, FAILED, UNKNOWN], len(idx), p=[0.962, 0.03, 0.008])
            ndef = rng.choice([0, 1, 2], len(idx), p=[0.94, 0.05, 0.01])
            e_pair.append(idx)
            e_step.append(np.full(len(idx), step))
            e_time.append(t.astype("int64"))
            e_final.append(final)
            e_ndef.append(ndef)
            alive[idx[final == FAILED]] = False
        # Enrollment ids follow the order of enrollment: by campaign, then lead, then step.
        e_pair_a, e_step_a = np.concatenate(e_pair), np.concatenate(e_step)
        order = np.lexsort((e_step_a, p_lead[e_pair_a], p_campaign[e_pair_a]))
        self.e_pair = e_pair_a[order]
        self.e_step = e_step_a[order]
        self.e_time = np.concatenate(e_time)[order]
        self.e_final = np.concatenate(e_final)[order]
        self.e_ndef = np.concatenate(e_ndef)[order]
        self.e_campaign = p_campaign[self.e_pair]
        self.e_lead = p_lead[self.e_pair]
        self.e_variant = p_variant[self.e_pair]
        n_enr = len(self.e_pair)

        # Attempts: ndef deferred ones, then the final one, 15 min to 2 h apart.
        n_att = 1 + self.e_ndef
        a_enr = np.repeat(np.arange(n_enr), n_att)
        first_of = np.cumsum(n_att) - n_att
        a_no = np.arange(len(a_enr)) - first_of[a_enr] + 1  # 1-based attempt number
        gaps = (rng.uniform(0.25, 2.0, len(a_enr)) * HOUR_US).astype("int64")
        gaps[a_no == 1] = 0
        # cumulative gap within each enrollment
        cum = np.cumsum(gaps)
        a_time = self.e_time[a_enr] + (cum - cum[first_of[a_enr]])
        a_status = np.where(a_no <= self.e_ndef[a_enr], DEFERRED, self.e_final[a_enr])
        if len(a_enr) < rows:
            raise SystemExit(f"seed plan has only {len(a_enr)} candidate attempts for {rows} rows")

        # Keep the first N attempts in time: the campaigns are still running at the cut ("now").
        order = np.argsort(a_time, kind="stable")[:rows]
        self.a_enr, self.a_no = a_enr[order], a_no[order]
        self.a_status = a_status[order].copy()
        end = now_us() - 30 * 1_000_000
        shift = end - int(a_time[order[-1]])
        self.shift = shift
        self.a_time = a_time[order] + shift
        self.e_time_shifted = self.e_time + shift
        self.start_us = int(self.a_time[0])
        self.end_us = int(self.a_time[-1])
        # The two newest attempts are still in flight.
        if rows >= 4:
            self.a_status[-1], self.a_status[-2] = RESERVED, TRANSMITTING

        # Enrollment state from its kept attempts.
        kept = np.bincount(self.a_enr, minlength=n_enr)
        self.e_attempts = kept
        last_status = np.full(n_enr, -1)
        last_status[self.a_enr] = self.a_status  # attempts are in time order: the last write wins
        self.e_last_attempt_row = np.full(n_enr, -1)
        self.e_last_attempt_row[self.a_enr] = np.arange(rows)
        status = np.full(n_enr, "queued", dtype=object)
        status[last_status == SENT] = "sent"
        status[last_status == FAILED] = "failed"
        status[last_status == UNKNOWN] = "unknown"
        status[(last_status == RESERVED) | (last_status == TRANSMITTING)] = "sending"
        self.e_status = status
        # next attempt of a queued enrollment: its first attempt, or the retry after its last deferral
        nxt = self.e_time_shifted.copy()
        deferred = last_status == DEFERRED
        nxt[deferred] = self.a_time[self.e_last_attempt_row[deferred]] + HOUR_US
        self.e_next = nxt

        # Instances: 2 slots, each restarted PER_SLOT times over the range; two twins (same hosts,
        # other pids) during a two-hour incident at 45% of the range.
        span = max(1, self.end_us - self.start_us)
        life = span / PER_SLOT
        slot = rng.integers(0, SLOTS, rows)
        gen = np.minimum(PER_SLOT - 1, ((self.a_time - self.start_us) / life).astype("int64"))
        inst = slot * PER_SLOT + gen
        self.incident = (self.start_us + int(span * 0.45), self.start_us + int(span * 0.45) + 2 * HOUR_US)
        in_incident = (self.a_time >= self.incident[0]) & (self.a_time < self.incident[1])
        twin = rng.integers(0, 2, rows).astype(bool) & in_incident
        inst[twin] = SLOTS * PER_SLOT + slot[twin]
        self.a_inst = inst
        n_inst = SLOTS * PER_SLOT + SLOTS
        self.i_slot = np.concatenate([np.repeat(np.arange(SLOTS), PER_SLOT), np.arange(SLOTS)])
        self.i_pid = rng.integers(1_000, 60_000, n_inst)
        gens = np.concatenate([np.tile(np.arange(PER_SLOT), SLOTS), np.full(SLOTS, -1)])
        self.i_start = np.where(gens >= 0, self.start_us + (gens * life).astype("int64"), self.incident[0])
        self.i_end = np.where(
            gens >= 0, self.start_us + ((gens + 1) * life).astype("int64"), self.incident[1]
        )
        self.i_current = gens == PER_SLOT - 1
        self.i_ids = [
            f"mail-{s + 1}-{pid}-{rng.integers(0, 2**32):08x}"
            for s, pid in zip(self.i_slot.tolist(), self.i_pid.tolist(), strict=True)
        ]

        # Guard firings during the incident: a twin (or its sibling) tried a lead just sent.
        sent_in_incident = np.nonzero(in_incident & (self.a_status == SENT))[0]
        n_prevented = min(len(sent_in_incident), max(10, rows // 3_300))
        self.prevented_rows = np.sort(rng.choice(sent_in_incident, n_prevented, replace=False))

    # --- rows ------------------------------------------------------------------------------------

    def lead_email(self, i: int) -> str:
        return f"{FIRST[i % 14]}.{LAST[(i // 14) % 10]}{i}@{DOMAINS[i % 5]}"

    def leads(self, backend: str) -> Iterator[tuple]:
        created = ts_string(self.start_us - 40 * DAY_US, backend)
        for i in range(self.n_leads):
            if i < self.n_base_leads:
                email = self.lead_email(i)
            else:  # written raw by another tool: same address, other case and padding
                email = f" {self.lead_email(int(self.lead_alias_of[i - self.n_base_leads])).title()} "
            base = i if i < self.n_base_leads else int(self.lead_alias_of[i - self.n_base_leads])
            fields = f'{{"company": "Company {base % 9973}", "title": "Buyer"}}'
            yield (i + 1, email, FIRST[base % 14].title(), LAST[(base // 14) % 10].title(), fields, created)

    def campaign_leads(self, backend: str) -> Iterator[tuple]:
        n = len(self.e_pair)
        for lo in range(0, n, BATCH):
            hi = min(n, lo + BATCH)
            sl = slice(lo, hi)
            created = ts_strings(self.c_start_us[self.e_campaign[sl]] + self.shift - DAY_US, backend)
            nxt = ts_strings(self.e_next[sl], backend)
            last_row = self.e_last_attempt_row[sl]
            upd_us = np.where(last_row >= 0, self.a_time[np.maximum(last_row, 0)] + 2_000_000, 0)
            upd_us = np.where(
                last_row >= 0, upd_us, self.c_start_us[self.e_campaign[sl]] + self.shift - DAY_US
            )
            updated = ts_strings(upd_us, backend)
            lease = ts_strings(upd_us + 300_000_000, backend)
            cols = zip(
                range(lo + 1, hi + 1),
                (self.e_campaign[sl] + 1).tolist(),
                (self.e_lead[sl] + 1).tolist(),
                self.e_step[sl].tolist(),
                self.e_variant[sl].tolist(),
                self.e_status[sl].tolist(),
                self.e_attempts[sl].tolist(),
                last_row.tolist(),
                created,
                nxt,
                updated,
                lease,
                strict=True,
            )
            for eid, cid, lid, step, var, status, attempts, row, cr, nx, up, le in cols:
                inst = self.i_ids[int(self.a_inst[row])] if row >= 0 else None
                token = f"{row + 1:032x}" if row >= 0 else None
                yield (
                    eid, cid, lid, step, "ABC"[var], status, None, attempts,
                    token if status == "sending" else None, inst if status == "sending" else None,
                    le if status == "sending" else None, nx,
                    SMTP[FAILED][1].format(e="lead") if status == "failed" else None,
                    cr, up,
                )  # fmt: skip

    def send_logs(self, backend: str) -> Iterator[tuple]:
        for lo in range(0, self.rows, BATCH):
            hi = min(self.rows, lo + BATCH)
            sl = slice(lo, hi)
            enr = self.a_enr[sl]
            t = self.a_time[sl]
            created = ts_strings(t, backend)
            transmit = ts_strings(t + 40_000, backend)
            finished = ts_strings(t + 350_000, backend)
            cols = zip(
                range(lo + 1, hi + 1),
                (self.e_campaign[enr] + 1).tolist(),
                (self.e_lead[enr] + 1).tolist(),
                (enr + 1).tolist(),
                self.e_step[enr].tolist(),
                self.e_variant[enr].tolist(),
                self.a_status[sl].tolist(),
                self.a_no[sl].tolist(),
                self.a_inst[sl].tolist(),
                created,
                transmit,
                finished,
                strict=True,
            )
            for row_id, cid, lid, eid, step, var, st, att, inst, cr, tr, fi in cols:
                code, reply = SMTP[st]
                host = "mail-" + str(int(self.i_slot[inst]) + 1)
                yield (
                    row_id, cid, lid, eid, step, "ABC"[var], STATUS_NAMES[st], f"{row_id:032x}", att,
                    f"<sg.{cid}.{lid}.{step}.{att}@mail-{int(self.i_slot[inst]) + 1}.example.com>",
                    self.i_ids[inst], host, int(self.i_pid[inst]), cr,
                    None if st in (DEFERRED, RESERVED) else tr,
                    None if st in (RESERVED, TRANSMITTING) else fi,
                    code, reply.format(q=f"{row_id:X}", e=f"lead{lid}") if reply else None,
                )  # fmt: skip

    def events(self, backend: str) -> list[tuple]:
        rng = self.rng
        out: list[tuple[int, str, str, str | None, int | None, str | None, int]] = []
        for c in range(N_CAMPAIGNS):
            out.append(
                (c + 1, "started", "ops@example.com", None, None, None, int(self.c_start_us[c] + self.shift))
            )
        for c in range(0, N_CAMPAIGNS, 7):  # auto-pauses (bounce rate) and manual resumes
            at = int(self.c_start_us[c] + self.shift + DAY_US)
            if at < self.end_us:
                out.append(
                    (c + 1, "auto_paused", "sendguard", "bounce rate above 5%", None, self.i_ids[0], at)
                )
                out.append((c + 1, "resumed", "ops@example.com", "list cleaned", None, None, at + HOUR_US))
        for row in self.prevented_rows.tolist():
            enr = int(self.a_enr[row])
            other = int(self.a_inst[row])
            twin = (
                SLOTS * PER_SLOT + int(self.i_slot[other])
                if other < SLOTS * PER_SLOT
                else int(other - SLOTS * PER_SLOT)
            )
            at = int(self.a_time[row]) + int(rng.integers(50_000, 2_000_000))
            out.append((
                int(self.e_campaign[enr]) + 1, "duplicate_prevented", self.i_ids[twin],
                "unique violation on uq_send_log_live (campaign, lead, step)",
                int(self.e_lead[enr]) + 1, self.i_ids[twin], at,
            ))  # fmt: skip
        for c in (3, 17, 31):  # paused by an operator
            out.append(
                (
                    c + 1,
                    "paused",
                    "ops@example.com",
                    "complaint from a recipient",
                    None,
                    None,
                    self.end_us - DAY_US,
                )
            )
        unknown = np.nonzero(self.e_status == "unknown")[0][:40]
        for i, enr in enumerate(unknown.tolist()):
            kind = "delivered" if i % 2 else "requeued"
            at = int(self.a_time[self.e_last_attempt_row[enr]]) + HOUR_US
            out.append(
                (
                    int(self.e_campaign[enr]) + 1,
                    kind,
                    "ops@example.com",
                    "checked the SMTP logs",
                    int(self.e_lead[enr]) + 1,
                    None,
                    min(at, self.end_us),
                )
            )
        out.sort(key=lambda r: r[-1])
        stamps = ts_strings(np.array([r[-1] for r in out], dtype="int64"), backend)
        return [(i + 1, *r[:-1], s) for i, (r, s) in enumerate(zip(out, stamps, strict=True))]

    def imported(self, backend: str) -> Iterator[tuple]:
        """`legacy-export`: N/10 rows of an older system; `seed-incident`: SEED.md's 52 sends. Stored as
        `sendguard sendlog import` stores them: emails normalized, statuses lower-case or NULL, and the
        derived columns filled by the import's own derive_columns over each whole label."""
        out = list(self._imported_raw(backend))
        names = ("label", "campaign", "lead", "email", "step", "status")
        rows: list[dict[str, object]] = [
            {**dict(zip(names, r[1:5] + (r[6], r[7]), strict=True)), "email": _normalized(r[4])} for r in out
        ]
        derive_columns(rows)
        for r, d in zip(out, rows, strict=True):
            yield (*r[:4], d["email"], *r[5:], *(d[c] for c in DERIVED_COLUMNS))

    def _imported_raw(self, backend: str) -> Iterator[tuple]:
        rng = np.random.default_rng(7)
        m = max(1_000, self.rows // 10)
        n_camp = 8
        n_exact, n_cross, n_third = max(10, m // 660), max(10, m // 660), max(2, m // 5_000)
        n_addr, n_over = max(5, m // 1_000), max(5, m // 1_000)
        n_base = m - n_exact - n_cross - n_third - n_addr - n_over
        end = self.start_us - 5 * DAY_US
        start = end - 20 * DAY_US
        onset = start + int(0.6 * (end - start))
        t = np.sort(rng.integers(start, end, n_base))
        camp = rng.integers(0, n_camp, n_base)
        var = rng.integers(0, 2, n_base)
        status = rng.choice(["", "sent", "delivered", "failed"], n_base, p=[0.70, 0.25, 0.02, 0.03])
        rows: list[tuple] = []

        def lead_id(i: int) -> str:
            return f"cl{i:08x}{(i * 2654435761) % 2**32:08x}lead"

        def add(
            i: int, c: int, v: int, at: int, st: str, host: str, pid: int, email_case: bool = False
        ) -> None:
            email = f"user{i}@legacy.example"
            rows.append((
                f"clt5k2x9c0000cmpgn{c:07d}", lead_id(i), email.upper() if email_case else email, "AB"[v], 0,
                st or None, at, host, pid,
            ))  # fmt: skip

        for i in range(n_base):
            racing = t[i] >= onset and i % 2 == 0
            add(i, int(camp[i]), int(var[i]), int(t[i]), str(status[i]), "web-2" if racing else "web-1",
                4343 if racing else 4242)  # fmt: skip
        after = np.nonzero((t >= onset) & (status != "failed"))[0]
        picks = rng.choice(after, n_exact + n_cross + n_third + n_addr + n_over, replace=False)
        k = 0
        for kind, count in (("exact", n_exact), ("cross", n_cross), ("third", n_third)):
            for _ in range(count):
                i = int(picks[k])
                k += 1
                v = int(var[i]) if kind != "cross" else 1 - int(var[i])
                add(i, int(camp[i]), v, int(t[i]) + int(rng.integers(500_000, 4_000_000)), "", "web-2", 4343)
                if kind == "third":
                    add(i, int(camp[i]), v, int(t[i]) + 9_000_000, "", "web-1", 4242)
        for _ in range(n_addr):  # another lead record, same address (other case), same campaign
            i = int(picks[k])
            k += 1
            rows.append((
                f"clt5k2x9c0000cmpgn{int(camp[i]):07d}", lead_id(m + i), f"USER{i}@LEGACY.EXAMPLE ",
                "AB"[int(var[i])], 0, None, int(t[i]) + 3_000_000, "web-2", 4343,
            ))  # fmt: skip
        for _ in range(n_over):  # the same lead sent by another campaign
            i = int(picks[k])
            k += 1
            add(i, (int(camp[i]) + 1) % n_camp, int(var[i]), int(t[i]) + DAY_US // 2, "", "web-1", 4242)
        rows.sort(key=lambda r: r[6])
        stamps = ts_strings(np.array([r[6] for r in rows], dtype="int64"), backend)
        n = 0
        for r, s in zip(rows, stamps, strict=True):
            n += 1
            yield (n, "legacy-export", r[0], r[1], r[2], r[3], r[4], r[5], s, r[7], r[8], None)
        # SEED.md: 20 sends to 20 leads before 11:40, then 16 leads sent twice (half with the other variant)
        t0 = int(datetime(2024, 3, 12, 10, tzinfo=UTC).timestamp() * 1_000_000)
        seed_rows = []
        for i in range(20):
            seed_rows.append((f"cllead{i:04d}", "AB"[i % 2], t0 + (5 * i * 60 + 7) * 1_000_000))
        for i in range(16):
            first = t0 + ((100 + 2 * i) * 60 + 3) * 1_000_000
            v = "AB"[i % 2]
            seed_rows.append((f"cllead{100 + i:04d}", v, first))
            seed_rows.append((f"cllead{100 + i:04d}", v if i < 8 else "BA"[i % 2], first + 2_250_000))
        stamps = ts_strings(np.array([r[2] for r in seed_rows], dtype="int64"), backend)
        for (lead, v, _), s in zip(seed_rows, stamps, strict=True):
            n += 1
            yield (
                n,
                "seed-incident",
                "clt5k2x9c0000cmpgn0000001",
                lead,
                None,
                v,
                0,
                None,
                s,
                None,
                None,
                None,
            )


def _normalized(email: object) -> str | None:
    return None if email is None else normalize_email(str(email))


# --- loading -------------------------------------------------------------------------------------


def _batches(rows: Iterable[tuple], size: int = BATCH) -> Iterator[list[tuple]]:
    """Batches of rows, built by a producer thread one batch ahead of the consumer: SQLite and libpq
    release the GIL while they write, so generating the next batch overlaps the load of this one."""
    out: queue.Queue[list[tuple] | BaseException | None] = queue.Queue(maxsize=2)

    def produce() -> None:
        try:
            it = iter(rows)
            while batch := list(itertools.islice(it, size)):
                out.put(batch)
            out.put(None)
        except BaseException as exc:  # re-raised in the consumer
            out.put(exc)

    threading.Thread(target=produce, daemon=True).start()
    while (item := out.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


class SqliteLoader:
    backend = "sqlite"

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA synchronous = OFF")  # this connection only: bulk load
        self.conn.execute("PRAGMA cache_size = -262144")  # 256 MB page cache for the index builds

    def drop_indexes(self, table: str) -> list[str]:
        """Drop the table's secondary indexes (not the ones backing UNIQUE constraints) and return their
        exact DDL: building an index once after the load is several times faster than growing it."""
        rows = self.conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (table,),
        ).fetchall()
        for name, _ in rows:
            self.conn.execute(f'DROP INDEX "{name}"')
        return [ddl for _, ddl in rows]

    def create_indexes(self, ddls: list[str]) -> None:
        for ddl in ddls:
            self.conn.execute(ddl)

    def load(self, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> int:
        marks = ", ".join("?" * len(columns))
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 (constants)
        n = 0
        for batch in _batches(rows, 100_000):
            self.conn.execute("BEGIN")
            self.conn.executemany(sql, batch)
            self.conn.execute("COMMIT")
            n += len(batch)
        return n

    def finish(self) -> None:
        self.conn.execute("ANALYZE imported_send_log")  # as `sendguard sendlog import` does after a load
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()


class PostgresLoader:
    backend = "postgresql"

    def __init__(self, conninfo: str) -> None:
        import psycopg

        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.conn.execute("SET synchronous_commit = off")  # this session only: bulk load
        self.conn.execute("SET maintenance_work_mem = '256MB'")
        try:  # skip the per-row foreign-key triggers during the load (needs a superuser)
            self.conn.execute("SET session_replication_role = replica")
            self.fk_checks = "skipped during load (session_replication_role = replica)"
        except psycopg.Error:
            self.fk_checks = "checked per row"

    def drop_indexes(self, table: str) -> list[str]:
        """Drop the table's secondary indexes that back no constraint; return their exact DDL."""
        rows = self.conn.execute(
            """SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
               FROM pg_index AS i
               WHERE i.indrelid = %s::regclass AND NOT i.indisprimary
                 AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conindid = i.indexrelid)""",
            (table,),
        ).fetchall()
        for name, _ in rows:
            self.conn.execute(f"DROP INDEX {name}")
        return [ddl for _, ddl in rows]

    def create_indexes(self, ddls: list[str]) -> None:
        for ddl in ddls:
            self.conn.execute(ddl)

    def load(self, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> int:
        n = 0
        with self.conn.transaction(), self.conn.cursor() as cur:
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for batch in _batches(rows):
                    for r in batch:
                        copy.write_row(r)
                    n += len(batch)
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}")  # noqa: S608
        return n

    def finish(self) -> None:
        if "skipped" in self.fk_checks:
            self.conn.execute("SET session_replication_role = DEFAULT")
        self.conn.execute("VACUUM ANALYZE")  # what autovacuum does to tables that grew over weeks
        self.conn.close()


def _check_timestamps(loader: SqliteLoader | PostgresLoader, plan: Plan) -> str:
    """The first campaign went in through SQLAlchemy Core: its stored created_at must read back exactly
    as this seeder writes timestamps."""
    us = int(plan.c_start_us[0] + plan.shift)
    if loader.backend == "sqlite":
        raw = loader.conn.execute("SELECT created_at FROM campaign WHERE id = 1").fetchone()[0]
        mine = ts_string(us, "sqlite")
    else:
        raw = loader.conn.execute("SELECT created_at = %s::timestamptz FROM campaign WHERE id = 1", (ts_string(us, "postgresql"),)).fetchone()[0]  # fmt: skip
        mine = True
    if raw != mine:
        raise SystemExit(f"timestamp format mismatch: SQLAlchemy stored {raw!r}, the seeder writes {mine!r}")
    return str(raw)


def seed(url: str, rows: int, seed_value: int = 1) -> dict[str, Any]:
    t_start = time.perf_counter()
    plan = Plan(rows, seed_value)
    t_plan = time.perf_counter() - t_start
    backend = "sqlite" if make_url(url).get_backend_name() == "sqlite" else "postgresql"

    # Small tables through SQLAlchemy Core, exactly as the application writes them.
    engine = make_engine(url)
    statuses = ["active"] * N_CAMPAIGNS
    for c in (3, 17, 31):
        statuses[c] = "paused"
    with engine.begin() as conn:
        if conn.execute(text("SELECT count(*) FROM send_log")).scalar_one():
            raise SystemExit("the database already holds send_log rows: seed a fresh one")
        conn.execute(
            insert(Campaign.__table__),
            [
                dict(
                    id=c + 1, name=f"campaign-{c + 1:02d}", status=statuses[c],
                    from_addr=f"Sales <sales{c % 3}@example.com>", daily_limit=[None, 2000, 5000][c % 3],
                    min_interval_seconds=[0.0, 1.5, 3.0][c % 3], jitter_seconds=0.5, timezone="Europe/Berlin",
                    window_days="0,1,2,3,4" if c % 2 else None, window_start="08:00" if c % 2 else None,
                    window_end="18:00" if c % 2 else None,
                    pause_reason="complaint from a recipient" if statuses[c] == "paused" else None,
                    paused_by="ops@example.com" if statuses[c] == "paused" else None,
                    paused_at=to_datetime(plan.end_us - DAY_US) if statuses[c] == "paused" else None,
                    created_at=to_datetime(int(plan.c_start_us[c] + plan.shift)),
                    updated_at=to_datetime(int(plan.c_start_us[c] + plan.shift)),
                )
                for c in range(N_CAMPAIGNS)
            ],
        )  # fmt: skip
        conn.execute(
            insert(Variant.__table__),
            [
                dict(campaign_id=c + 1, letter="ABC"[v], weight=1, subject=f"Quick question {{{{first_name}}}} ({'ABC'[v]})",
                     body=f"Hi {{{{first_name}}}},\n\nA short note from campaign {c + 1}.\n")
                for c in range(N_CAMPAIGNS) for v in range(int(plan.c_variants[c]))
            ],
        )  # fmt: skip
        conn.execute(
            insert(SenderInstance.__table__),
            [
                dict(
                    id=iid, host=f"mail-{int(plan.i_slot[i]) + 1}", pid=int(plan.i_pid[i]), version="0.1.0",
                    started_at=to_datetime(int(plan.i_start[i])),
                    heartbeat_at=to_datetime(plan.end_us if plan.i_current[i] else int(plan.i_end[i])),
                    stopped_at=None if plan.i_current[i] else to_datetime(int(plan.i_end[i])),
                    slot=int(plan.i_slot[i]) if plan.i_current[i] else None,
                )
                for i, iid in enumerate(plan.i_ids)
            ],
        )  # fmt: skip
    engine.dispose()

    if backend == "sqlite":
        loader: SqliteLoader | PostgresLoader = SqliteLoader(str(make_url(url).database))
    else:
        loader = PostgresLoader(
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
    stored_ts = _check_timestamps(loader, plan)

    counts: dict[str, int] = {"campaign": N_CAMPAIGNS, "sender_instance": len(plan.i_ids)}
    timings: dict[str, float] = {}
    t_load = time.perf_counter()
    for table, columns, rows_iter in (
        ("lead", LEAD_COLUMNS, plan.leads(backend)),
        ("campaign_lead", CAMPAIGN_LEAD_COLUMNS, plan.campaign_leads(backend)),
        ("send_log", SEND_LOG_COLUMNS, plan.send_logs(backend)),
        ("campaign_event", EVENT_COLUMNS, plan.events(backend)),
        ("imported_send_log", IMPORTED_COLUMNS, plan.imported(backend)),
    ):
        t0 = time.perf_counter()
        ddls = loader.drop_indexes(table)
        counts[table] = loader.load(table, columns, rows_iter)
        t1 = time.perf_counter()
        loader.create_indexes(ddls)
        timings[table] = round(time.perf_counter() - t0, 2)
        timings[f"{table}.indexes"] = round(time.perf_counter() - t1, 2)
    t0 = time.perf_counter()
    loader.finish()
    timings["finish"] = round(time.perf_counter() - t0, 2)
    seconds = time.perf_counter() - t_start
    total = sum(counts.values())
    return {
        "seconds": round(seconds, 2),
        "plan_seconds": round(t_plan, 2),
        "load_seconds": round(time.perf_counter() - t_load, 2),
        "rows_total": total,
        "rows_per_s": round(total / seconds),
        "send_log_rows_per_s": round(counts["send_log"] / timings["send_log"])
        if timings["send_log"]
        else None,
        "counts": counts,
        "table_seconds": timings,
        "range": [to_datetime(plan.start_us).isoformat(), to_datetime(plan.end_us).isoformat()],
        "incident": [to_datetime(plan.incident[0]).isoformat(), to_datetime(plan.incident[1]).isoformat()],
        "stored_timestamp_example": stored_ts,
        "foreign_keys": getattr(
            loader, "fk_checks", "off on the seeding connection (rows consistent by construction)"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="SQLAlchemy URL of a migrated, empty database")
    parser.add_argument("--rows", type=int, default=1_000_000, help="send_log rows (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(json.dumps(seed(args.url, args.rows, args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
