"""If, Range rows, Content-Range rows and ResourceTag/Repl-UID header grammars."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repltap.protocol.headers import (
    ContentRange,
    HeaderSyntaxError,
    HeaderView,
    IfCondition,
    RowRange,
    parse_content_range_rows,
    parse_if,
    parse_range_rows,
    strip_coded_url,
)
from repltap.protocol.model import Condition
from repltap.protocol.webdav import read_condition


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<rt:abc>", "rt:abc"),
        ("rt:abc", "rt:abc"),
        ("  < rid:8996 >  ", "rid:8996"),
        ("rt:5a1e@00000000001", "rt:5a1e@00000000001"),
    ],
)
def test_coded_url_with_or_without_brackets(value: str, expected: str) -> None:
    assert strip_coded_url(value) == expected


def test_if_untagged_single_token() -> None:
    h = parse_if("(<rt:doc-01>)")
    assert h.tokens("rt:") == ["rt:doc-01"]
    assert h.tokens("rid:") == []
    assert h.lists[0].resource is None


def test_if_tagged_lists_not_and_etags() -> None:
    h = parse_if('<http://x/a.EML> (<rt:abc> ["etag1"]) (Not <rid:def>)')
    assert [lst.resource for lst in h.lists] == ["http://x/a.EML", "http://x/a.EML"]
    assert h.lists[0].conditions == (
        IfCondition("token", "rt:abc"),
        IfCondition("etag", '"etag1"'),
    )
    assert h.tokens("rt:") == ["rt:abc"]
    assert h.negated_tokens("rid:") == ["rid:def"]
    assert h.tokens("rid:") == []
    assert h.etags == ['"etag1"']


def test_if_several_untagged_lists_and_letter_case() -> None:
    h = parse_if("(<RT:A>) (NOT <rid:b> <rt:c>)\t(<rid:d>)")
    assert h.tokens("rt:") == ["RT:A", "rt:c"]
    assert h.negated_tokens("rid:") == ["rid:b"]
    assert h.tokens("rid:") == ["rid:d"]


def test_if_other_resource_tags_switch_lists() -> None:
    h = parse_if("<http://a/1> (<rt:1>) <http://a/2> (<rt:2>) (<rt:3>)")
    assert [(lst.resource, lst.conditions[0].value) for lst in h.lists] == [
        ("http://a/1", "rt:1"),
        ("http://a/2", "rt:2"),
        ("http://a/2", "rt:3"),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "rt:abc",
        "(<rt:abc>",
        "()",
        "(Not)",
        "(<rt:abc)",
        "(x)",
        "<http://a> ",
        "(<a>) <b> (<c>)",
        "([etag)",
    ],
)
def test_if_malformed(bad: str) -> None:
    with pytest.raises(HeaderSyntaxError):
        parse_if(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("rows=0-99", [RowRange(0, 99)]),
        ("rows=100-", [RowRange(100, None)]),
        ("rows=-0", [RowRange(None, 0)]),
        ("ROWS = 0-5, 10-15 ,-3", [RowRange(0, 5), RowRange(10, 15), RowRange(None, 3)]),
    ],
)
def test_range_rows(value: str, expected: list[RowRange]) -> None:
    assert parse_range_rows(value) == expected


def test_range_row_counts_and_text() -> None:
    assert RowRange(0, 99).count == 100
    assert RowRange(None, 5).count == 5
    assert RowRange(7, None).count is None
    assert [str(r) for r in parse_range_rows("rows=0-5,10-,-3")] == ["0-5", "10-", "-3"]


@pytest.mark.parametrize(
    "bad",
    ["bytes=0-99", "rows=", "rows=a-b", "rows=5-1", "rows=-", "rows=1", "rows=" + "9" * 40 + "-"],
)
def test_range_rows_malformed(bad: str) -> None:
    with pytest.raises(HeaderSyntaxError):
        parse_range_rows(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("rows 0-99; total=350", ContentRange(0, 99, 350)),
        ("rows 0-5/350", ContentRange(0, 5, 350)),
        ("Rows 100-199", ContentRange(100, 199, None)),
        ("rows 0-99;total=*", ContentRange(0, 99, None)),
        ("rows */350", ContentRange(None, None, 350)),
    ],
)
def test_content_range_rows(value: str, expected: ContentRange) -> None:
    assert parse_content_range_rows(value) == expected


def test_content_range_text() -> None:
    assert str(ContentRange(0, 99, 350)) == "rows 0-99; total=350"


@pytest.mark.parametrize(
    "bad", ["bytes 0-99/100", "rows 9-1; total=3", "rows x-y", "rows 0-" + "9" * 30 + "; total=1"]
)
def test_content_range_malformed(bad: str) -> None:
    with pytest.raises(HeaderSyntaxError):
        parse_content_range_rows(bad)


def test_header_view_is_case_insensitive_and_joins_if_lists() -> None:
    h = HeaderView.of([("ResourceTag", "<rt:a>"), ("If", "(<rt:a>)"), ("if", "(<rid:b>)")])
    assert h.get("resourcetag") == "<rt:a>"
    assert h.get("RESOURCETAG") == "<rt:a>"
    assert parse_if(h.get("If") or "").tokens("rid:") == ["rid:b"]
    assert HeaderView.of({"Depth": "1"}).get("depth") == "1"
    assert HeaderView.of([(b"X", b"\xff")]).get("x") == "\xff"


def _condition_by_the_grammar(raw_if: str) -> Condition:
    """What read_condition gave before its fast path: every If read by the general parser."""
    malformed: list[str] = []
    try:
        p = parse_if(raw_if)
    except HeaderSyntaxError as e:
        malformed.append(str(e))
        return Condition(raw_if=raw_if)
    return Condition(
        raw_if=raw_if,
        tags=tuple(p.tokens("rt:")),
        uids=tuple(p.tokens("rid:")),
        not_tags=tuple(p.negated_tokens("rt:")),
        not_uids=tuple(p.negated_tokens("rid:")),
        etags=tuple(p.etags),
    )


_IF_PIECES = st.sampled_from(
    ["(", ")", "<", ">", "[", "]", " ", "\t", "Not ", "rt:", "RT:", "rid:", "Rid:", "x", '"e"']
)


@settings(max_examples=2000, deadline=None)
@given(st.lists(_IF_PIECES | st.text(max_size=3), max_size=12).map("".join))
def test_read_condition_fast_path_agrees_with_the_grammar(raw_if: str) -> None:
    malformed: list[str] = []
    got = read_condition(HeaderView.of({"If": raw_if}), malformed)
    assert got == _condition_by_the_grammar(raw_if)
    assert bool(malformed) == (_parse_fails(raw_if))


@pytest.mark.parametrize(
    "raw_if",
    ["(<rt:1>)", " ( <RT:a b> ) ", "\t(<rid:x>)", "(<>)", "(<opaquelocktoken:1>)", "(< rt:2 >)"],
)
def test_read_condition_single_token_forms(raw_if: str) -> None:
    malformed: list[str] = []
    assert read_condition(HeaderView.of({"If": raw_if}), malformed) == (
        _condition_by_the_grammar(raw_if)
    )
    assert malformed == []


def test_read_condition_without_any_condition_header() -> None:
    c = read_condition(HeaderView.of({"Depth": "1"}), [])
    assert c == Condition() and c.empty


def _parse_fails(raw_if: str) -> bool:
    try:
        parse_if(raw_if)
    except HeaderSyntaxError:
        return True
    return False


class _Fields:
    """Headers the way mitmproxy hands them over: (name, value) pairs of bytes in ``.fields``."""

    def __init__(self, *fields: tuple[bytes, bytes]) -> None:
        self.fields = fields


def test_header_view_of_raw_fields_joins_repeats_and_reads_latin1() -> None:
    once = HeaderView.of(_Fields((b"Depth", b"1"), (b"X-Name", b"caf\xe9")))
    assert once.get("depth") == "1" and once.get("x-name") == "café"
    twice = HeaderView.of(
        _Fields((b"If", b"(<rt:a>)"), (b"Accept", b"a"), (b"if", b"(<rid:b>)"), (b"ACCEPT", b"b"))
    )
    assert twice.get("if") == "(<rt:a>) (<rid:b>)"
    assert twice.get("accept") == "a, b"
    mixed = HeaderView.of(_Fields((b"Depth", b"1"), ("If", "(<rt:c>)")))  # type: ignore[arg-type]
    assert mixed.get("if") == "(<rt:c>)" and mixed.get("depth") == "1"
