"""The decoder addon through mitmproxy's own test helpers (taddons, tflow)."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions, http, io
from mitmproxy.test import taddons, tflow

from repltap.mitm.decode import Decode
from tests.harness.mitm import call_hook

INITIAL = (
    b'<D:searchrequest xmlns:D="DAV:" xmlns:R="http://schemas.microsoft.com/repl/">'
    b'<R:repl><R:collblob/></R:repl><D:sql>SELECT "DAV:href" FROM SCOPE(\'SHALLOW TRAVERSAL OF '
    b'"/exchange/alice/Inbox/"\')</D:sql></D:searchrequest>'
)
MANIFEST = (
    b'<a:multistatus xmlns:a="DAV:" xmlns:d="http://schemas.microsoft.com/repl/">'
    b"<d:repl><d:collblob>toCTAAMAAAAAAAAAAHkJaBFAA=</d:collblob></d:repl>"
    b"<a:response><a:href>http://mail.example.com/exchange/alice/Inbox/a.EML</a:href>"
    b"<a:propstat><a:status>HTTP/1.1 200 OK</a:status><a:prop><d:resourcetag>rt:01</d:resourcetag>"
    b"<d:repl-uid>rid:0001</d:repl-uid></a:prop></a:propstat><d:changetype>new</d:changetype>"
    b"</a:response>"
    b"<a:response><a:propstat><a:status>HTTP/1.1 200 OK</a:status><a:prop>"
    b"<d:repl-uid>rid:0002</d:repl-uid></a:prop></a:propstat><d:changetype>delete</d:changetype>"
    b"</a:response></a:multistatus>"
)


def flow(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    status: int | None = None,
    resp_body: bytes = b"",
    resp_headers: dict[str, str] | None = None,
) -> http.HTTPFlow:
    req = http.Request.make(method, f"http://mail.example.com:8080{path}", body, headers or {})
    f = tflow.tflow(req=req)
    if status is not None:
        f.response = http.Response.make(status, resp_body, resp_headers or {})
    return f


async def test_manifest_flow_gets_summary_and_comment() -> None:
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
    s = f.metadata["repl"]
    assert s["kind"] == "manifest"
    assert s["collection"] == "/exchange/alice/Inbox/"
    assert s["upstream"] == "mail.example.com:8080"
    assert s["request"]["initial"] is True
    assert s["request"]["scope"] == [{"depth": "shallow", "url": "/exchange/alice/Inbox/"}]
    assert s["response"]["token"] == "toCTAAMAAAAAAAAAAHkJaBFAA="
    assert s["response"]["changes"] == {"new": 1, "change": 0, "delete": 1}
    assert s["response"]["entries"][1] == {
        "type": "delete",
        "href": None,
        "tag": None,
        "uid": "rid:0002",
    }
    assert f.comment == "manifest /exchange/alice/Inbox/: collblob ∅ → toCT…FAA=, 1 new, 1 delete"


async def test_metadata_survives_a_flow_file_round_trip(tmp_path) -> None:
    d = Decode()
    with taddons.context(d) as tctx:
        f = flow("SEARCH", "/exchange/alice/Inbox/", INITIAL, {}, 207, MANIFEST)
        await tctx.cycle(d, f)
    p = tmp_path / "f.mitm"
    with p.open("wb") as fo:
        io.FlowWriter(fo).add(f)
    with p.open("rb") as fo:
        (back,) = list(io.FlowReader(fo).stream())
    assert back.metadata["repl"] == f.metadata["repl"]
    assert back.comment == f.comment


async def test_conditional_put_412() -> None:
    d = Decode()
    with taddons.context(d) as tctx:
        f = flow("PUT", "/exchange/alice/Inbox/a.EML", b"body", {"If": "(<rt:old>)"}, 412)
        await tctx.cycle(d, f)
    s = f.metadata["repl"]
    assert s["kind"] == "upload"
    assert s["request"]["condition"]["tags"] == ["rt:old"]
    assert s["response"]["status"] == 412
    assert "precondition failed" in s["response"]["meaning"]
    assert f.comment.startswith("upload /exchange/alice/Inbox/a.EML: if rt:old → 412")


async def test_get_with_resourcetag_is_relevant_plain_get_is_not() -> None:
    d = Decode()
    with taddons.context(d) as tctx:
        tagged = flow(
            "GET",
            "/exchange/alice/Inbox/a.EML",
            status=200,
            resp_body=b"x",
            resp_headers={"Resourcetag": "<rt:02>"},
        )
        plain = flow("GET", "/index.html", status=200, resp_body=b"<html/>")
        await tctx.cycle(d, tagged)
        await tctx.cycle(d, plain)
    assert tagged.metadata["repl"]["response"]["tag"] == "rt:02"
    assert "repl" not in plain.metadata
    assert plain.comment == ""


async def test_a_plain_request_is_summarised_with_its_answer_a_manifest_at_once() -> None:
    d = Decode()
    with taddons.context(d):
        manifest = flow("SEARCH", "/c/", INITIAL, {}, 207, MANIFEST)
        d.request(manifest)
        assert manifest.metadata["repl"]["response"] is None  # at once
        assert manifest.comment.startswith("manifest /c/")

        put = flow("PUT", "/c/a.EML", b"x", {"If": "(<rt:1>)"}, 204)
        d.request(put)
        assert "repl" not in put.metadata and put.comment == ""  # put off
        early = d.summary_now(put)  # an addon asks before the answer
        assert early is put.metadata["repl"] and early["response"] is None
        assert put.comment == "upload /c/a.EML: if rt:1"
        early["fault"] = [{"rule": "kept"}]  # what another addon attached stays
        await call_hook(d.response, put)
        s = put.metadata["repl"]
        assert s["response"]["status"] == 204 and s["fault"] == [{"rule": "kept"}]
        assert put.comment == "upload /c/a.EML: if rt:1 → 204 no content (done)"
        assert d.summary_now(put) is s

        plain = flow("GET", "/index.html", status=200)
        d.request(plain)
        assert d.summary_now(plain) is None and "repl" not in plain.metadata

        lost = flow("DELETE", "/c/b.EML", b"", {"If": "(<rt:2>)"})
        d.request(lost)
        lost.error = tflow.terr("peer closed connection")
        d.error(lost)
    assert lost.metadata["repl"]["error"] == "peer closed connection"
    assert lost.comment == "delete /c/b.EML: if rt:2 error: peer closed connection"


async def test_user_comment_is_kept() -> None:
    d = Decode()
    with taddons.context(d) as tctx:
        f = flow("SEARCH", "/c/", INITIAL, {}, 207, MANIFEST)
        f.comment = "mine"
        await tctx.cycle(d, f)
        assert f.comment.startswith("mine\nmanifest /c/")
        # decoding again (a recording read back) replaces our line, not the user's
        await tctx.cycle(d, f)
    assert f.comment.count("manifest /c/") == 1


async def test_error_flow_keeps_request_meaning() -> None:
    d = Decode()
    with taddons.context(d):
        f = flow("SEARCH", "/c/", INITIAL)
        f.error = None
        d.request(f)
        f.error = tflow.terr("peer closed connection")
        d.error(f)
    assert f.metadata["repl"]["error"] == "peer closed connection"
    assert f.metadata["repl"]["response"] is None
    assert d.pending == {}


async def test_undecodable_response_is_marked_not_raised() -> None:
    d = Decode()
    with taddons.context(d) as tctx:
        f = flow("SEARCH", "/c/", INITIAL, {}, 207, b"<a:multistatus xmlns:a='DAV:'><a:resp")
        assert f.response is not None
        f.response.headers["Content-Length"] = "500"  # the server promised more than it sent
        await tctx.cycle(d, f)
    u = f.metadata["repl"]["response"]["undecodable"]
    assert u["reason"] == "truncated"
    assert "not decoded (truncated)" in f.comment


async def test_gzip_body_is_decoded_and_left_compressed() -> None:
    d = Decode()
    with taddons.context(d) as tctx:
        f = flow("SEARCH", "/c/", INITIAL, {}, 207, b"", {"Content-Encoding": "gzip"})
        assert f.response is not None
        f.response.content = MANIFEST  # encodes with gzip, as the server sent it
        raw_before = f.response.raw_content
        await tctx.cycle(d, f)
    assert f.metadata["repl"]["response"]["changes"]["new"] == 1
    assert f.response.raw_content == raw_before


async def test_filter_option_limits_decoding() -> None:
    d = Decode()
    with taddons.context(d) as tctx:
        tctx.configure(d, repl_filter="~u Calendar")
        f = flow("SEARCH", "/exchange/alice/Inbox/", INITIAL, {}, 207, MANIFEST)
        await tctx.cycle(d, f)
        assert "repl" not in f.metadata


def test_bad_options_are_refused_clearly() -> None:
    d = Decode()
    with taddons.context(d) as tctx:
        with pytest.raises(exceptions.OptionsError, match="repl_filter"):
            tctx.configure(d, repl_filter="~q ~~~ (")
        with pytest.raises(exceptions.OptionsError, match="repl_max_body"):
            tctx.configure(d, repl_max_body=0)


async def test_body_over_the_limit_is_not_decoded() -> None:
    d = Decode()
    with taddons.context(d) as tctx:
        tctx.configure(d, repl_max_body=100)
        f = flow("SEARCH", "/c/", INITIAL, {}, 207, MANIFEST)
        await tctx.cycle(d, f)
    # the request itself is over 100 bytes: nothing can be said, so the flow is not a manifest
    assert "repl" not in f.metadata or f.metadata["repl"]["request"].get("undecodable")


async def test_refresh_after_another_addon_changed_the_answer() -> None:
    d = Decode()
    with taddons.context(d) as tctx:
        f = flow("SEARCH", "/c/", INITIAL, {}, 207, MANIFEST)
        await tctx.cycle(d, f)
        assert f.metadata["repl"]["response"]["changes"]["new"] == 1
        assert f.response is not None
        f.response.content = MANIFEST.replace(b">new<", b">change<")
        d.refresh(f)
    assert f.metadata["repl"]["response"]["changes"] == {"new": 0, "change": 1, "delete": 1}
    assert f.comment.count("manifest /c/") == 1


async def test_the_worker_threshold_counts_a_compressed_answer_unzipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gzip answer under the threshold on the wire can be ten times over it decoded: what
    holds the event loop is the decoded size."""
    import threading

    from repltap.mitm import decode as decode_mod

    f = flow("SEARCH", "/exchange/alice/Inbox/", INITIAL, {}, 207, MANIFEST)
    assert f.response is not None
    f.response.headers["Content-Type"] = "text/xml"
    f.response.encode("gzip")
    assert f.response.raw_content is not None and len(f.response.raw_content) < len(MANIFEST)
    monkeypatch.setattr(decode_mod, "THREAD_ABOVE", len(f.response.raw_content))
    decode_response = decode_mod.protocol.decode_response
    seen: list[str] = []

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(threading.current_thread().name)
        return decode_response(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(decode_mod.protocol, "decode_response", spy)
    d = Decode()
    with taddons.context(d) as tctx:
        await tctx.cycle(d, f)
        assert len(seen) == 1 and seen[0].startswith("repltap-decode")
        assert f.metadata["repl"]["response"]["changes"] == {"new": 1, "change": 0, "delete": 1}
        d.done()


async def test_large_answers_are_decoded_on_a_worker_thread_while_the_proxy_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    import threading

    from repltap.mitm import decode as decode_mod

    def manifest_flow() -> http.HTTPFlow:
        return flow(
            "SEARCH",
            "/exchange/alice/Inbox/",
            INITIAL,
            {},
            207,
            MANIFEST,
            {"Content-Type": "text/xml"},
        )

    d = Decode()
    with taddons.context(d) as tctx:
        inline = manifest_flow()
        await tctx.cycle(d, inline)  # small: decoded on the proxy's thread
        assert d.pool is None

        monkeypatch.setattr(decode_mod, "THREAD_ABOVE", 0)
        decode_response = decode_mod.protocol.decode_response
        seen: list[str] = []
        loop_ran = threading.Event()

        def on_worker(*args: object, **kwargs: object) -> object:
            seen.append(threading.current_thread().name)
            # Only the event loop, free while this runs, can set it.
            assert loop_ran.wait(10), "the event loop was blocked during the decode"
            return decode_response(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(decode_mod.protocol, "decode_response", on_worker)

        async def meanwhile() -> None:
            await asyncio.sleep(0)
            loop_ran.set()

        threaded = manifest_flow()
        await asyncio.gather(tctx.cycle(d, threaded), meanwhile())
        assert len(seen) == 1 and seen[0].startswith("repltap-decode")
        assert threaded.metadata["repl"] == inline.metadata["repl"]
        assert threaded.comment == inline.comment
        d.done()
        assert d.pool is None
