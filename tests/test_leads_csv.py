"""Unit tests for sender.leads_csv: the leads CSV contract in CLI.md."""

from __future__ import annotations

import csv

import pytest

from sender.errors import UsageError
from sender.leads_csv import (
    LeadRow,
    Rejection,
    ascii_email,
    is_valid_email,
    normalize_email,
    parse_leads,
)


def parse(text: str) -> tuple[list[LeadRow], list[Rejection], int]:
    result = parse_leads(text.encode("utf-8"), "leads.csv")
    return result.rows, result.rejected, result.duplicates_in_file


# --- normalize_email / is_valid_email ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Ana@Example.COM", "ana@example.com"), ("  bob@x.org\t", "bob@x.org"), ("", "")],
)
def test_normalize_email(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "address",
    [
        "ana@example.com",
        "ana@example.org",
        "ana@example.net",
        "ana@sub.example.com",
        "ana@foo.test",  # RFC 2606 .test: email-validator refuses it without test_environment
        "ana@host.example",
        "first.last+tag@example.com",
        "o'brien@example.com",
        "ana@münchen.de",  # internationalised domain: fine, sent as punycode
        "a" * 64 + "@example.com",
    ],
)
def test_valid_addresses(address: str) -> None:
    assert is_valid_email(address)


@pytest.mark.parametrize(
    "address",
    [
        "",
        "foo@",
        "@example.com",
        "no-at-sign",
        "a@b@example.com",
        "ana@localhost",
        "ana@test",  # a bare TLD is not a recipient
        "ana@foo.invalid",
        "a..b@example.com",
        "ana @example.com",
        " ana@example.com",
        "ana@exa mple.com",
        "Ana <ana@example.com>",
        "<ana@example.com>",
        '"Ana" ana@example.com',
        '"quoted local"@example.com',
        "ana@[192.0.2.1]",
        "ü@example.com",  # needs SMTPUTF8 end to end
        "ana@ex_ample.com",
        "a" * 65 + "@example.com",  # local part over 64 octets
        "a" * 64 + "@" + ("b" * 60 + ".") * 3 + "b" * 10 + ".com",  # 262 characters
    ],
)
def test_invalid_addresses(address: str) -> None:
    assert not is_valid_email(address)


def test_length_limit_is_254() -> None:
    local = "a" * 64
    domain_254 = ("b" * 61 + ".") * 2 + "c" * (254 - 65 - 124 - 4) + ".com"
    assert len(local + "@" + domain_254) == 254
    assert is_valid_email(local + "@" + domain_254)
    assert not is_valid_email(local + "@b" + domain_254)


def test_ascii_email_uses_punycode_and_refuses_invalid() -> None:
    assert ascii_email("ana@münchen.de") == "ana@xn--mnchen-3ya.de"
    assert ascii_email("ana@example.com") == "ana@example.com"
    with pytest.raises(ValueError):
        ascii_email("foo@")


# --- good files --------------------------------------------------------------------------------


def test_good_rows_fields_and_lines() -> None:
    rows, rejected, dups = parse("email,first_name,company\nana@example.com,Ana,Acme\nbob@example.org,Bob,\n")
    assert rejected == [] and dups == 0
    assert rows == [
        LeadRow(line=2, email="ana@example.com", fields={"first_name": "Ana", "company": "Acme"}),
        LeadRow(line=3, email="bob@example.org", fields={"first_name": "Bob", "company": ""}),
    ]


def test_bom_and_crlf() -> None:
    data = "\ufeffemail,name\r\nana@example.com,Ana\r\nbob@example.com,Bob\r\n".encode()
    result = parse_leads(data)
    assert [r.email for r in result.rows] == ["ana@example.com", "bob@example.com"]
    assert [r.line for r in result.rows] == [2, 3]
    assert result.rows[0].fields == {"name": "Ana"}  # no BOM glued to a column name


def test_header_matched_case_insensitively_and_trimmed() -> None:
    rows, rejected, _ = parse(" First Name , EMAIL ,Notes\nAna, Ana@Example.COM ,x\n")
    assert rejected == []
    assert rows == [LeadRow(2, "ana@example.com", {"First Name": "Ana", "Notes": "x"})]


def test_values_are_kept_as_read() -> None:
    rows, _, _ = parse('email,name\nana@example.com,"  Ana, the first  "\n')
    assert rows[0].fields == {"name": "  Ana, the first  "}


def test_hostile_values_are_data() -> None:
    formula = "=cmd|' /C calc'!A0"
    script = "<script>alert(1)</script>"
    jinja = "{{ ''.__class__ }}"
    text = f'email,note,other,tmpl\nana@example.com,"{formula}",{script},{jinja}\n'
    rows, rejected, _ = parse(text)
    assert rejected == []
    assert rows[0].fields == {"note": formula, "other": script, "tmpl": jinja}


def test_header_only_is_valid_and_empty() -> None:
    assert parse("email,name\n") == ([], [], 0)
    assert parse("email") == ([], [], 0)


def test_email_only_column() -> None:
    rows, _, _ = parse("Email\nana@example.com\n")
    assert rows == [LeadRow(2, "ana@example.com", {})]


def test_blank_lines_are_skipped_and_counted() -> None:
    rows, rejected, _ = parse("\n\nemail,name\n\nana@example.com,Ana\n   \n\nbob@example.com,Bob")
    assert rejected == []
    assert [(r.line, r.email) for r in rows] == [(5, "ana@example.com"), (8, "bob@example.com")]


def test_quoted_field_with_comma_and_escaped_quote() -> None:
    rows, rejected, _ = parse('email,name\nana@example.com,"Nowak, ""Ana"""\n')
    assert rejected == []
    assert rows[0].fields["name"] == 'Nowak, "Ana"'


# --- duplicates --------------------------------------------------------------------------------


def test_duplicates_counted_not_rejected_first_kept() -> None:
    rows, rejected, dups = parse(
        "email,name\nAna@Example.com,first\nbob@example.com,b\n"
        "  ana@example.COM ,second\nANA@EXAMPLE.COM,third\n"
    )
    assert rejected == []
    assert dups == 2
    assert [(r.line, r.email, r.fields["name"]) for r in rows] == [
        (2, "ana@example.com", "first"),
        (3, "bob@example.com", "b"),
    ]


def test_rejected_row_does_not_count_as_seen() -> None:
    rows, rejected, dups = parse("email,name\nana@example.com,a,extra\nana@example.com,b\n")
    assert rejected == [Rejection(2, "expected 2 columns, got 3")]
    assert dups == 0
    assert [(r.line, r.fields["name"]) for r in rows] == [(3, "b")]


# --- per-row rejections ------------------------------------------------------------------------


def test_invalid_addresses_rejected_with_lines() -> None:
    rows, rejected, _ = parse(
        "email,name\nfoo@,A\nana@example.com,B\nAna <x@example.com>,C\n,D\nbad @x.com,E\n"
    )
    assert [r.email for r in rows] == ["ana@example.com"]
    assert rejected == [
        Rejection(2, "invalid email address 'foo@'"),
        Rejection(4, "invalid email address 'Ana <x@example.com>'"),
        Rejection(5, "missing email address"),
        Rejection(6, "invalid email address 'bad @x.com'"),
    ]


def test_wrong_column_count() -> None:
    rows, rejected, _ = parse("email,a,b\nx@example.com,1,2,3\ny@example.com,1\nz@example.com,1,2\n")
    assert rejected == [
        Rejection(2, "expected 3 columns, got 4"),
        Rejection(3, "expected 3 columns, got 2"),
    ]
    assert [r.line for r in rows] == [4]


def test_multiline_quoted_field_rejected_and_later_lines_stay_right() -> None:
    text = (
        "email,first_name,notes\n"  # 1
        'ana@example.com,"An\na",x\n'  # 2-3
        "bob@example.com,Bob,y\n"  # 4
        'cid@example.com,Cid,"one\r\ntwo\r\nthree"\n'  # 5-7
        "dan@example.com,Dan,z\n"  # 8
    )
    rows, rejected, _ = parse(text)
    assert rejected == [
        Rejection(2, "CR or LF in field 'first_name'"),
        Rejection(5, "CR or LF in field 'notes'"),
    ]
    assert [(r.line, r.email) for r in rows] == [(4, "bob@example.com"), (8, "dan@example.com")]


def test_bare_cr_inside_quotes_rejected() -> None:
    rows, rejected, _ = parse('email,name\nana@example.com,"a\rb"\nbob@example.com,b\n')
    assert rejected == [Rejection(2, "CR or LF in field 'name'")]
    assert [(r.line, r.email) for r in rows] == [(4, "bob@example.com")]


def test_line_break_in_email_field_rejected() -> None:
    _, rejected, _ = parse('email,name\n"ana@example.com\nBcc: x@example.com",a\n')
    assert rejected == [Rejection(2, "CR or LF in field 'email'")]


def test_field_over_64_kib() -> None:
    big = "x" * 65536  # exactly 64 KiB: allowed
    too_big = "x" * 65537
    multibyte = "ż" * 32769  # 65538 bytes in UTF-8 though only 32769 characters
    text = (
        f"email,notes\nana@example.com,{big}\nbob@example.com,{too_big}\n"
        f"cid@example.com,{multibyte}\ndan@example.com,ok\n"
    )
    rows, rejected, _ = parse(text)
    assert [r.email for r in rows] == ["ana@example.com", "dan@example.com"]
    assert rejected == [
        Rejection(3, "field 'notes' over 64 KiB"),
        Rejection(4, "field 'notes' over 64 KiB"),
    ]


def test_field_beyond_csv_module_limit_in_multiline_record() -> None:
    # Bigger than csv's default 131072-character limit and spanning lines: must neither crash nor
    # shift the line numbers of the records after it.
    huge = "y" * 200_000
    text = f'email,notes\nana@example.com,"{huge}\n{huge}"\nbob@example.com,ok\n'
    limit_before = csv.field_size_limit()
    rows, rejected, _ = parse(text)
    assert rejected == [Rejection(2, "CR or LF in field 'notes'")]
    assert [(r.line, r.email) for r in rows] == [(4, "bob@example.com")]
    assert csv.field_size_limit() == limit_before  # process-wide setting restored


def test_unterminated_quote_rejected_at_its_start() -> None:
    rows, rejected, _ = parse('email,name\nana@example.com,Ana\nbob@example.com,"Bob\ncid@example.com,Cid\n')
    assert [r.email for r in rows] == ["ana@example.com"]
    assert rejected == [Rejection(3, "unterminated quoted field (runs to the end of the file)")]


def test_garbage_after_closing_quote_rejected_and_parsing_resumes() -> None:
    rows, rejected, _ = parse('email,name\nana@example.com,"Ana"x\nbob@example.com,Bob\n')
    assert len(rejected) == 1 and rejected[0].line == 2
    assert rejected[0].reason.startswith("malformed CSV: ")
    assert [(r.line, r.email) for r in rows] == [(3, "bob@example.com")]


def test_rejection_reasons_are_one_line() -> None:
    _, rejected, _ = parse("email,name\nfoo\u2028bar@example.com,a\n")
    assert len(rejected) == 1
    assert "\u2028" not in rejected[0].reason and "\n" not in rejected[0].reason


def test_control_characters_other_than_cr_lf_are_data() -> None:
    # Only CR/LF are forbidden by the contract; headers are made safe by message.one_line.
    rows, rejected, _ = parse("email,name\nana@example.com,a\tb\x0bc\n")
    assert rejected == []
    assert rows[0].fields["name"] == "a\tb\x0bc"


# --- whole-file errors -------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"\n\n", b"  \r\n \n"])
def test_empty_file(data: bytes) -> None:
    with pytest.raises(UsageError, match=r"^leads\.csv is empty"):
        parse_leads(data, "leads.csv")


def test_not_utf8_names_offset() -> None:
    data = b"email,name\nana@example.com,Ana\nbob@example.com,B\xe9b\n"
    with pytest.raises(UsageError) as info:
        parse_leads(data, "leads.csv")
    message = str(info.value)
    assert message == (
        "leads.csv is not UTF-8: invalid byte 0xe9 at byte offset 48 (line 3); save it as UTF-8 and retry"
    )


def test_not_utf8_offset_counts_the_bom() -> None:
    with pytest.raises(UsageError, match=r"invalid byte 0xff at byte offset 9 \(line 2\)"):
        parse_leads(b"\xef\xbb\xbfemail\n\xff@example.com\n")


def test_latin1_file_rejected_whole() -> None:
    with pytest.raises(UsageError, match="not UTF-8"):
        parse_leads("email,name\nzoë@example.com,Zoë\n".encode("latin-1"))


def test_no_email_column() -> None:
    with pytest.raises(UsageError) as info:
        parse_leads(b"mail,name\nana@example.com,Ana\n", "leads.csv")
    assert str(info.value).startswith("leads.csv line 1: the header row has no 'email' column")
    assert "'mail', 'name'" in str(info.value)


def test_headerless_file_is_refused() -> None:
    with pytest.raises(UsageError, match="no 'email' column"):
        parse_leads(b"ana@example.com,Ana\nbob@example.com,Bob\n")


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("email,name,name", "duplicate column name 'name'"),
        ("email,Email", "more than one 'email' column"),
        ("email,,name", "header column 2 has no name"),
        ('email,"a\nb"', "header column 2 contains a line break"),
    ],
)
def test_bad_headers(header: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_leads(f"{header}\nana@example.com,x,y\n".encode(), "leads.csv")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_header_line_number_after_leading_blank_lines() -> None:
    with pytest.raises(UsageError, match=r"^leads\.csv line 3: "):
        parse_leads(b"\n\nname\n", "leads.csv")


def test_default_source_name() -> None:
    with pytest.raises(UsageError, match="^leads file is empty"):
        parse_leads(b"")
