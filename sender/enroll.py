"""`leads import`: validated rows become leads and queued enrollments, in one transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, bindparam, insert, select, text

from models import Campaign, CampaignLead, CampaignStatus, EnrollmentStatus, Lead
from sender.campaigns import _template_context, assign_variant, get_campaign, variants_of
from sender.leads_csv import LeadRow, Rejection, parse_leads
from sender.templates import missing_field

L = Lead.__table__.c
CL = CampaignLead.__table__.c
CHUNK = 500

_SUPPRESSED = text("""
SELECT email FROM suppression WHERE email IN :emails
UNION
SELECT :marker || domain FROM suppression WHERE domain IN :domains
""").bindparams(bindparam("emails", expanding=True), bindparam("domains", expanding=True))


@dataclass
class ImportResult:
    enrolled: int = 0
    already_enrolled: int = 0
    duplicates_in_file: int = 0
    suppressed: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "enrolled": self.enrolled,
            "already_enrolled": self.already_enrolled,
            "duplicates_in_file": self.duplicates_in_file,
            "suppressed": self.suppressed,
            "rejected": [{"line": r.line, "reason": r.reason} for r in self.rejected],
        }


def _names(row: LeadRow) -> tuple[str | None, str | None]:
    lowered = {k.strip().lower(): v for k, v in row.fields.items()}
    return lowered.get("first_name"), lowered.get("last_name")


def import_leads(
    engine: Engine, campaign_name: str, data: bytes, *, source: str, now: datetime
) -> ImportResult:
    parsed = parse_leads(data, source)  # UsageError (exit 2, nothing enrolled) when the file is unusable
    result = ImportResult(duplicates_in_file=parsed.duplicates_in_file, rejected=list(parsed.rejected))
    with engine.begin() as conn:
        campaign: Campaign = get_campaign(conn, campaign_name)
        variants = variants_of(conn, campaign.id)
        by_letter = {v.letter: v for v in variants}
        weights = [(v.letter, v.weight) for v in variants]
        for start in range(0, len(parsed.rows), CHUNK):
            chunk = parsed.rows[start : start + CHUNK]
            emails = [r.email for r in chunk]
            domains = sorted({e.split("@", 1)[1] for e in emails})
            suppressed = set(
                conn.execute(_SUPPRESSED, {"emails": emails, "domains": domains, "marker": "@"}).scalars()
            )
            keep: list[LeadRow] = []
            for row in chunk:
                if row.email in suppressed or "@" + row.email.split("@", 1)[1] in suppressed:
                    result.suppressed += 1
                else:
                    keep.append(row)
            if not keep:
                continue
            existing = dict(
                conn.execute(select(L.email, L.id).where(L.email.in_([r.email for r in keep]))).all()  # type: ignore[arg-type]
            )
            new_rows = [
                {
                    "email": r.email,
                    "first_name": _names(r)[0],
                    "last_name": _names(r)[1],
                    "fields": json.dumps(r.fields, ensure_ascii=False),
                    "created_at": now,
                }
                for r in keep
                if r.email not in existing
            ]
            if new_rows:
                conn.execute(insert(Lead.__table__), new_rows)
                existing.update(
                    conn.execute(
                        select(L.email, L.id).where(L.email.in_([r["email"] for r in new_rows]))
                    ).all()  # type: ignore[arg-type]
                )
            enrolled_ids = set(
                conn.execute(
                    select(CL.lead_id).where(
                        CL.campaign_id == campaign.id, CL.step == 0, CL.lead_id.in_(list(existing.values()))
                    )
                ).scalars()
            )
            enrollments = []
            for row in keep:
                lead_id = existing[row.email]
                if lead_id in enrolled_ids:
                    result.already_enrolled += 1
                    continue
                letter = assign_variant(campaign.name, row.email, weights)
                if campaign.status in (CampaignStatus.ACTIVE.value, CampaignStatus.PAUSED.value):
                    # Running campaigns were checked at `start`; later leads must pass the same check.
                    first, last = _names(row)
                    context = _template_context((row.email, first, last, json.dumps(row.fields)))
                    variant = by_letter[letter]
                    needed = missing_field(variant.subject, context) or missing_field(variant.body, context)
                    if needed is not None:
                        result.rejected.append(
                            Rejection(row.line, f"missing field {needed!r} needed by variant {letter}")
                        )
                        continue
                enrolled_ids.add(lead_id)
                enrollments.append(
                    {
                        "campaign_id": campaign.id,
                        "lead_id": lead_id,
                        "step": 0,
                        "variant_letter": letter,
                        "status": EnrollmentStatus.QUEUED.value,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            if enrollments:
                conn.execute(insert(CampaignLead.__table__), enrollments)
                result.enrolled += len(enrollments)
    result.rejected.sort(key=lambda r: r.line)
    return result
