"""The event log live and offline: a real ``mitmdump -s addons/repl.py --set repl_log=...`` in
reverse mode, then ``mitmdump -nr recording -s addons/repl.py`` over what it recorded, must log
the same events (ts aside). Peer: the canned Exchange-style server (tests/harness/canned.py)
playing a session of spec vectors: initial sync, updated manifest, a conflict, a 475."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness.canned import CannedServer, RawResponse
from tests.harness.mitm import raw_exchange, run_mitmdump, start_mitmdump
from tests.vectors.load import load_pair

pytestmark = pytest.mark.e2e

SCRIPT = str(Path(__file__).resolve().parents[2] / "addons" / "repl.py")
SESSION = [
    "01-initial-selfclosing",
    "05-updated-mixed",
    "11-put-conditional-412",
    "12-put-create",
    "07-no-changes",
    "08-invalid-collblob",
    "26-https-namespace",
]


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_offline_run_logs_what_the_live_run_logged(mitm_confdir: str, tmp_path: Path) -> None:
    by_key = {}
    for stem in SESSION:
        _, rs = load_pair(stem)
        by_key[stem] = RawResponse(rs.status, rs.reason, list(rs.headers), rs.body)
    live, offline, rec = tmp_path / "live.jsonl", tmp_path / "offline.jsonl", tmp_path / "s.mitm"
    with CannedServer(by_key=by_key) as up:
        m = start_mitmdump(
            "--mode",
            f"reverse:{up.url}",
            "-s",
            SCRIPT,
            "-w",
            str(rec),
            "--set",
            f"repl_log={live}",
            "--flow-detail",
            "0",
            confdir=mitm_confdir,
        )
        try:
            for stem in SESSION:
                rq, _ = load_pair(stem)
                head, sep, body = rq.to_bytes().partition(b"\r\n\r\n")
                head = head.replace(b"Host: mail.example.com", f"Host: 127.0.0.1:{m.port}".encode())
                raw_exchange(m.port, head + f"\r\nX-Canned: {stem}".encode() + sep + body)
        finally:
            assert m.stop() == 0, m.output()
    rc, out = run_mitmdump(
        "-n",
        "-r",
        str(rec),
        "-s",
        SCRIPT,
        "--set",
        f"repl_log={offline}",
        "--flow-detail",
        "0",
        confdir=mitm_confdir,
    )
    assert rc == 0, out

    got_live, got_offline = _events(live), _events(offline)
    kinds = [e["event"] for e in got_live]
    for k in ("manifest", "token", "tag", "conflict", "invalid_token", "anomaly"):
        assert k in kinds, k
    assert {e["code"] for e in got_live if e["event"] == "anomaly"} >= {"nonstandard-namespace"}
    strip = [{k: v for k, v in e.items() if k != "ts"} for e in got_live]
    assert strip == [{k: v for k, v in e.items() if k != "ts"} for e in got_offline]
