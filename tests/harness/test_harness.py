"""Self-test of the e2e harness: canned upstream, real mitmdump and mitmweb."""

from __future__ import annotations

import ssl
import urllib.request
from pathlib import Path

import pytest

from .canned import CannedServer, RawResponse
from .mitm import find_exe, raw_exchange, split_response, start_mitmdump, start_mitmweb

pytestmark = pytest.mark.e2e  # real mitmdump/mitmweb processes and servers on loopback

XML = b'<?xml version="1.0"?>\r\n<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
MULTISTATUS = RawResponse(
    207,
    "Multi-Status",
    [("Content-Type", 'text/xml; charset="utf-8"'), ("X-Weird-Case", "  kept  ")],
    b'<?xml version="1.0"?><a:multistatus xmlns:a="DAV:"/>',
)


def propfind(host: str, path: str, body: bytes = XML, target: str | None = None) -> bytes:
    return (
        f"PROPFIND {target or path} HTTP/1.1\r\nHost: {host}\r\nDepth: 1\r\n"
        f"Content-Type: text/xml\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_find_exe() -> None:
    assert Path(find_exe("mitmdump")).name == "mitmdump"


def test_canned_direct_byte_exact() -> None:
    with CannedServer() as up:
        up.route(
            "PROPFIND",
            "/exchange/u/Inbox/",
            MULTISTATUS,
            RawResponse(204, "No Content", [], b""),
        )
        up.by_key["teapot"] = RawResponse(418, "I'm a teapot", [("X-A", "1"), ("x-a", "2")], b"tea")
        req = propfind(f"127.0.0.1:{up.port}", "/exchange/u/Inbox/")

        raw = raw_exchange(up.port, req)
        assert raw == (
            b"HTTP/1.1 207 Multi-Status\r\n"
            b'Content-Type: text/xml; charset="utf-8"\r\n'
            b"X-Weird-Case:   kept  \r\n"
            b"Content-Length: 52\r\n\r\n" + MULTISTATUS.body
        )
        assert up.received == [req]
        assert up.requests[0].body == XML

        # Later requests get the last response of the sequence; 204 gets no Content-Length.
        assert raw_exchange(up.port, req) == b"HTTP/1.1 204 No Content\r\n\r\n"
        assert raw_exchange(up.port, req) == b"HTTP/1.1 204 No Content\r\n\r\n"

        # X-Canned overrides the route; a chunked request body is recorded raw and parsed.
        chunked = (
            b"SEARCH /x HTTP/1.1\r\nHost: h\r\nX-Canned: teapot\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        status, headers, body = split_response(raw_exchange(up.port, chunked))
        assert (status, headers, body) == (
            418,
            [("X-A", "1"), ("x-a", "2"), ("Content-Length", "3")],
            b"tea",
        )
        assert up.received[-1] == chunked and up.requests[-1].body == b"abc"

        status, _, body = split_response(
            raw_exchange(up.port, b"MKCOL /nope HTTP/1.1\r\nHost: h\r\n\r\n")
        )
        assert status == 404 and b"MKCOL /nope" in body

        # A pre-framed chunked body is sent as-is; HEAD gets the head only (no waiting).
        up.route(
            "GET",
            "/c",
            RawResponse(200, "OK", [("Transfer-Encoding", "chunked")], b"2\r\nhi\r\n0\r\n\r\n"),
        )
        up.route("HEAD", "/c", RawResponse(200, "OK", [], b"hidden"))
        raw = raw_exchange(up.port, b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n")
        assert raw.endswith(b"\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
        assert split_response(raw)[2] == b"hi"
        raw = raw_exchange(up.port, b"HEAD /c HTTP/1.1\r\nHost: h\r\n\r\n", timeout=2)
        assert raw == b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"


def test_start_failure_reports_output(mitm_confdir: str) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)exited early.*unknown mode"):
        start_mitmdump("--mode", "bogus:xx", confdir=mitm_confdir)


def test_reverse_proxy(mitm_confdir: str) -> None:
    with CannedServer() as up:
        up.route("PROPFIND", "/exchange/u/Inbox/", MULTISTATUS)
        with start_mitmdump(
            "--mode", f"reverse:{up.url}", "--set", "connection_strategy=lazy",
            "--flow-detail", "0", confdir=mitm_confdir,
        ) as mitm:  # fmt: skip
            raw = raw_exchange(mitm.port, propfind(f"127.0.0.1:{mitm.port}", "/exchange/u/Inbox/"))
            status, headers, body = split_response(raw)
        assert status == 207 and body == MULTISTATUS.body
        assert ("X-Weird-Case", "kept") in headers
        [got] = up.requests
        assert (got.method, got.target, got.body) == (
            "PROPFIND",
            "/exchange/u/Inbox/",
            XML,
        )
        assert got.raw.endswith(b"\r\n\r\n" + XML)


def test_regular_proxy_absolute_form(mitm_confdir: str) -> None:
    with CannedServer() as up:
        up.route(
            "GET",
            "/public/a.eml",
            RawResponse(200, "OK", [("Content-Type", "message/rfc822")], b"Subject: x\r\n\r\nhi"),
        )
        with start_mitmdump(
            "--mode", "regular", "--flow-detail", "0", confdir=mitm_confdir
        ) as mitm:
            req = (
                f"GET {up.url}/public/a.eml HTTP/1.1\r\nHost: 127.0.0.1:{up.port}\r\n\r\n".encode()
            )
            status, _, body = split_response(raw_exchange(mitm.port, req))
        assert (status, body) == (200, b"Subject: x\r\n\r\nhi")
        # mitmproxy restores the origin-form before forwarding.
        assert up.received[0].startswith(b"GET /public/a.eml HTTP/1.1\r\n")


def test_reverse_https_upstream(mitm_confdir: str) -> None:
    with CannedServer(tls=True) as up:
        up.route("PROPFIND", "/exchange/u/", MULTISTATUS)
        # The canned certificate is its own trust anchor.
        assert up.cert_file
        with urllib.request.urlopen(
            urllib.request.Request(f"{up.url}/exchange/u/", data=XML, method="PROPFIND"),
            context=ssl.create_default_context(cafile=up.cert_file),
            timeout=10,
        ) as r:
            assert r.status == 207
        with start_mitmdump(
            "--mode", f"reverse:{up.url}", "--ssl-insecure", "--set", "connection_strategy=lazy",
            "--flow-detail", "0", confdir=mitm_confdir,
        ) as mitm:  # fmt: skip
            status, _, body = split_response(raw_exchange(mitm.port, propfind("x", "/exchange/u/")))
        assert (status, body) == (207, MULTISTATUS.body)
        assert [r.body for r in up.requests] == [XML, XML]


def test_mitmweb_api(mitm_confdir: str) -> None:
    with CannedServer() as up:
        up.route("GET", "/", RawResponse(200, "OK", [], b"root"))
        with start_mitmweb(
            "--mode",
            f"reverse:{up.url}",
            "--set",
            "connection_strategy=lazy",
            confdir=mitm_confdir,
        ) as web:
            assert len(web.token) == 32
            status, state = web.api("GET", "/state")
            assert status == 200 and "version" in state
            assert (
                split_response(raw_exchange(web.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))[2]
                == b"root"
            )
            status, flows = web.api("GET", "/flows")
            assert status == 200 and len(flows) == 1
            # A POST exercises the XSRF double-submit cookie.
            assert web.api("POST", "/clear")[0] == 200
            assert web.api("GET", "/flows") == (200, [])
