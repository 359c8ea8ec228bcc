"""The "WebDAV Replication" contentview through mitmproxy's registry and prettify_message."""

from __future__ import annotations

from mitmproxy import contentviews, http
from mitmproxy.contentviews import Metadata, prettify_message, registry
from mitmproxy.test import taddons, tflow

from repltap.mitm.contentview import WebDAVReplicationContentview
from repltap.mitm.decode import Decode

from .test_decode import INITIAL, MANIFEST, flow

contentviews.add(WebDAVReplicationContentview)


def test_registered_under_its_name() -> None:
    assert "webdav replication" in registry


def test_auto_picks_it_for_repl_bodies_only() -> None:
    meta = Metadata(content_type="text/xml")
    assert registry.get_view(MANIFEST, meta).name == "WebDAV Replication"
    assert registry.get_view(INITIAL, meta).name == "WebDAV Replication"
    assert registry.get_view(b'<D:multistatus xmlns:D="DAV:"/>', meta).name == "XML/HTML"
    assert registry.get_view(b'{"a": 1}', Metadata(content_type="application/json")).name == "JSON"


async def test_response_view_has_header_table_and_xml() -> None:
    d = Decode()
    with taddons.context(d) as tctx:
        f = flow(
            "SEARCH",
            "/exchange/alice/Inbox/",
            INITIAL,
            {"Content-Type": "text/xml"},
            207,
            MANIFEST,
            {"Content-Type": "text/xml"},
        )
        await tctx.cycle(d, f)
        assert f.response is not None
        res = prettify_message(f.response, f)
    assert res.view_name == "WebDAV Replication"
    assert res.syntax_highlight == "xml"
    text = res.text
    lines = text.splitlines()
    assert lines[0].startswith("== WebDAV replication (exchange): manifest /exchange/alice/Inbox/")
    assert "collblob: (none) → 'toCTAAMAAAAAAAAAAHkJaBFAA='" in text
    assert "changes: 1 new, 0 change, 1 delete" in text
    header = next(i for i, line in enumerate(lines) if line.startswith("changetype"))
    assert lines[header].split() == ["changetype", "href", "resourcetag", "repl-uid"]
    assert lines[header + 2].split() == [
        "new",
        "a.EML",
        "rt:01",
        "rid:0001",
    ]
    assert lines[header + 3].split() == ["delete", "(none)", "-", "rid:0002"]
    # then the XML, pretty-printed with the server's own prefixes
    assert "<d:collblob>toCTAAMAAAAAAAAAAHkJaBFAA=</d:collblob>" in text
    assert text.index("<a:multistatus") > text.index("changetype")


async def test_request_view() -> None:
    with taddons.context():
        f = flow(
            "SEARCH", "/exchange/alice/Inbox/", INITIAL, {"Content-Type": "text/xml"}, status=None
        )
        res = prettify_message(f.request, f)
    assert res.view_name == "WebDAV Replication"
    assert "collblob sent: (none: initial sync, empty-element)" in res.text
    assert "scope: shallow traversal of /exchange/alice/Inbox/" in res.text


def test_view_decodes_flows_the_decoder_never_saw() -> None:
    # A recording made without repltap: no metadata, the view decodes by itself.
    with taddons.context():
        f = flow("SEARCH", "/c/", INITIAL, {}, 207, MANIFEST, {"Content-Type": "text/xml"})
        assert "repl" not in f.metadata
        assert f.response is not None
        res = prettify_message(f.response, f)
    assert res.view_name == "WebDAV Replication"
    assert "1 new" in res.text


def test_undecodable_body_falls_back_to_plain_xml_without_error() -> None:
    bad = b'<d:x xmlns:d="http://schemas.microsoft.com/repl/"><unclosed>'
    with taddons.context():
        f = tflow.tflow(resp=http.Response.make(207, bad, {"Content-Type": "text/xml"}))
        assert f.response is not None
        res = prettify_message(f.response, f)
    assert res.syntax_highlight != "error"
    assert "Couldn't parse" not in res.text
    assert "<unclosed>" in res.text


def test_view_without_a_flow() -> None:
    view = WebDAVReplicationContentview()
    msg = http.Response.make(207, MANIFEST, {"Content-Type": "text/xml"})
    text = view.prettify(MANIFEST, Metadata(content_type="text/xml", http_message=msg))
    assert "1 new, 0 change, 1 delete" in text


def test_rfc6578_answer_view() -> None:
    from tests.protocol.test_rfc6578 import INITIAL_CALDAV, RADICALE

    with taddons.context():
        req = http.Request.make(
            "REPORT",
            "http://127.0.0.1:5232/alice/cal/",
            INITIAL_CALDAV,
            {"Content-Type": "text/xml", "Depth": "0"},
        )
        f = tflow.tflow(req=req)
        f.response = http.Response.make(207, RADICALE, {"Content-Type": "text/xml"})
        res = prettify_message(f.response, f)
    assert res.view_name == "WebDAV Replication"
    assert res.text.startswith("== WebDAV replication (rfc6578): manifest /alice/cal/")
    assert "sync-token: (none) → 'http://radicale.org/ns/sync/8c1f'" in res.text
    lines = res.text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("change "))
    assert lines[header].split() == ["change", "href", "etag", "status"]
    assert lines[header + 2].split() == ["change", "e1.ics", '"1a"']
    assert lines[header + 3].split() == ["delete", "gone.ics", "-", "404"]


def test_a_plain_replication_request_under_way_still_gets_the_view() -> None:
    """Decode writes a plain request's summary with its answer; an intercepted or slow PUT
    with a condition is replication traffic all the same."""
    view = WebDAVReplicationContentview()
    put = flow("PUT", "/c/a.EML", b"Subject: x\r\n\r\nbody\r\n", {"If": "(<rt:1>)"})
    put.response = None
    assert view.render_priority(put.request.content or b"", Metadata(flow=put)) == 3
    page = flow("POST", "/form", b"a=1")  # plain web traffic, not ours
    page.response = None
    assert view.render_priority(page.request.content or b"", Metadata(flow=page)) == -1
