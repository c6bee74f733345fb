"""`leads import` (sender/enroll.py) in-process against both backends: what gets enrolled, what is
only counted (suppressed, already enrolled, duplicates in the file), and what is stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, insert, select, text

from models import Suppression
from sender import campaigns
from sender.campaign_file import parse_campaign
from sender.db import make_engine
from sender.enroll import CHUNK, ImportResult, import_leads
from sender.errors import UsageError

T0 = datetime(2030, 5, 6, 10, 0, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def create(engine: Engine, name: str, body: str = "Hello {{ email }}") -> None:
    spec = parse_campaign(
        f'name = "{name}"\nfrom = "Ana <ana@example.com>"\n'
        f'[[variants]]\nletter = "A"\nsubject = "Hi"\nbody = "{body}"\n',
        f"{name}.toml",
    )
    campaigns.create_or_update(engine, spec, update_existing=False, now=T0)


def run_import(engine: Engine, name: str, csv_text: str) -> ImportResult:
    return import_leads(engine, name, csv_text.encode(), source="leads.csv", now=T0)


def enrolled(engine: Engine, name: str) -> list[str]:
    with engine.connect() as conn:
        return sorted(
            conn.execute(
                text(
                    "SELECT l.email FROM campaign_lead AS cl JOIN lead AS l ON l.id = cl.lead_id "
                    "JOIN campaign AS c ON c.id = cl.campaign_id WHERE c.name = :name"
                ),
                {"name": name},
            ).scalars()
        )


def suppress(engine: Engine, *, email: str | None = None, domain: str | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(Suppression.__table__).values(
                email=email, domain=domain, reason="unsubscribe", created_at=T0
            )
        )


def test_suppressed_addresses_and_domains_are_counted_not_enrolled(engine: Engine) -> None:
    create(engine, "supp")
    suppress(engine, email="blocked@example.com")
    suppress(engine, domain="blocked.example")
    result = run_import(
        engine,
        "supp",
        "email,first_name\n"
        " Blocked@Example.COM ,Bea\n"  # the suppressed address, in another spelling
        "anyone@blocked.example,Al\n"  # a suppressed domain
        "ANYONE-ELSE@Blocked.Example,Al2\n"
        "ok@example.com,Otto\n"
        "blocked@example.org,Near\n"  # same local part, another domain: fine
        "someone@notblocked.example,Nat\n",  # a domain that merely ends like a suppressed one
    )
    assert (result.enrolled, result.suppressed, result.already_enrolled, result.rejected) == (3, 3, 0, [])
    assert enrolled(engine, "supp") == ["blocked@example.org", "ok@example.com", "someone@notblocked.example"]

    # Suppressed later still counts as suppressed on re-import, not as already enrolled.
    suppress(engine, email="ok@example.com")
    again = run_import(engine, "supp", "email\nok@example.com\nblocked@example.org\n")
    assert (again.enrolled, again.suppressed, again.already_enrolled) == (0, 1, 1)


def test_reimport_counts_already_enrolled_per_campaign_and_shares_lead_rows(engine: Engine) -> None:
    create(engine, "one")
    create(engine, "two")
    first = run_import(
        engine, "one", "email,first_name,last_name,company\na@example.com,Ann,Lee,Acme\nb@example.com,Bo,,\n"
    )
    assert (first.enrolled, first.already_enrolled, first.duplicates_in_file) == (2, 0, 0)

    second = run_import(engine, "one", "Email\nA@EXAMPLE.com\n b@example.com\nc@example.com\nC@example.com\n")
    assert (second.enrolled, second.already_enrolled, second.duplicates_in_file) == (1, 2, 1)
    assert second.as_json() == {
        "enrolled": 1,
        "already_enrolled": 2,
        "duplicates_in_file": 1,
        "suppressed": 0,
        "rejected": [],
    }
    assert enrolled(engine, "one") == ["a@example.com", "b@example.com", "c@example.com"]

    other = run_import(engine, "two", "email\na@example.com\nc@example.com\n")
    assert (other.enrolled, other.already_enrolled) == (2, 0), "enrollment is per campaign"
    with engine.connect() as conn:
        leads = {
            r.email: r
            for r in conn.execute(
                text("SELECT email, first_name, last_name, fields FROM lead ORDER BY email")
            )
        }
        steps = conn.execute(text("SELECT DISTINCT step, status, attempts FROM campaign_lead")).all()
    assert sorted(leads) == ["a@example.com", "b@example.com", "c@example.com"], "one lead row per address"
    # The first import's data is kept: a re-import never rewrites a lead.
    assert (leads["a@example.com"].first_name, leads["a@example.com"].last_name) == ("Ann", "Lee")
    assert json.loads(leads["a@example.com"].fields) == {
        "first_name": "Ann",
        "last_name": "Lee",
        "company": "Acme",
    }
    assert json.loads(leads["b@example.com"].fields)["company"] == ""
    assert [tuple(s) for s in steps] == [(0, "queued", 0)]


def test_import_spanning_several_chunks_enrolls_each_row_once(engine: Engine) -> None:
    create(engine, "bulk")
    n = CHUNK * 2 + 17
    body = "".join(f"bulk{i:05d}@example.com\n" for i in range(n))
    dupes = "".join(f"BULK{i:05d}@EXAMPLE.COM\n" for i in range(0, n, 100))
    result = run_import(engine, "bulk", "email\n" + body + dupes)
    assert (result.enrolled, result.duplicates_in_file) == (n, len(range(0, n, 100)))
    assert len(enrolled(engine, "bulk")) == n
    assert run_import(engine, "bulk", "email\n" + body).already_enrolled == n


def test_an_active_campaign_rejects_leads_its_templates_cannot_render(engine: Engine) -> None:
    create(engine, "live", body="Hi {{ first_name }} at {{ company }}")
    run_import(engine, "live", "email,first_name,company\nfirst@example.com,F,Acme\n")
    campaigns.start(engine, "live", actor="test", reason=None, now=T0)

    result = run_import(
        engine, "live", "email,first_name\nlate@example.com,L\n"
    )  # no company column: cannot render
    assert result.enrolled == 0
    assert [(r.line, "company" in r.reason) for r in result.rejected] == [(2, True)]
    ok = run_import(engine, "live", "email,first_name,company\nlate@example.com,L,Initech\n")
    assert ok.enrolled == 1
    assert enrolled(engine, "live") == ["first@example.com", "late@example.com"]


def test_unknown_campaign_or_unusable_file_enrolls_nothing(engine: Engine) -> None:
    create(engine, "real")
    with pytest.raises(UsageError, match="no campaign named 'ghost'"):
        run_import(engine, "ghost", "email\nx@example.com\n")
    with pytest.raises(UsageError, match="UTF-8"):
        import_leads(engine, "real", b"email\ny@example.com\nz\xff@example.com\n", source="l.csv", now=T0)
    with engine.connect() as conn:
        assert conn.execute(select(text("count(*)")).select_from(text("lead"))).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM campaign_lead")).scalar_one() == 0
