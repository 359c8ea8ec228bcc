"""Proxy overhead: a mixed replication workload through bare mitmdump and through
``mitmdump -s addons/repl.py`` with the event log on, in the same run, alternating.

The workload per client connection (keep-alive, two in parallel): conditional GETs and PUTs,
and manifests of 10, 1,000 and 10,000 entries, in a fixed interleaved order. Figures: requests
per second, median and p99 latency. Targets: at least 90% of bare mitmdump's throughput and at
most 1 ms added to the median.
"""

from __future__ import annotations

import http.client
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.harness.canned import CannedServer, RawResponse
from tests.harness.mitm import start_mitmdump

from .gen import MANIFEST_REQUEST, manifest

SCRIPT = str(Path(__file__).resolve().parents[1] / "addons" / "repl.py")
XML = [("Content-Type", "text/xml")]
# (method, path, headers, body): one round of the mix, repeated
_ROUND: list[tuple[str, str, dict[str, str], bytes]] = (
    [("GET", "/c/item.EML", {"If": "(<rt:1>)", "Translate": "f"}, b"")] * 10
    + [("PUT", "/c/item.EML", {"If": "(<rt:1>)"}, b"Subject: x\r\n\r\nbody\r\n")] * 5
    + [("SEARCH", "/m10/", {"Content-Type": "text/xml"}, MANIFEST_REQUEST)] * 4
    + [("SEARCH", "/m1000/", {"Content-Type": "text/xml"}, MANIFEST_REQUEST)] * 1
)


def _upstream() -> CannedServer:
    up = CannedServer()
    item = [("ResourceTag", "<rt:2>"), ("Repl-UID", "<rid:1>")]
    up.route(
        "GET",
        "/c/item.EML",
        RawResponse(
            200, "OK", [*item, ("Content-Type", "message/rfc822")], b"Subject: x\r\n\r\nbody\r\n"
        ),
    )
    up.route("PUT", "/c/item.EML", RawResponse(204, "No Content", item, b""))
    for n in (10, 1000, 10_000):
        up.route("SEARCH", f"/m{n}/", RawResponse(207, "Multi-Status", XML, manifest(n)))
    return up


def _client(port: int, rounds: int, big_every: int, out: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for i in range(rounds):
        plan = list(_ROUND)
        if i % big_every == 0:
            plan.append(("SEARCH", "/m10000/", {"Content-Type": "text/xml"}, MANIFEST_REQUEST))
        for method, path, headers, body in plan:
            t = time.perf_counter()
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            out.append(time.perf_counter() - t)
    conn.close()


def _run(args: list[str], confdir: str, rounds: int, big_every: int) -> dict[str, float]:
    with _upstream() as up:
        m = start_mitmdump(
            "--mode", f"reverse:{up.url}", "--flow-detail", "0", *args, confdir=confdir
        )
        try:
            lat: list[float] = []
            per: list[list[float]] = [[], []]
            threads = [
                threading.Thread(target=_client, args=(m.port, rounds, big_every, per[i]))
                for i in range(2)
            ]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t
            cpu = _cpu_seconds(m.proc.pid)
        finally:
            m.stop()
    for p in per:
        lat += p
    lat.sort()
    return {
        "rps": len(lat) / wall,
        "median_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
        "requests": len(lat),
        "cpu_ms_per_request": cpu / len(lat) * 1000,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used: what the proxy itself costs, whatever else
    the machine is running."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(rounds: int = 40, big_every: int = 10, repeats: int = 3) -> dict[str, Any]:
    """Bare mitmdump against mitmdump with repltap and its log, alternating ``repeats`` times."""
    with tempfile.TemporaryDirectory() as tmp:
        confdir = str(Path(tmp) / "conf")
        bare: list[dict[str, float]] = []
        ours: list[dict[str, float]] = []
        for i in range(repeats):
            bare.append(_run([], confdir, rounds, big_every))
            log = str(Path(tmp) / f"events-{i}.jsonl")
            ours.append(
                _run(["-s", SCRIPT, "--set", f"repl_log={log}"], confdir, rounds, big_every)
            )

    def med(rs: list[dict[str, float]], k: str) -> float:
        return statistics.median(r[k] for r in rs)

    ratio = med(ours, "rps") / med(bare, "rps")
    added = med(ours, "median_ms") - med(bare, "median_ms")
    return {
        "name": "proxy throughput, mixed workload",
        "baseline": "bare mitmdump",
        "baseline_s": 1 / med(bare, "rps"),
        "repltap_s": 1 / med(ours, "rps"),
        "ratio": ratio,
        "target": ">= 0.90",
        "ok": ratio >= 0.90 and added <= 1.0,
        "detail": {
            "requests": bare[0]["requests"],
            "bare": {k: med(bare, k) for k in ("rps", "median_ms", "p99_ms", "cpu_ms_per_request")},
            "repltap": {
                k: med(ours, k) for k in ("rps", "median_ms", "p99_ms", "cpu_ms_per_request")
            },
            "cpu_ratio": med(ours, "cpu_ms_per_request") / med(bare, "cpu_ms_per_request"),
            "median_added_ms": added,
            "target_median_added_ms": "<= 1.0",
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
