"""Cache hit: a manifest answered from repltap's cache, against the same manifest fetched from
the reference server, both through a real ``mitmdump -s addons/repl.py``.

Two mitmdumps with the whole suite run side by side in front of one reference server (in this
process's thread): one with the cache in ``observe`` mode (every request goes to the server:
the baseline), one in ``serve`` mode (every request after the first is a hit). The client sends
the same initial-sync manifest of a collection of ``items`` messages to each in turn, on one
keep-alive connection per proxy, and times request to last byte (wall clock: the work is in
other processes). The figure is the ratio of the medians; rounds alternate so drift on a shared
machine hits both alike.
"""

from __future__ import annotations

import http.client
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.harness.mitm import MitmProc, start_mitmdump

from repltap.sim.client import build_sql, manifest_body
from repltap.sim.server import ReplServer, Settings, stop_server
from repltap.sim.store import Store

SCRIPT = str(Path(__file__).resolve().parents[1] / "addons" / "repl.py")
COLLECTION = "/exchange/bench/Inbox/"


def _seed(items: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"path": "/exchange/bench/"}, {"path": COLLECTION}]
    for i in range(items):
        body = f"Subject: Message {i}\r\nFrom: Bob <bob@example.com>\r\n\r\nHello number {i}.\r\n"
        out.append({"path": f"{COLLECTION}Message-{i:05d}.EML", "content": body.encode()})
    return out


def _proxy(upstream: str, tmp: Path, mode: str) -> MitmProc:
    return start_mitmdump(
        "--mode", f"reverse:{upstream}",
        "--set", "connection_strategy=lazy",
        "-s", SCRIPT,
        "--set", f"repl_cache={tmp / (mode + '.db')}",
        "--set", f"repl_cache_mode={mode}",
        "--flow-detail", "0",
        confdir=tmp / "conf",
    )  # fmt: skip


Reply = tuple[float, http.client.HTTPResponse, bytes]


def _fetch(conn: http.client.HTTPConnection, body: bytes) -> Reply:
    """(seconds from sending to the last byte, the response, its body)."""
    headers = {"Content-Type": "text/xml", "Translate": "f"}
    t = time.perf_counter()
    conn.request("SEARCH", COLLECTION, body, headers)
    resp = conn.getresponse()
    data = resp.read()
    return time.perf_counter() - t, resp, data


def run(items: int = 5_000, rounds: int = 15) -> dict[str, Any]:
    """Time a cache hit against the server's answer through the proxy; returns the figures."""
    with tempfile.TemporaryDirectory(prefix="repltap-bench-cache-") as d:
        tmp = Path(d)
        store, _ = Store.open(tmp / "data", _seed(items), fsync=False)
        server = ReplServer(("127.0.0.1", 0), store, Settings(), quiet=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
        thread.start()
        proxies: list[MitmProc] = []
        try:
            proxies = [_proxy(server.url, tmp, "observe"), _proxy(server.url, tmp, "serve")]
            via_server, via_cache = (
                http.client.HTTPConnection("127.0.0.1", p.port, timeout=60) for p in proxies
            )
            body = manifest_body(build_sql(COLLECTION), None, [])
            # Warm-up; the first request to the serve-mode proxy is its miss and store.
            _, r0, fresh = _fetch(via_server, body)
            _, _, first = _fetch(via_cache, body)
            assert r0.status == 207 and fresh.count(b"repl-uid>") == 2 * items, "not a full listing"
            base: list[float] = []
            hits: list[float] = []
            for _ in range(rounds):
                t, r, data = _fetch(via_server, body)
                assert r.status == 207 and r.getheader("Age") is None
                base.append(t)
                t, r, data = _fetch(via_cache, body)
                assert r.status == 207 and r.getheader("Age") is not None, "not a cache hit"
                assert data == first  # the very answer the server gave
                hits.append(t)
            via_server.close()
            via_cache.close()
        finally:
            for p in proxies:
                p.stop()
            stop_server(server, thread)
    b, h = statistics.median(base), statistics.median(hits)
    return {
        "name": f"cache hit, {items:,}-item manifest",
        "bytes": len(first),
        "baseline": "same manifest from the server via the proxy",
        "baseline_s": b,
        "repltap_s": h,
        "ratio": b / h,
        "target": ">= 5.0",
        "ok": b / h >= 5.0,
    }


if __name__ == "__main__":
    r = run()
    print(
        f"{r['name']}: server {r['baseline_s'] * 1000:.1f} ms, hit {r['repltap_s'] * 1000:.1f} ms"
    )
    print(f"{r['ratio']:.1f}x faster ({r['bytes']:,} bytes)")
