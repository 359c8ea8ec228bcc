"""Property-based tests of the Exchange core: whatever the bytes, decoding never raises; any
generated manifest decodes to the meaning it was generated from."""

from __future__ import annotations

import contextlib
from xml.sax.saxutils import escape

from hypothesis import given, settings
from hypothesis import strategies as st

from repltap.protocol import exchange
from repltap.protocol.headers import (
    HeaderSyntaxError,
    parse_content_range_rows,
    parse_if,
    parse_range_rows,
)
from tests.protocol.readings import reading

REQ = exchange.decode_request(
    "SEARCH",
    "/c/",
    {},
    b'<D:searchrequest xmlns:D="DAV:" xmlns:R="http://schemas.microsoft.com/repl/">'
    b"<R:repl><R:collblob>x</R:collblob></R:repl></D:searchrequest>",
)

methods = st.sampled_from(["SEARCH", "PROPFIND", "PUT", "GET", "DELETE", "MOVE", "POST", "X"])
header_values = st.text(max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    method=methods,
    body=st.binary(max_size=400),
    ifv=header_values,
    rng=header_values,
    status=st.integers(100, 599),
    cr=header_values,
    tag=header_values,
)
def test_arbitrary_input_never_raises(method, body, ifv, rng, status, cr, tag) -> None:
    req = exchange.decode_request(method, "/c/", {"If": ifv, "Range": rng}, body)
    exchange.decode_response(req, status, {"Content-Range": cr, "ResourceTag": tag}, body)
    exchange.decode_response(REQ, status, {"Content-Range": cr}, body)


xml_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=20
).filter(lambda s: s.strip() == s and s != "")
token = st.from_regex(r"[A-Za-z0-9+/=:@{}\-]{1,40}", fullmatch=True)
entry = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["new", "change", "delete", None]),
        "href": st.one_of(st.none(), xml_text.map(lambda s: "http://h/c/" + s)),
        "tag": st.one_of(st.none(), token.map(lambda s: "rt:" + s)),
        "uid": st.one_of(st.none(), token.map(lambda s: "rid:" + s)),
        "ct_in_prop": st.booleans(),
    }
)
spelling = st.sampled_from(
    [
        ("D", "R", "http://schemas.microsoft.com/repl/", "collblob", "changetype"),
        ("a", "d", "http://schemas.microsoft.com/repl/", "collblob", "changetype"),
        ("D", "R", "http://schemas.microsoft.com/repl/", "CollBlob", "ChangeType"),
        ("D", "R", "https://schemas.microsoft.com/repl/", "collblob", "changetype"),
        ("", "R", "http://schemas.microsoft.com/repl", "collblob", "changetype"),
    ]
)


def render(
    collblob: str | None,
    entries: list[dict],
    sp: tuple[str, str, str, str, str],
    between: str = "",
) -> bytes:
    d, r, ns, cb, ct = sp
    dp = f"{d}:" if d else ""
    dns = f'xmlns:{d}="DAV:"' if d else 'xmlns="DAV:"'
    out = [f'<?xml version="1.0"?><{dp}multistatus {dns} xmlns:{r}="{ns}">']
    if collblob is None:
        out.append(f"<{r}:repl/>")
    else:
        out.append(f"<{r}:repl><{r}:{cb}>{escape(collblob)}</{r}:{cb}></{r}:repl>")
    for e in entries:
        out.append(between.replace("D:", dp))
        out.append(f"<{dp}response>")
        if e["href"] is not None:
            out.append(f"<{dp}href>{escape(e['href'])}</{dp}href>")
        props = ""
        if e["tag"] is not None:
            props += f"<{r}:resourcetag>{escape(e['tag'])}</{r}:resourcetag>"
        if e["uid"] is not None:
            props += f"<{r}:repl-uid>{escape(e['uid'])}</{r}:repl-uid>"
        ctype = f"<{r}:{ct}>{e['type']}</{r}:{ct}>" if e["type"] else ""
        if e["ct_in_prop"]:
            props, ctype = props + ctype, ""
        out.append(
            f"<{dp}propstat><{dp}status>HTTP/1.1 200 OK</{dp}status>"
            f"<{dp}prop>{props}</{dp}prop></{dp}propstat>{ctype}</{dp}response>"
        )
    out.append(f"</{dp}multistatus>")
    return "".join(out).encode()


@settings(max_examples=200, deadline=None)
@given(collblob=st.one_of(st.none(), token), entries=st.lists(entry, max_size=8), sp=spelling)
def test_generated_manifests_decode_to_their_meaning(collblob, entries, sp) -> None:
    resp = exchange.decode_response(REQ, 207, {}, render(collblob, entries, sp))
    assert resp.problem is None
    assert resp.manifest
    assert resp.token == collblob
    assert resp.no_changes == (collblob is None)
    got = [(e["type"], e["href"], e["tag"], e["uid"]) for e in resp.entries]
    want = [(e["type"] or "change", e["href"], e["tag"], e["uid"]) for e in entries]
    assert got == want
    assert [bool(e.get("implicit")) for e in resp.entries] == [e["type"] is None for e in entries]
    noncanonical = sp[2] != "http://schemas.microsoft.com/repl/"
    assert bool(resp.nonstandard_ns) == noncanonical


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_header_parsers_raise_only_their_own_error(value: str) -> None:
    for parse in (parse_if, parse_range_rows, parse_content_range_rows):
        with contextlib.suppress(HeaderSyntaxError):
            parse(value)


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=5))
def test_range_rows_round_trip(pairs: list[tuple[int, int]]) -> None:
    spec = ",".join(f"{min(a, b)}-{max(a, b)}" for a, b in pairs)
    assert [(r.first, r.last) for r in parse_range_rows("rows=" + spec)] == [
        (min(a, b), max(a, b)) for a, b in pairs
    ]


# What may stand between two entries: a wrong cut inside a comment, a CDATA section or a
# processing instruction must fail and fall back to the stream, never change the meaning.
interlude = st.sampled_from(
    [
        "",
        "\n  ",
        "<!-- </D:response> -->",
        "<!-- </response> --><?pi </D:response> ?>",
        "<x:other xmlns:x='urn:x'><![CDATA[ </D:response> ]]></x:other>",
        "<x:response xmlns:x='urn:x'><x:href>/not/an/entry</x:href></x:response>",
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    collblob=st.one_of(st.none(), token),
    entries=st.lists(entry, max_size=8),
    sp=spelling,
    between=interlude,
)
def test_piece_stream_and_tree_readings_agree(collblob, entries, sp, between) -> None:
    body = render(collblob, entries, sp, between)
    tree = exchange.decode_response(REQ, 207, {}, body)
    for mode in ("pieces", "stream"):
        with reading(mode):
            other = exchange.decode_response(REQ, 207, {}, body)
        assert other.to_dict() == tree.to_dict(), mode


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=300))
def test_large_body_readings_never_raise(body: bytes) -> None:
    for mode in ("pieces", "stream"):
        with reading(mode):
            exchange.decode_response(REQ, 207, {}, body)
            exchange.decode_response(REQ, 207, {}, b"<D:multistatus xmlns:D='DAV:'>" + body)
