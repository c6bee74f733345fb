"""Parse a leads CSV file (CLI.md, "Leads file (CSV)") into valid, de-duplicated rows and rejections.

Pure: bytes in, data out. The caller decides what to enroll; this module only decides what is
well-formed. Whole-file problems raise UsageError (exit 2, nothing enrolled); per-row problems become
`Rejection`s so one bad row never blocks the rest of the file.
"""

from __future__ import annotations

import codecs
import csv
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

from sender.errors import UsageError

MAX_FIELD_BYTES = 64 * 1024
# RFC 5321 §4.5.3.1: 64 octets of local part, and 254 for the whole path in practice (RFC 3696 errata).
MAX_ADDRESS_LENGTH = 254
MAX_LOCAL_PART_LENGTH = 64
EMAIL_COLUMN = "email"

# csv.field_size_limit is process-wide; see _raised_csv_field_limit.
_CSV_LIMIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class LeadRow:
    line: int  # physical line where the record starts; the header is line 1
    email: str  # normalized: trimmed, lower-cased
    fields: dict[str, str]  # every other column (header names stripped), value as read


@dataclass(frozen=True)
class Rejection:
    line: int
    reason: str


@dataclass
class ParsedLeads:
    rows: list[LeadRow]
    rejected: list[Rejection]
    duplicates_in_file: int


def normalize_email(raw: str) -> str:
    """The form used for de-duplication everywhere: two spellings of one mailbox must collide."""
    # Lower-casing the local part is technically lossy (RFC 5321 lets it be case-sensitive), but no
    # real mailbox provider distinguishes case, and treating them as one is what prevents duplicates.
    return raw.strip().lower()


def is_valid_email(address: str) -> bool:
    """Syntax-only check (no DNS). RFC 2606 names (example.com, *.test, *.example) are valid."""
    if not address or len(address) > MAX_ADDRESS_LENGTH:
        return False
    # The validator would reject most of these too, but spaces and display names are the usual
    # copy-paste accidents ("Ana <ana@x.com>"), so refuse them explicitly rather than by accident.
    if any(ch.isspace() for ch in address) or "<" in address or ">" in address:
        return False
    try:
        result = validate_email(
            address,
            check_deliverability=False,
            # test_environment lifts the special-use ban on `.test` only (a per-call option, so no
            # global state is touched); `.example`/example.com are accepted anyway.
            test_environment=True,
            # A non-ASCII local part needs SMTPUTF8 end to end and cannot be written in a header
            # with the stdlib's SMTP policy; refusing it at import beats failing at send time.
            allow_smtputf8=False,
        )
    except EmailNotValidError:
        return False
    # test_environment also admits a bare `user@test`; a real recipient always has a dotted domain.
    if "." not in result.ascii_domain:
        return False
    return len(result.local_part) <= MAX_LOCAL_PART_LENGTH and len(result.ascii_email) <= MAX_ADDRESS_LENGTH


def ascii_email(address: str) -> str:
    """The address with its domain in ASCII (IDNA), as SMTP and message headers need it.

    Uses the same validator and options as is_valid_email so the two never disagree; raises
    ValueError for an address is_valid_email would refuse.
    """
    if not is_valid_email(address):
        raise ValueError(f"invalid email address {address!r}")
    result = validate_email(address, check_deliverability=False, test_environment=True, allow_smtputf8=False)
    return result.ascii_email


def parse_leads(data: bytes, source: str = "leads file") -> ParsedLeads:
    """Parse the whole file; raises UsageError (one line, naming `source`) if it is unusable."""
    text = decode_csv_text(data, source)
    if not text.strip():
        raise UsageError(f"{source} is empty: expected a header row with an '{EMAIL_COLUMN}' column")

    lines = LineCounter(text)
    # strict=True makes an unterminated quote an error instead of silently swallowing the rest of the
    # file into one field, and a stray character after a closing quote an error instead of data.
    reader = csv.reader(lines, strict=True)
    with _raised_csv_field_limit(len(text) + 1):
        records = list(_records(reader, lines))

    header_at = next((i for i, (_, vals, err) in enumerate(records) if err or not _is_blank(vals)), None)
    if header_at is None:
        raise UsageError(f"{source} is empty: expected a header row with an '{EMAIL_COLUMN}' column")
    header_line, header, header_error = records[header_at]
    columns, email_index = _parse_header(header, header_error, header_line, source)

    rows: list[LeadRow] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    duplicates = 0
    for line, values, error in records[header_at + 1 :]:
        if error is not None:
            rejected.append(Rejection(line, error))
            continue
        if _is_blank(values):
            continue
        reason = _row_problem(values, columns, email_index)
        if reason is not None:
            rejected.append(Rejection(line, reason))
            continue
        email = normalize_email(values[email_index])
        if email in seen:
            duplicates += 1
            continue
        seen.add(email)
        pairs = enumerate(zip(columns, values, strict=True))
        fields = {name: value for i, (name, value) in pairs if i != email_index}
        rows.append(LeadRow(line=line, email=email, fields=fields))
    return ParsedLeads(rows=rows, rejected=rejected, duplicates_in_file=duplicates)


# A record as read: (physical start line, values, error reason or None).
_Record = tuple[int, list[str], str | None]


class LineCounter:
    """Feeds the csv reader one physical line at a time and counts them.

    csv's own line_num would do too, but counting here keeps the meaning explicit: a record starts on
    the line after the last one the previous record consumed, however many lines a quoted field spans.
    """

    def __init__(self, text: str) -> None:
        # newline="" splits on \n, \r\n and lone \r without translating them, exactly what the csv
        # module expects; str.splitlines would also split on U+2028, \x0c etc. and miscount lines.
        self._lines = iter(io.StringIO(text, newline=""))
        self.consumed = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.consumed += 1
        return line


def _records(reader: Iterator[list[str]], lines: LineCounter) -> Iterator[_Record]:
    while True:
        start = lines.consumed + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # The reader resumes at the next physical line, so later line numbers stay right.
            message = str(exc)
            if "unexpected end of data" in message:
                yield start, [], "unterminated quoted field (runs to the end of the file)"
            else:
                yield start, [], f"malformed CSV: {_one_line(message)}"
            continue
        yield start, values, None


def _is_blank(values: list[str]) -> bool:
    # csv yields [] for an empty line; a line of only spaces yields one whitespace field.
    return not values or (len(values) == 1 and not values[0].strip())


def _parse_header(header: list[str], error: str | None, line: int, source: str) -> tuple[list[str], int]:
    if error is not None:
        raise UsageError(f"{source} line {line}: cannot read the header row: {error}")
    columns = [name.strip() for name in header]
    for number, name in enumerate(columns, start=1):
        if "\r" in name or "\n" in name:
            raise UsageError(f"{source} line {line}: header column {number} contains a line break")
        if not name:
            raise UsageError(f"{source} line {line}: header column {number} has no name")
    email_indexes = [i for i, name in enumerate(columns) if name.lower() == EMAIL_COLUMN]
    if not email_indexes:
        shown = ", ".join(repr(name) for name in columns[:10])
        raise UsageError(
            f"{source} line {line}: the header row has no '{EMAIL_COLUMN}' column (found: {shown}); "
            "the first row must be a header"
        )
    if len(email_indexes) > 1:
        raise UsageError(f"{source} line {line}: more than one '{EMAIL_COLUMN}' column in the header")
    seen: set[str] = set()
    for name in columns:
        if name in seen:
            raise UsageError(f"{source} line {line}: duplicate column name {name!r} in the header")
        seen.add(name)
    return columns, email_indexes[0]


def _row_problem(values: list[str], columns: list[str], email_index: int) -> str | None:
    if len(values) != len(columns):
        return f"expected {len(columns)} columns, got {len(values)}"
    for name, value in zip(columns, values, strict=True):
        # A line break in a field would end up in a header or split a template field: never enroll it.
        if "\r" in value or "\n" in value:
            return f"CR or LF in field {name!r}"
        if len(value.encode("utf-8")) > MAX_FIELD_BYTES:
            return f"field {name!r} over 64 KiB"
    raw = values[email_index]
    email = normalize_email(raw)
    if not email:
        return "missing email address"
    if not is_valid_email(email):
        return f"invalid email address {_shorten(raw.strip())!r}"
    return None


def decode_csv_text(data: bytes, source: str) -> str:
    # One leading BOM is fine (Excel writes it). Strip it by hand rather than with utf-8-sig, whose
    # error offsets would be relative to the data after the BOM.
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise UsageError(
            f"{source} is not UTF-8: invalid byte 0x{data[offset]:02x} at byte offset {offset} "
            f"(line {line}); save it as UTF-8 and retry"
        ) from None


@contextmanager
def _raised_csv_field_limit(limit: int) -> Iterator[None]:
    """Temporarily lift csv's process-wide field size limit (131072 characters by default).

    Past that limit the reader raises mid-record, and inside a multi-line quoted field it cannot
    resynchronise, which would shift every later line number. Lifting it to the text's length means it
    never triggers; our own 64 KiB rule rejects big fields instead. The lock keeps concurrent parses
    from restoring each other's value; other csv users only ever see a more permissive limit.
    """
    with _CSV_LIMIT_LOCK:
        previous = csv.field_size_limit()
        csv.field_size_limit(max(previous, limit))
        try:
            yield
        finally:
            csv.field_size_limit(previous)


def _shorten(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())
