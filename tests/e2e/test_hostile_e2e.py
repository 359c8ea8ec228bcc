"""Hostile and broken input through a real ``mitmdump -s addons/repl.py``: for each, the traffic
passes exactly as the other side sent it, the proxy stays up with bounded memory, and one clear
event in the log says what was not decoded and why. Peer: the canned server of
tests/harness/canned.py (answers as given, byte for byte), and curl for the HTTP/2 client."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import socket
import subprocess
import zlib
from pathlib import Path

import brotli
import pytest
from mitmproxy import io

from tests.harness.canned import CannedServer, RawResponse
from tests.harness.mitm import raw_exchange, split_response, start_mitmdump

pytestmark = pytest.mark.e2e

SCRIPT = str(Path(__file__).resolve().parents[2] / "addons" / "repl.py")
NS = 'xmlns:D="DAV:" xmlns:R="http://schemas.microsoft.com/repl/"'
MANIFEST_REQ = (
    f"<D:searchrequest {NS}><R:repl><R:collblob>T1</R:collblob></R:repl></D:searchrequest>"
).encode()
GOOD = (
    f"<D:multistatus {NS}><R:repl><R:collblob>T2</R:collblob></R:repl><D:response>"
    "<D:href>/c/a.EML</D:href><D:propstat><D:status>HTTP/1.1 200 OK</D:status><D:prop>"
    "<R:resourcetag>rt:1</R:resourcetag><R:repl-uid>rid:1</R:repl-uid></D:prop></D:propstat>"
    "<R:changetype>new</R:changetype></D:response></D:multistatus>"
).encode()
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "lol">'
    + b"".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(9)
    )
    + f"]><D:multistatus {NS}><D:response><D:href>&j;</D:href></D:response>".encode()
    + b"</D:multistatus>"
)
QUADRATIC = (
    b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "'
    + b"x" * 100_000
    + f'">]><D:multistatus {NS}>'.encode()
    + b"&a;" * 20_000
    + b"</D:multistatus>"
)
XML = [("Content-Type", "text/xml")]
BIG = 200 * 1024 * 1024


def _xxe(target: str) -> bytes:
    return (
        f'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "{target}">]>'
        f"<D:multistatus {NS}><D:response><D:href>&x;</D:href></D:response></D:multistatus>"
    ).encode()


def _chunked(body: bytes, size: int = 1000) -> bytes:
    parts = [
        f"{len(body[i : i + size]):x}\r\n".encode() + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def _request(path: str, case: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"SEARCH {path} HTTP/1.1\r\nHost: x\r\nX-Case: {case}\r\nContent-Type: text/xml\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("secret") / "secret.txt"
    p.write_text("TOP-SECRET-CONTENT")
    return p


def test_hostile_input(mitm_confdir: str, tmp_path: Path, secret: Path) -> None:
    big = f"<D:multistatus {NS}>".encode() + b"<!--" + b"x" * BIG + b"-->" + b"</D:multistatus>"
    deep = b"<D:multistatus " + NS.encode() + b">" + b"<a>" * 10_000 + b"</a>" * 10_000
    deep += b"</D:multistatus>"
    with CannedServer() as up:
        answers: dict[str, tuple[RawResponse, str | None]] = {
            # case: (what the server answers, the reason the log must give, None = decoded)
            "billion-laughs": (RawResponse(207, "Multi-Status", XML, LAUGHS), "dtd-forbidden"),
            "quadratic": (RawResponse(207, "Multi-Status", XML, QUADRATIC), "dtd-forbidden"),
            "xxe-file": (
                RawResponse(207, "Multi-Status", XML, _xxe(f"file://{secret}")),
                "dtd-forbidden",
            ),
            "xxe-url": (
                RawResponse(207, "Multi-Status", XML, _xxe(f"{up.url}/leak")),
                "dtd-forbidden",
            ),
            "dtd": (
                RawResponse(
                    207,
                    "Multi-Status",
                    XML,
                    b'<!DOCTYPE m SYSTEM "' + up.url.encode() + b'/dtd">' + GOOD,
                ),
                "dtd-forbidden",
            ),
            "deep": (RawResponse(207, "Multi-Status", XML, deep), "too-deep"),
            "200mb": (RawResponse(207, "Multi-Status", XML, big), "too-large"),
            "bad-utf8": (
                RawResponse(207, "Multi-Status", XML, GOOD.replace(b"rt:1", b"rt:\xff\xfe")),
                "invalid-encoding",
            ),
            "lying-decl": (
                RawResponse(
                    207, "Multi-Status", XML, b'<?xml version="1.0" encoding="utf-16"?>' + GOOD
                ),
                "*",
            ),
            "lying-header": (
                RawResponse(
                    207,
                    "Multi-Status",
                    [("Content-Type", "text/xml; charset=iso-8859-1")],
                    GOOD.replace(b"rt:1", "rt:é".encode()),
                ),
                None,
            ),
            "gzip": (
                RawResponse(
                    207, "Multi-Status", [*XML, ("Content-Encoding", "gzip")], gzip.compress(GOOD)
                ),
                None,
            ),
            "deflate": (
                RawResponse(
                    207,
                    "Multi-Status",
                    [*XML, ("Content-Encoding", "deflate")],
                    zlib.compress(GOOD),
                ),
                None,
            ),
            "br": (
                RawResponse(
                    207, "Multi-Status", [*XML, ("Content-Encoding", "br")], brotli.compress(GOOD)
                ),
                None,
            ),
            "chunked": (
                RawResponse(
                    207, "Multi-Status", [*XML, ("Transfer-Encoding", "chunked")], _chunked(GOOD)
                ),
                None,
            ),
            "bad-content-range": (
                RawResponse(
                    207, "Multi-Status", [*XML, ("Content-Range", "rows 9-1; total=x")], GOOD
                ),
                "Content-Range header not read",
            ),
        }
        up.by_key = {k: v[0] for k, v in answers.items()}
        for k in ("bad-range", "absurd-range", "bad-if", "token-1mb"):
            up.by_key[k] = RawResponse(207, "Multi-Status", XML, GOOD)
        up.by_key["cut"] = RawResponse(
            207,
            "Multi-Status",
            [*XML, ("Content-Length", "5000"), ("Connection", "close")],
            GOOD[:100],
        )
        log, rec = tmp_path / "events.jsonl", tmp_path / "rec.mitm"
        m = start_mitmdump(
            "--mode",
            f"reverse:{up.url}",
            "-s",
            SCRIPT,
            "--set",
            f"repl_log={log}",
            "-w",
            str(rec),
            "--flow-detail",
            "0",
            confdir=mitm_confdir,
        )
        try:
            got: dict[str, bytes] = {}
            for case in answers:
                req = _request("/c/", case, MANIFEST_REQ).replace(
                    b"X-Case:", b"X-Canned: " + case.encode() + b"\r\nX-Case:"
                )
                if case == "200mb":
                    big_status, big_digest = _fetch_big(m.port, req)
                    continue
                got[case] = raw_exchange(m.port, req, timeout=60)
            extra = {
                "bad-range": ("Range: rows=9-1\r\n", MANIFEST_REQ, "Range header not read"),
                "absurd-range": ("Range: rows=0-" + "9" * 40 + "\r\n", MANIFEST_REQ, "absurd"),
                "bad-if": ("If: (<rt:1>\r\n", MANIFEST_REQ, "If header not read"),
                "token-1mb": ("", MANIFEST_REQ.replace(b">T1<", b">" + b"T" * 2**20 + b"<"), None),
                "cut": ("", MANIFEST_REQ, "never arrived whole"),
            }
            for case, (hdr, body, _) in extra.items():
                req = _request("/c/", case, body, hdr)
                got[case] = raw_exchange(
                    m.port,
                    req.replace(b"X-Case:", b"X-Canned: " + case.encode() + b"\r\nX-Case:"),
                    timeout=30,
                )
            # the proxy is still up and decoding
            after = raw_exchange(
                m.port,
                _request("/c/", "after", MANIFEST_REQ).replace(
                    b"X-Case:", b"X-Canned: gzip\r\nX-Case:"
                ),
            )
            assert split_response(after)[0] == 207
            peak = _peak_rss(m.proc.pid)
        finally:
            assert m.stop() == 0, m.output()[-3000:]

    # what the client received is what the server sent, byte for byte (bodies de-chunked)
    assert (big_status, big_digest) == (207, hashlib.sha256(big).digest())
    for case, (sent, _) in answers.items():
        if case == "200mb":
            continue
        status, _, body = split_response(got[case])
        want = sent.body if case != "chunked" else GOOD
        assert status == sent.status, case
        assert hashlib.sha256(body).digest() == hashlib.sha256(want).digest(), case
    # what the server received is what the client sent (requests carry their own case header)
    received = {r.header("X-Case"): r for r in up.requests}
    assert received["token-1mb"].body.count(b"T") >= 2**20
    assert received["bad-if"].header("If") == "(<rt:1>"
    assert not any(r.target in ("/leak", "/dtd") for r in up.requests)  # nothing was fetched
    # mitmproxy's own answer to a cut-off body is a 502 (with or without repltap)
    assert split_response(got["cut"])[0] == 502

    # memory stays bounded: the 200 MB answer costs mitmproxy's buffering, not a parse
    assert peak < 3 * BIG + 300 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB"

    # one clear event per case says what was not decoded and why
    with rec.open("rb") as fo:
        case_of = {f.id: f.request.headers.get("X-Case") for f in io.FlowReader(fo).stream()}
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert "TOP-SECRET-CONTENT" not in log.read_text()
    why: dict[str, list[str]] = {}
    for e in events:
        if e["event"] == "anomaly" and e["code"] in ("undecodable", "malformed-header"):
            why.setdefault(case_of[e["flow"]], []).append(e["detail"])
    expected = {case: reason for case, (_, reason) in answers.items()}
    expected.update({case: reason for case, (_, _, reason) in extra.items()})
    for case, reason in expected.items():
        if reason is None:
            assert case not in why, (case, why.get(case))
        else:
            assert len(why.get(case, [])) == 1, (case, why.get(case))
            assert reason == "*" or reason in why[case][0], (case, why[case])
    decoded = [
        e
        for e in events
        if e["event"] == "manifest"
        and case_of[e["flow"]] in ("gzip", "deflate", "br", "chunked", "lying-header", "token-1mb")
    ]
    assert {case_of[e["flow"]] for e in decoded} >= {
        "gzip",
        "deflate",
        "br",
        "chunked",
        "lying-header",
        "token-1mb",
    }
    assert all(e["changes"]["new"] == 1 for e in decoded)


def _fetch_big(port: int, request: bytes) -> tuple[int, bytes]:
    """Send a request and hash its (Content-Length framed) answer as it streams in."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(request)
        f = s.makefile("rb")
        status = int(f.readline().split()[1])
        length = 0
        while (line := f.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        digest = hashlib.sha256()
        while length > 0:
            chunk = f.read(min(length, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            length -= len(chunk)
        return status, digest.digest()


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_http2_client(mitm_confdir: str, tmp_path: Path) -> None:
    """An HTTP/2 client (curl over TLS with ALPN h2) in front of an HTTP/1.1 upstream."""
    curl = shutil.which("curl")
    assert curl, "curl (with HTTP/2) is needed for this test"
    rec = tmp_path / "rec.mitm"
    with CannedServer() as up:
        up.route("SEARCH", "/c/", RawResponse(207, "Multi-Status", XML, GOOD))
        with start_mitmdump(
            "--mode",
            f"reverse:{up.url}",
            "-s",
            SCRIPT,
            "-w",
            str(rec),
            "--flow-detail",
            "0",
            confdir=mitm_confdir,
        ) as m:
            p = subprocess.run(
                [
                    curl,
                    "-sS",
                    "--http2",
                    "-k",
                    "-X",
                    "SEARCH",
                    "-H",
                    "Content-Type: text/xml",
                    "--data-binary",
                    MANIFEST_REQ.decode(),
                    "-D",
                    "-",
                    f"https://127.0.0.1:{m.port}/c/",
                ],
                capture_output=True,
                timeout=30,
            )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(b"HTTP/2 207"), p.stdout[:200]
    assert p.stdout.endswith(GOOD)
    with rec.open("rb") as fo:
        (flow,) = list(io.FlowReader(fo).stream())
    assert flow.request.http_version == "HTTP/2.0"
    s = flow.metadata["repl"]
    assert s["kind"] == "manifest" and s["response"]["changes"]["new"] == 1
