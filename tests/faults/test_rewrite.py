"""Rewriting manifest answers: what the decoder reads afterwards, and the server's own prefixes,
declaration and layout kept."""

from __future__ import annotations

import random

import pytest

from repltap import protocol
from repltap.faults import rewrite

EXCHANGE = b"""<?xml version="1.0" encoding="utf-8"?>
<a:multistatus xmlns:a="DAV:" xmlns:b="urn:uuid:c2f41010-65b3-11d1-a29f-00aa00c14882/" \
xmlns:c="http://schemas.microsoft.com/repl/">
<c:repl><c:collblob>toCTAAMAAABSEQAT</c:collblob></c:repl>
<a:response><a:href>http://h/ex/Inbox/A.EML</a:href><a:propstat><a:status>HTTP/1.1 200 OK\
</a:status><a:prop><c:resourcetag>rt:1</c:resourcetag><c:repl-uid>rid:1</c:repl-uid></a:prop>\
</a:propstat><c:changetype>new</c:changetype></a:response>
<a:response><a:href>http://h/ex/Inbox/B.EML</a:href><a:propstat><a:status>HTTP/1.1 200 OK\
</a:status><a:prop><c:resourcetag>rt:2</c:resourcetag><c:repl-uid>rid:2</c:repl-uid></a:prop>\
</a:propstat></a:response>
<a:response><a:href></a:href><a:propstat><a:status>HTTP/1.1 200 OK</a:status><a:prop>\
<c:repl-uid>rid:3</c:repl-uid></a:prop></a:propstat><c:changetype>delete</c:changetype>\
</a:response>
</a:multistatus>
"""

RADICALE = b"""<?xml version='1.0' encoding='utf-8'?>
<multistatus xmlns="DAV:"><sync-token>http://radicale.org/ns/sync/0f1e</sync-token>\
<response><href>/alice/cal/a.ics</href><propstat><prop><getetag>"1"</getetag></prop>\
<status>HTTP/1.1 200 OK</status></propstat></response>\
<response><href>/alice/cal/b.ics</href><propstat><prop><getetag>"2"</getetag></prop>\
<status>HTTP/1.1 200 OK</status></propstat></response>\
<response><href>/alice/cal/c.ics</href><status>HTTP/1.1 404 Not Found</status></response>\
</multistatus>"""


def decoded(body: bytes, proto: str = "exchange") -> protocol.Response:
    if proto == "exchange":
        req = protocol.decode_request(
            "SEARCH",
            "/ex/Inbox/",
            {},
            b'<D:searchrequest xmlns:D="DAV:" xmlns:R="http://schemas.microsoft.com/repl/">'
            b"<R:repl><R:collblob>T0</R:collblob></R:repl></D:searchrequest>",
        )
    else:
        req = protocol.decode_request(
            "REPORT",
            "/alice/cal/",
            {},
            b'<D:sync-collection xmlns:D="DAV:"><D:sync-token>x</D:sync-token>'
            b"<D:sync-level>1</D:sync-level><D:prop><D:getetag/></D:prop></D:sync-collection>",
        )
    return protocol.decode_response(req, 207, {"Content-Type": "text/xml"}, body)


def ex() -> rewrite.Manifest:
    return rewrite.parse(EXCHANGE, "exchange", "/ex/Inbox/")


def test_unchanged_the_document_keeps_its_declaration_prefixes_and_trailer() -> None:
    m = ex()
    out = m.tobytes()
    assert out.startswith(b'<?xml version="1.0" encoding="utf-8"?>\n<a:multistatus xmlns:a="DAV:"')
    assert out.endswith(b"</a:multistatus>\n")
    assert b"<c:changetype>new</c:changetype>" in out
    assert decoded(out).entries == decoded(EXCHANGE).entries
    r = rewrite.parse(RADICALE, "rfc6578", "/alice/cal/")
    assert r.tobytes().startswith(b"<?xml version='1.0' encoding='utf-8'?>\n<multistatus xmlns=")


def test_tokens() -> None:
    m = ex()
    assert m.token == "toCTAAMAAABSEQAT"
    assert m.set_token("NEW") == "toCTAAMAAABSEQAT"
    assert decoded(m.tobytes()).token == "NEW"
    r = rewrite.parse(RADICALE, "rfc6578", "/alice/cal/")
    r.set_token("http://radicale.org/ns/sync/beef")
    assert decoded(r.tobytes(), "rfc6578").token == "http://radicale.org/ns/sync/beef"


@pytest.mark.parametrize(
    ("token", "flipped"),
    [
        ("toCTAAMAAABSEQAT", "toCTAAMABABSEQAT"),  # base64 stays base64
        ("0123456789abcdef0123456789abcdef01234567", "0123456789abcdef0123556789abcdef01234567"),
        ("http://radicale.org/ns/sync/0f1e", "http://radicale.org/ns/sync/0f2e"),  # the hash
        ("toCTAAMA/AABSEQA/T=", "toCTAAMA/BABSEQA/T="),  # base64 with / and padding: the middle
        ("data:,17", "data:,18"),
        ("==", "==x"),
    ],
)
def test_corrupt_flip(token: str, flipped: str) -> None:
    assert rewrite.corrupt(token, "flip", random.Random(1)) == flipped


def test_corrupt_other_modes() -> None:
    g = rewrite.corrupt("abc", "garbage", random.Random(1))
    assert g == rewrite.corrupt("abc", "garbage", random.Random(1)) and len(g) == 8 and g != "abc"
    assert rewrite.corrupt("abc", "empty", random.Random(1)) == ""


def test_minted_page_tokens_name_their_split_and_page() -> None:
    sid = rewrite.split_id("T9", 2, b"<body/>")
    assert sid == rewrite.split_id("T9", 2, b"<body/>")  # the same traffic, the same bytes
    others = [("T8", 2, b"<body/>"), ("T9", 3, b"<body/>"), ("T9", 2, b"<other/>")]
    assert all(rewrite.split_id(*o) != sid for o in others)
    t = rewrite.mint_page_token(sid, 1, 3)
    assert t.startswith("repltap-page-1-of-3-") and rewrite.read_page_token(t) == (sid, 1, 3)
    for other in ("T9", "repltap-page-3-of-3-" + sid, "repltap-page-1-of-3-x", t + "0"):
        assert rewrite.read_page_token(other) is None


def test_entries_dropped_duplicated_reordered() -> None:
    m = ex()
    assert [m.entry_type(e) for e in m.entries()] == ["new", "change", "delete"]
    m.remove([m.entries()[1]])
    assert [e["uid"] for e in decoded(m.tobytes()).entries] == ["rid:1", "rid:3"]
    m = ex()
    m.duplicate([m.entries()[0]])
    assert [e["uid"] for e in decoded(m.tobytes()).entries] == ["rid:1", "rid:1", "rid:2", "rid:3"]
    m = ex()
    m.reorder([2, 0, 1])
    out = m.tobytes()
    assert [e["uid"] for e in decoded(out).entries] == ["rid:3", "rid:1", "rid:2"]
    assert out.index(b"<c:repl>") < out.index(b"<a:response>")  # R:repl keeps its slot
    assert out.count(b"\n") == EXCHANGE.count(b"\n")  # one entry a line, as before


def test_changetypes_rewritten_added_or_removed_in_the_servers_prefix() -> None:
    m = ex()
    first, second, _ = m.entries()
    assert m.set_changetype(first, "change") == "new"
    assert m.set_changetype(second, "delete") == "change"  # had none: one is added
    out = m.tobytes()
    assert b"<c:changetype>delete</c:changetype>" in out
    assert [e["type"] for e in decoded(out).entries] == ["change", "delete", "delete"]
    m = ex()
    m.set_changetype(m.entries()[0], "none")
    e = decoded(m.tobytes()).entries[0]
    assert (e["type"], e.get("implicit")) == ("change", True)


def test_exchange_page() -> None:
    m = ex()
    m.keep_page(1, 3, "P2", truncated=True)  # Exchange pages say so in Content-Range only
    r = decoded(m.tobytes())
    assert [e["uid"] for e in r.entries] == ["rid:2", "rid:3"] and r.token == "P2"
    assert not r.truncated


def test_rfc6578_pages_carry_a_507_for_the_request_uri() -> None:
    r = rewrite.parse(RADICALE, "rfc6578", "/alice/cal/")
    r.keep_page(0, 2, "repltap-page-1-of-2-x", truncated=True)
    out = r.tobytes()
    d = decoded(out, "rfc6578")
    assert d.truncated and d.token == "repltap-page-1-of-2-x"
    assert [e["href"] for e in d.entries] == ["/alice/cal/a.ics", "/alice/cal/b.ics"]
    assert b"<response><href>/alice/cal/</href><status>HTTP/1.1 507 Insufficient Storage" in out
    assert b"<number-of-matches-within-limits/>" in out  # default namespace, like the server
    # The next page: the marker of the first page is not an entry, and the last page has none.
    again = rewrite.parse(out, "rfc6578", "/alice/cal/")
    assert len(again.entries()) == 2
    last = rewrite.parse(RADICALE, "rfc6578", "/alice/cal/")
    last.keep_page(2, 3, "http://radicale.org/ns/sync/0f1e", truncated=False)
    d = decoded(last.tobytes(), "rfc6578")
    assert not d.truncated and [e["type"] for e in d.entries] == ["delete"]


def test_invalid_sync_token_bodies_read_as_invalid_tokens() -> None:
    for prefix in (None, "D", "ns0"):
        body = rewrite.invalid_sync_token_body(prefix, "Requested sync token x is invalid")
        req = protocol.decode_request("REPORT", "/c/", {}, b"")
        req.manifest = True
        resp = protocol.rfc6578.decode_response(req, 403, {}, body)
        assert resp.invalid_token
    assert b"<error xmlns=" in rewrite.invalid_sync_token_body(None, None)
    assert rewrite.dav_prefix(RADICALE) is None and rewrite.dav_prefix(EXCHANGE) == "a"


def test_not_a_multistatus_is_refused() -> None:
    with pytest.raises(rewrite.RewriteError):
        rewrite.parse(b"<x/>", "exchange", "/")
    with pytest.raises(rewrite.RewriteError):
        rewrite.parse(b"<a:multistatus xmlns:a='DAV:'>", "exchange", "/")


def test_pick() -> None:
    rng = random.Random(4)
    assert rewrite.pick(5, 2, "first", rng) == [0, 1]
    assert rewrite.pick(5, 2, "last", rng) == [3, 4]
    assert rewrite.pick(5, 9, "first", rng) == [0, 1, 2, 3, 4]
    a = rewrite.pick(10, 3, "random", random.Random(1))
    assert a == rewrite.pick(10, 3, "random", random.Random(1)) and a == sorted(a)
