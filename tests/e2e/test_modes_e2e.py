"""The deployments the README shows, each through a real ``mitmdump -s addons/repl.py``: reverse
mode to an HTTPS upstream, regular (forward) proxy mode over plain HTTP, and regular mode over
HTTPS with mitmproxy's CA trusted by the client; plus mitmweb showing the contentview.
Peer: the canned Exchange-style server of tests/harness/canned.py, answering with spec vectors.
"""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from mitmproxy import io

from tests.harness.canned import CannedServer, RawResponse
from tests.harness.mitm import start_mitmdump, start_mitmweb
from tests.vectors.load import load_pair

pytestmark = pytest.mark.e2e

SCRIPT = str(Path(__file__).resolve().parents[2] / "addons" / "repl.py")
STEM = "05-updated-mixed"


def _server(tls: bool = False) -> CannedServer:
    rq, rs = load_pair(STEM)
    up = CannedServer(tls=tls)
    up.route(rq.method, rq.path, RawResponse(rs.status, rs.reason, list(rs.headers), rs.body))
    return up


def _send(conn: http.client.HTTPConnection, target: str) -> tuple[int, bytes]:
    rq, _ = load_pair(STEM)
    headers = {k: v for k, v in rq.headers if k.lower() != "host"}
    conn.request(rq.method, target, body=rq.body, headers=headers)
    r = conn.getresponse()
    return r.status, r.read()


def _decoded(rec: Path) -> dict:
    with rec.open("rb") as fo:
        (flow,) = list(io.FlowReader(fo).stream())
    return flow.metadata["repl"]


def _check(s: dict, body: bytes) -> None:
    _, rs = load_pair(STEM)
    assert body == rs.body
    assert s["kind"] == "manifest" and s["collection"] == "/exchange/alice/Inbox/"
    assert s["response"]["changes"] == {"new": 1, "change": 2, "delete": 2}


def test_reverse_mode_to_https_upstream(mitm_confdir: str, tmp_path: Path) -> None:
    rec = tmp_path / "rec.mitm"
    with (
        _server(tls=True) as up,
        start_mitmdump(
            "--mode",
            f"reverse:{up.url}",
            "--ssl-insecure",
            "-s",
            SCRIPT,
            "-w",
            str(rec),
            "--flow-detail",
            "0",
            confdir=mitm_confdir,
        ) as m,
    ):
        conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=10)
        status, body = _send(conn, load_pair(STEM)[0].path)
        assert status == 207
    _check(_decoded(rec), body)
    assert _decoded(rec)["upstream"] == f"127.0.0.1:{up.port}"


def test_regular_mode_plain_http(mitm_confdir: str, tmp_path: Path) -> None:
    rec = tmp_path / "rec.mitm"
    with (
        _server() as up,
        start_mitmdump(
            "--mode",
            "regular",
            "-s",
            SCRIPT,
            "-w",
            str(rec),
            "--flow-detail",
            "0",
            confdir=mitm_confdir,
        ) as m,
    ):
        conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=10)
        status, body = _send(conn, f"{up.url}{load_pair(STEM)[0].path}")
        assert status == 207
    _check(_decoded(rec), body)


def test_regular_mode_https_with_mitmproxy_ca(mitm_confdir: str, tmp_path: Path) -> None:
    rec = tmp_path / "rec.mitm"
    with (
        _server(tls=True) as up,
        start_mitmdump(
            "--mode",
            "regular",
            "--ssl-insecure",
            "-s",
            SCRIPT,
            "-w",
            str(rec),
            "--flow-detail",
            "0",
            confdir=mitm_confdir,
        ) as m,
    ):
        # The client trusts mitmproxy's CA, written to the confdir on first start.
        ctx = ssl.create_default_context(cafile=f"{mitm_confdir}/mitmproxy-ca-cert.pem")
        conn = http.client.HTTPSConnection("127.0.0.1", m.port, timeout=10, context=ctx)
        conn.set_tunnel("127.0.0.1", up.port)
        status, body = _send(conn, load_pair(STEM)[0].path)
        assert status == 207
    _check(_decoded(rec), body)


def test_mitmweb_shows_the_contentview(mitm_confdir: str) -> None:
    with (
        _server() as up,
        start_mitmweb("--mode", f"reverse:{up.url}", "-s", SCRIPT, confdir=mitm_confdir) as web,
    ):
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
        assert _send(conn, load_pair(STEM)[0].path)[0] == 207
        status, state = web.api("GET", "/state")
        assert status == 200 and "webdav replication" in state["contentViews"]
        status, flows = web.api("GET", "/flows")
        (flow,) = flows
        assert flow["comment"].startswith("manifest /exchange/alice/Inbox/: collblob toCT")
        view = quote("webdav replication")
        status, shown = web.api("GET", f"/flows/{flow['id']}/response/content/auto.json")
        assert status == 200 and shown["view_name"] == "WebDAV Replication"
        assert "changes: 1 new, 2 change, 2 delete" in shown["text"]
        status, shown = web.api("GET", f"/flows/{flow['id']}/request/content/{view}.json")
        assert status == 200 and "collblob sent: 'toCTAA" in shown["text"]


def test_the_script_reloaded_in_place_goes_on_decoding_and_logging(
    mitm_confdir: str, tmp_path: Path
) -> None:
    """mitmproxy reloads a script whose file changes: the old suite is unloaded and a new one
    loaded under the same addon names (the Suite frees its parts' names when it is unloaded).
    Peer: the canned server answering the manifest vector."""
    copy = tmp_path / "addons"
    shutil.copytree(Path(SCRIPT).parent, copy, ignore=shutil.ignore_patterns("*.egg-info"))
    script = copy / "repl.py"
    log = tmp_path / "events.jsonl"
    with (
        _server() as up,
        start_mitmdump(
            "--mode",
            f"reverse:{up.url}",
            "-s",
            str(script),
            "--set",
            f"repl_log={log}",
            confdir=mitm_confdir,
        ) as m,
    ):
        status, _ = _send(
            http.client.HTTPConnection("127.0.0.1", m.port, timeout=30), "/exchange/alice/Inbox/"
        )
        assert status == 207
        time.sleep(1.1)  # past the file's modification time
        script.write_text(script.read_text() + "\n# changed\n")
        deadline = time.monotonic() + 20
        while sum("Loading script" in line for line in m.lines) < 2:
            assert time.monotonic() < deadline, "mitmdump did not reload the script"
            time.sleep(0.1)
        time.sleep(0.5)
        status, _ = _send(
            http.client.HTTPConnection("127.0.0.1", m.port, timeout=30), "/exchange/alice/Inbox/"
        )
        assert status == 207
    events = [json.loads(line) for line in log.read_text().splitlines()]
    manifests = [e for e in events if e["event"] == "manifest"]
    assert len(manifests) == 2  # one by the first suite, one by the reloaded one
    problems = [line for line in m.lines if "Traceback" in line or "rror" in line]
    assert problems == []
