"""Tokens keep every character a peer sent except XML's (in element text) or HTTP's (in header
values) whitespace. str.strip() with no argument would also cut a non-breaking space or another
Unicode blank off a token, and two tokens that differ there would read as one."""

from __future__ import annotations

import pytest

from repltap import protocol
from repltap.protocol import exchange

NBSP, NEL, EMSP = "\u00a0", "\u0085", "\u2003"
REPL = "http://schemas.microsoft.com/repl/"


def manifest_request(collblob: str) -> bytes:
    return (
        f'<?xml version="1.0"?><D:searchrequest xmlns:D="DAV:" xmlns:R="{REPL}"><R:repl>'
        f"<R:collblob>{collblob}</R:collblob></R:repl>"
        '<D:sql>SELECT "DAV:href" FROM SCOPE(\'SHALLOW TRAVERSAL OF "/Inbox/"\')</D:sql>'
        "</D:searchrequest>"
    ).encode()


def manifest_answer(collblob: str, tag: str, href: str = "/Inbox/a.EML") -> bytes:
    return (
        f'<?xml version="1.0"?><a:multistatus xmlns:a="DAV:" xmlns:d="{REPL}">'
        f"<d:repl><d:collblob>{collblob}</d:collblob></d:repl>"
        f"<a:response><a:href>{href}</a:href><a:propstat><a:status>HTTP/1.1 200 OK</a:status>"
        f"<a:prop><d:resourcetag>{tag}</d:resourcetag></a:prop></a:propstat>"
        "<d:changetype>new</d:changetype></a:response></a:multistatus>"
    ).encode()


@pytest.mark.parametrize("blank", [NBSP, NEL, EMSP])
def test_unicode_blanks_are_part_of_exchange_tokens(blank: str) -> None:
    req = protocol.decode_request("SEARCH", "/Inbox/", {}, manifest_request(f"cb1{blank}"))
    assert req.token == f"cb1{blank}"
    resp = protocol.decode_response(
        req, 207, {"Content-Type": "text/xml"}, manifest_answer(f" cb2{blank}\n", f"\trt:1{blank}")
    )
    assert resp.token == f"cb2{blank}"
    assert resp.entries[0]["tag"] == f"rt:1{blank}"
    # and a plain one differs from it
    plain = protocol.decode_response(
        req, 207, {"Content-Type": "text/xml"}, manifest_answer("cb2", "rt:1")
    )
    assert plain.token != resp.token and plain.entries[0]["tag"] != resp.entries[0]["tag"]


def test_xml_whitespace_around_tokens_is_still_trimmed() -> None:
    req = protocol.decode_request("SEARCH", "/Inbox/", {}, manifest_request("\r\n\t cb1 \n"))
    assert req.token == "cb1"
    assert req.token_form == "text"
    resp = protocol.decode_response(
        req, 207, {}, manifest_answer("\n cb2\t", "\n\t rt:1 \r\n", href="\n /Inbox/a.EML \n")
    )
    assert (resp.token, resp.entries[0]["tag"], resp.entries[0]["href"]) == (
        "cb2",
        "rt:1",
        "/Inbox/a.EML",
    )


def test_a_token_of_unicode_blanks_only_is_not_whitespace() -> None:
    req = protocol.decode_request("SEARCH", "/Inbox/", {}, manifest_request(NBSP))
    assert req.token_form == "text" and req.token == NBSP
    req = protocol.decode_request("SEARCH", "/Inbox/", {}, manifest_request(" \t\n"))
    assert req.token_form == "whitespace" and req.token is None


def test_header_tokens_keep_unicode_blanks() -> None:
    req = exchange.decode_request("GET", "/Inbox/a.EML", {"If": f"(<rt:1{NBSP}>)"}, None)
    assert req.condition.tags == (f"rt:1{NBSP}",)
    req = exchange.decode_request("GET", "/Inbox/a.EML", {"If": "( < rt:1\t> )"}, None)
    assert req.condition.tags == ("rt:1",)
    resp = protocol.decode_response(req, 200, {"ResourceTag": f"<rt:2{EMSP}>"}, b"")
    assert resp.tag == f"rt:2{EMSP}"


def test_rfc6578_sync_token_and_etag_keep_unicode_blanks() -> None:
    body = (
        '<D:sync-collection xmlns:D="DAV:"><D:sync-token>\n http://s/ns/sync/1'
        f"{NBSP} </D:sync-token><D:sync-level>1</D:sync-level><D:prop><D:getetag/></D:prop>"
        "</D:sync-collection>"
    ).encode()
    req = protocol.decode_request("REPORT", "/cal/", {"Depth": "0"}, body)
    assert req.token == f"http://s/ns/sync/1{NBSP}"
    put = protocol.decode_request("PUT", "/cal/e.ics", {"If-Match": '"1"'}, b"x")
    resp = protocol.decode_response(put, 204, {"ETag": f' "2{NBSP}" '}, b"", hint="rfc6578")
    assert resp.tag == f'"2{NBSP}"'
