"""Durability: a real ``mitmdump -s addons/repl.py`` with the cache, killed with SIGKILL in the
middle of a busy session, restarts with an intact database that holds every answer it had
reported stored (a ``store`` event is logged only after its transaction committed)."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from repltap.cachestore import CacheStore
from repltap.sim.client import build_sql, manifest_body
from tests.cache.servers import counting_server
from tests.harness.mitm import MitmProc, start_mitmdump

pytestmark = pytest.mark.e2e

SCRIPT = str(Path(__file__).resolve().parents[2] / "addons" / "repl.py")
INBOX = "/exchange/alice/Inbox/"
BODY = manifest_body(build_sql(INBOX), None, [])
CLIENTS = 4
KILL_AFTER = 100  # stores logged before the kill


def proxy(upstream: str, tmp: Path, confdir: str, mode: str, log: str) -> MitmProc:
    return start_mitmdump(
        "--mode", f"reverse:{upstream}",
        "--set", "connection_strategy=lazy",
        "-s", SCRIPT,
        "--set", f"repl_cache={tmp / 'cache.db'}",
        "--set", f"repl_cache_mode={mode}",
        "--set", f"repl_log={tmp / log}",
        "--flow-detail", "0",
        confdir=confdir,
    )  # fmt: skip


def stores(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue  # the line being written when the process died
        if e["event"] == "cache" and e["kind"] == "store":
            out.append(e)
    return out


def search(port: int, rows: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("SEARCH", INBOX, BODY, {"Content-Type": "text/xml", "Range": f"rows={rows}"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_sigkill_mid_session_keeps_every_stored_answer(tmp_path: Path, mitm_confdir: str) -> None:
    """Peers: four raw HTTP/1.1 clients, each on a keep-alive connection, sending manifest
    requests with ever new row ranges (so every answer is a new row) through mitmdump (cache in
    observe mode) to the reference server in a thread; then mitmdump gets SIGKILL."""
    with counting_server(tmp_path / "data") as server:
        m = proxy(server.url, tmp_path, mitm_confdir, "observe", "before.jsonl")
        stop = threading.Event()
        sent = [0] * CLIENTS

        def client(n: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=10)
            i = 0
            while not stop.is_set():
                headers = {"Content-Type": "text/xml", "Range": f"rows=0-{n * 1_000_000 + i + 4}"}
                try:
                    conn.request("SEARCH", INBOX, BODY, headers)
                    conn.getresponse().read()
                except (OSError, http.client.HTTPException):
                    return  # the proxy is gone
                sent[n] += 1
                i += 1

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(stores(tmp_path / "before.jsonl")) < KILL_AFTER:
            assert time.monotonic() < deadline, m.output()
            time.sleep(0.02)
        m.proc.send_signal(signal.SIGKILL)  # mid-session: requests are in flight on 4 connections
        m.proc.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
        m.stop()
        assert m.proc.returncode == -signal.SIGKILL
        logged = {e["key"] for e in stores(tmp_path / "before.jsonl")}
        assert len(logged) >= KILL_AFTER and sum(sent) >= KILL_AFTER
        assert (tmp_path / "cache.db-wal").exists()  # it really did not shut down cleanly

        # Reopened, as the restarted proxy will: SQLite recovers from the WAL.
        db = CacheStore(tmp_path / "cache.db")
        try:
            assert db.integrity() == "ok"
            kept = db.answer_keys()
            assert logged <= kept, f"{len(logged - kept)} of {len(logged)} stored answers lost"
            # At most the answers in flight at the kill were committed but not yet logged.
            assert len(kept - logged) <= CLIENTS
            print(f"sent {sum(sent)}, logged stored {len(logged)}, in the database {len(kept)}")
            one = db.answers("127.0.0.1:" + str(server.server_address[1]), INBOX)[-1]
        finally:
            db.close()

        # The restarted proxy serves what the killed one stored, without asking the server.
        m2 = proxy(server.url, tmp_path, mitm_confdir, "serve", "after.jsonl")
        try:
            asked = server.count()
            resp = search(m2.port, one["identity"]["range"][0])
            assert resp.status == 207 and resp.getheader("Age") is not None
            assert server.count() == asked
        finally:
            code = m2.stop()
        assert code == 0, m2.output()
        assert "Addon error" not in m2.output()
