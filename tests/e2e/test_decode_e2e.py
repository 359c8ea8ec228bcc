"""End to end: a real ``mitmdump -s addons/repl.py`` in reverse mode in front of a canned
Exchange-style server (tests/harness/canned.py) answering with the raw vectors of
tests/vectors/exchange. Peer: the canned server, which replays the spec's messages byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mitmproxy import io

from tests.harness.mitm import split_response
from tests.harness.vectors import send_all_vectors, vector_server
from tests.vectors.load import load_pair, stems

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "addons" / "repl.py")


def test_decoded_metadata_in_the_flow_file(mitm_confdir: str, tmp_path: Path) -> None:
    rec = tmp_path / "rec.mitm"
    with vector_server() as up:
        send_all_vectors(up, ["-s", SCRIPT, "-w", str(rec), "--flow-detail", "0"], mitm_confdir)
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
    with vector_server() as up:  # one server, so the rewritten Host header is the same in both runs
        bare_client, bare_server, _ = send_all_vectors(up, ["--flow-detail", "0"], mitm_confdir)
        with_client, with_server, _ = send_all_vectors(
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
    with vector_server() as up:
        _, _, out = send_all_vectors(up, ["-s", SCRIPT, "--flow-detail", "3"], mitm_confdir)
    assert "== WebDAV replication (exchange): manifest /exchange/alice/Inbox/" in out
    assert "collblob sent: (none: initial sync, empty-element)" in out
    assert "changetype  href" in out
    assert "Traceback" not in out and "Addon error" not in out
