"""RFC 6578 sync-collection decoding, with every quirk of the real peers
(../shared/spec/rfc6578-peers.md): element order, prefixes, removed members, several
propstats, token shapes, the valid-sync-token error whatever its status, 507 truncation."""

from __future__ import annotations

import pytest

from repltap import protocol
from repltap.summary import is_relevant, summarise

CAL = "/alice/cal/"


def report(body: bytes, headers: dict[str, str] | None = None) -> protocol.Request:
    return protocol.decode_request(
        "REPORT", CAL, {"Depth": "0"} if headers is None else headers, body
    )


INITIAL_CALDAV = (  # python-caldav: D: prefixes, token first, Depth: 1 in its headers
    b'<?xml version="1.0" encoding="utf-8"?>\n<D:sync-collection xmlns:D="DAV:">'
    b"<D:sync-token/><D:sync-level>1</D:sync-level><D:prop><D:getetag/></D:prop>"
    b"</D:sync-collection>"
)
TSDAV = (  # tsdav: sync-level before sync-token, default namespace, a limit
    b'<sync-collection xmlns="DAV:"><sync-level>1</sync-level>'
    b"<sync-token>http://radicale.org/ns/sync/5f3a</sync-token>"
    b"<limit><nresults>10</nresults></limit><prop><getetag/></prop></sync-collection>"
)
RADICALE = (  # default namespace, token before the members, an old deletion as a bare 404
    b"<?xml version='1.0' encoding='utf-8'?>\n<multistatus xmlns=\"DAV:\">"
    b"<sync-token>http://radicale.org/ns/sync/8c1f</sync-token>"
    b'<response><href>/alice/cal/e1.ics</href><propstat><prop><getetag>"1a"</getetag></prop>'
    b"<status>HTTP/1.1 200 OK</status></propstat></response>"
    b"<response><href>/alice/cal/gone.ics</href><status>HTTP/1.1 404 Not Found</status>"
    b"</response></multistatus>"
)
XANDIKOS = (  # ns0: prefixes, token after the members, a 404 propstat beside the 200 one
    b'<ns0:multistatus xmlns:ns0="DAV:"><ns0:response><ns0:href>/user/calendars/calendar/e1.ics'
    b"</ns0:href><ns0:propstat><ns0:status>HTTP/1.1 200 OK</ns0:status><ns0:prop>"
    b'<ns0:getetag>"a1b2"</ns0:getetag></ns0:prop></ns0:propstat><ns0:propstat>'
    b"<ns0:status>HTTP/1.1 404 Not Found</ns0:status><ns0:prop>"
    b'<ns1:calendar-data xmlns:ns1="urn:ietf:params:xml:ns:caldav"/></ns0:prop></ns0:propstat>'
    b"</ns0:response><ns0:sync-token>3b4c0a1f9d2e8b7c6a5f4e3d2c1b0a9f8e7d6c5b</ns0:sync-token>"
    b"</ns0:multistatus>"
)
TRUNCATED = (
    b'<d:multistatus xmlns:d="DAV:"><d:response><d:href>/alice/cal/</d:href>'
    b"<d:status>HTTP/1.1 507 Insufficient Storage</d:status><d:error>"
    b"<d:number-of-matches-within-limits/></d:error></d:response>"
    b"<d:response><d:href>/alice/cal/e2.ics</d:href><d:propstat><d:prop>"
    b'<d:getetag>"2b"</d:getetag></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat>'
    b"</d:response><d:sync-token>data:,17</d:sync-token></d:multistatus>"
)


def test_requests_in_any_order_and_prefix() -> None:
    req = report(INITIAL_CALDAV, {"Depth": "1"})
    assert req.protocol == "rfc6578" and req.kind == "manifest" and req.manifest
    assert req.initial and req.token is None and req.token_form == "empty-element"
    assert req.sync_level == "1" and req.props == ["{DAV:}getetag"] and req.depth == "1"
    req = report(TSDAV, {})
    assert req.token == "http://radicale.org/ns/sync/5f3a" and req.limit == 10
    assert req.depth is None


def test_radicale_answer() -> None:
    req = report(INITIAL_CALDAV)
    resp = protocol.decode_response(req, 207, {"Content-Type": "text/xml"}, RADICALE)
    assert resp.manifest and resp.token == "http://radicale.org/ns/sync/8c1f"
    assert resp.entries == [
        {"type": "change", "href": "/alice/cal/e1.ics", "tag": '"1a"', "uid": "/alice/cal/e1.ics"},
        {
            "type": "delete",
            "href": "/alice/cal/gone.ics",
            "tag": None,
            "uid": "/alice/cal/gone.ics",
            "status": 404,
        },
    ]
    assert resp.changes == {"new": 0, "change": 1, "delete": 1}
    s = summarise(req, resp)
    assert s["summary"] == "manifest /alice/cal/: sync-token ∅ → …/8c1f, 1 change, 1 delete"


def test_xandikos_answer_token_after_members_and_404_propstat() -> None:
    resp = protocol.decode_response(report(INITIAL_CALDAV), 207, {}, XANDIKOS)
    assert resp.token == "3b4c0a1f9d2e8b7c6a5f4e3d2c1b0a9f8e7d6c5b"
    (e,) = resp.entries
    assert e["type"] == "change" and e["tag"] == '"a1b2"' and "status" not in e


def test_truncation_507_is_not_a_member() -> None:
    req = report(TSDAV)
    resp = protocol.decode_response(req, 207, {}, TRUNCATED)
    assert resp.truncated and resp.token == "data:,17"
    assert [e["href"] for e in resp.entries] == ["/alice/cal/e2.ics"]
    assert summarise(req, resp)["summary"].endswith("1 change, truncated")


@pytest.mark.parametrize("status", [403, 412, 409, 400])
def test_valid_sync_token_error_whatever_the_status(status: int) -> None:
    body = (
        b'<?xml version="1.0"?><D:error xmlns:D="DAV:"><D:valid-sync-token/>'
        b"<D:responsedescription>bad token</D:responsedescription></D:error>"
    )
    resp = protocol.decode_response(report(TSDAV), status, {}, body)
    assert resp.invalid_token and not resp.manifest
    assert "rejected" in summarise(report(TSDAV), resp)["summary"]


def test_other_reports_are_not_manifests_but_their_etags_count() -> None:
    multiget = b'<C:calendar-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"/>'
    req = report(multiget)
    assert not req.manifest and req.protocol == "rfc6578"
    resp = protocol.decode_response(
        req, 207, {}, RADICALE.replace(b"<sync-token>", b"<x>").replace(b"</sync-token>", b"</x>")
    )
    assert not resp.manifest and is_relevant(req, resp)
    assert [e["tag"] for e in resp.entries] == ['"1a"', None]


def test_plain_webdav_writes_are_rfc6578_by_their_answer() -> None:
    req = protocol.decode_request(
        "PUT", "/alice/cal/e1.ics", {"If-Match": '"1a"'}, b"BEGIN:VCALENDAR"
    )
    resp = protocol.decode_response(req, 204, {"ETag": '"1b"'}, b"")
    assert req.protocol == "rfc6578" and resp.tag == '"1b"'
    assert req.condition.if_match == '"1a"'
    req = protocol.decode_request("PUT", "/alice/cal/e1.ics", {}, b"x")
    resp = protocol.decode_response(req, 412, {}, b"")
    assert req.protocol == "exchange"  # nothing tells: it stays a generic WebDAV write
    # an Exchange write keeps its protocol even with an ETag beside the ResourceTag
    req = protocol.decode_request("PUT", "/x/a.EML", {"If": "(<rt:1>)"}, b"x")
    resp = protocol.decode_response(req, 204, {"ETag": '"e"', "ResourceTag": "<rt:2>"}, b"")
    assert req.protocol == "exchange" and resp.tag == "rt:2"


def test_propfind_getctag_and_sync_token_property() -> None:
    body = (
        b'<d:multistatus xmlns:d="DAV:" xmlns:cs="http://calendarserver.org/ns/"><d:response>'
        b'<d:href>/alice/cal/</d:href><d:propstat><d:prop><cs:getctag>"c9"</cs:getctag>'
        b"<d:sync-token>http://radicale.org/ns/sync/8c1f</d:sync-token></d:prop>"
        b"<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>"
    )
    req = protocol.decode_request("PROPFIND", CAL, {"Depth": "0"}, b'<d:propfind xmlns:d="DAV:"/>')
    resp = protocol.decode_response(req, 207, {}, body)
    assert req.protocol == "rfc6578" and resp.ctag == '"c9"'
    assert resp.to_dict()["token"] == "http://radicale.org/ns/sync/8c1f"


def test_garbage_never_raises() -> None:
    for body in (b"", b"nope", b"<a", b"<D:sync-collection xmlns:D='DAV:'><D:limit><D:nresults>x"):
        req = report(body)
        protocol.decode_response(req, 207, {}, body)
