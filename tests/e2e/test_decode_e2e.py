"""End to end: a real ``mitmdump -s addons/repl.py`` in reverse mode in front of a canned
Exchange-style server (tests/harness/canned.py) answering with the raw vectors of
tests/vectors/exchange. Peer: the canned server, which replays the spec's messages byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mitmproxy import io

from tests.harness.canned import CannedServer, RawResponse
from tests.harness.mitm import raw_exchange, split_response, start_mitmdump
from tests.vectors.load import load_pair, stems

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "addons" / "repl.py")


def _canned() -> CannedServer:
    """A server that answers each vector's request (picked by the X-Canned header)."""
    by_key = {}
    for stem in stems():
        _, rs = load_pair(stem)
        by_key[stem] = RawResponse(rs.status, rs.reason, list(rs.headers), rs.body)
    return CannedServer(by_key=by_key)


def _request_bytes(stem: str, port: int) -> bytes:
    rq, _ = load_pair(stem)
    head, sep, body = rq.to_bytes().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    lines = [
        f"Host: 127.0.0.1:{port}".encode() if line.lower().startswith(b"host:") else line
        for line in lines
    ]
    lines.insert(1, f"X-Canned: {stem}".encode())
    return b"\r\n".join(lines) + sep + body


def _run_all(
    up: CannedServer, proxy_args: list[str], confdir: str
) -> tuple[list[bytes], list[bytes], str]:
    """Send every vector through a fresh mitmdump; return (client got, server got, output)."""
    first = len(up.received)
    m = start_mitmdump(
        "--mode",
        f"reverse:{up.url}",
        "--set",
        "connection_strategy=lazy",
        *proxy_args,
        confdir=confdir,
    )
    try:
        got = [raw_exchange(m.port, _request_bytes(stem, m.port)) for stem in stems()]
    finally:
        rc = m.stop()
    assert rc == 0, m.output()
    return got, list(up.received[first:]), m.output()


def test_decoded_metadata_in_the_flow_file(mitm_confdir: str, tmp_path: Path) -> None:
    rec = tmp_path / "rec.mitm"
    with _canned() as up:
        _run_all(up, ["-s", SCRIPT, "-w", str(rec), "--flow-detail", "0"], mitm_confdir)
    with rec.open("rb") as fo:
        flows = {f.request.headers["X-Canned"]: f for f in io.FlowReader(fo).stream()}
    assert set(flows) == set(stems())

    s = flows["01-initial-selfclosing"].metadata["repl"]
    assert s["kind"] == "manifest" and s["collection"] == "/exchange/alice/Inbox/"
    assert s["request"]["initial"] is True
    assert s["response"]["changes"] == {"new": 2, "change": 0, "delete": 0}
    assert s["upstream"].startswith("127.0.0.1:")
    assert flows["01-initial-selfclosing"].comment.startswith(
        "manifest /exchange/alice/Inbox/: collblob ∅ → toCT"
    )

    s = flows["05-updated-mixed"].metadata["repl"]
    assert s["response"]["changes"] == {"new": 1, "change": 2, "delete": 2}
    assert s["request"]["token"] and s["response"]["token"] != s["request"]["token"]

    assert flows["07-no-changes"].metadata["repl"]["response"]["no_changes"] is True
    assert flows["08-invalid-collblob"].metadata["repl"]["response"]["invalid_token"] is True
    cr = flows["09-range-page"].metadata["repl"]["response"]["content_range"]
    assert cr == {"first": 0, "last": 99, "total": 350}
    put = flows["11-put-conditional-412"].metadata["repl"]
    assert put["kind"] == "upload" and put["response"]["status"] == 412
    assert put["request"]["condition"]["tags"][0].startswith("rt:")
    created = flows["12-put-create"].metadata["repl"]["response"]
    assert created["tag"].startswith("rt:") and created["uid"].startswith("rid:")
    ns = flows["26-https-namespace"].metadata["repl"]["request"]["nonstandard_ns"]
    assert ns == ["https://schemas.microsoft.com/repl/"]


def test_the_addon_changes_no_byte(mitm_confdir: str, tmp_path: Path) -> None:
    with _canned() as up:  # one server, so the rewritten Host header is the same in both runs
        bare_client, bare_server, _ = _run_all(up, ["--flow-detail", "0"], mitm_confdir)
        with_client, with_server, _ = _run_all(
            up, ["-s", SCRIPT, "--flow-detail", "0"], mitm_confdir
        )
    assert len(with_client) == len(stems())
    # What the server received and what the client received are identical with and without
    # repltap, byte for byte, for every vector (the canned server sends no Date header).
    assert with_server == bare_server
    assert with_client == bare_client
    # and the answers are the vectors' own bodies
    for stem, raw in zip(stems(), with_client, strict=True):
        status, _, body = split_response(raw)
        _, rs = load_pair(stem)
        assert (status, body) == (rs.status, rs.body)


def test_flow_detail_shows_the_contentview(mitm_confdir: str, tmp_path: Path) -> None:
    with _canned() as up:
        _, _, out = _run_all(up, ["-s", SCRIPT, "--flow-detail", "3"], mitm_confdir)
    assert "== WebDAV replication (exchange): manifest /exchange/alice/Inbox/" in out
    assert "collblob sent: (none: initial sync, empty-element)" in out
    assert "changetype  href" in out
    assert "Traceback" not in out and "Addon error" not in out
