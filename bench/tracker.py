"""Tracking cost and tracker memory.

- cost: ``Tracker.observe`` on the summary of a decoded 10,000-entry manifest (every entry new
  to the tracker, as in an initial sync), as a fraction of decoding the same manifest;
- memory: the resident size the tracker's state adds for 1,000,000 resources, measured in a
  child process (peak RSS after, minus before), with the manifests' own data freed as it goes;
- retention: a long soak-like stream (tests/tracker/stream.py: three Exchange clients and a
  CalDAV client, items created, changed, renamed and deleted, conflicts, 475s, an anomaly every
  round), 20,000 rounds by default: what the tracker holds (tracemalloc, and the process's
  RSS) after each third. Not in ``make bench``; ``python -m bench.tracker`` runs all three.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from repltap.protocol import exchange
from repltap.summary import summarise
from repltap.tracker import Tracker

from .decode import ab
from .gen import MANIFEST_REQUEST, manifest


def _all_new(body: bytes) -> bytes:
    return body.replace(b">change<", b">new<").replace(b">delete<", b">new<")


def cost(entries: int = 10_000, rounds: int = 21) -> dict[str, Any]:
    """Tracking a manifest against decoding it."""
    body = _all_new(manifest(entries))
    req = exchange.decode_request("SEARCH", "/exchange/alice/Inbox/", {}, MANIFEST_REQUEST)

    def decode() -> object:
        return summarise(req, exchange.decode_response(req, 207, {}, body), upstream="h:80")

    s = decode()

    def track() -> object:
        return Tracker().observe_compact(s, flow="f", ts=0.0, client="c")  # type: ignore[arg-type]

    d, t = ab(decode, track, rounds)
    return {
        "name": f"track {entries:,}-entry manifest",
        "baseline": "decode of the same manifest",
        "baseline_s": d,
        "repltap_s": t,
        "ratio": t / d,
        "target": "<= 0.10",
        "ok": t / d <= 0.10,
    }


_CHILD = r"""
import json, resource, sys
from repltap.tracker import Tracker
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
n, per = int(sys.argv[1]), 10_000
t = Tracker()
before = rss()
for m in range(n // per):
    entries = [{"type": "new", "href": f"http://h/c/{m}/item-{i:07d}.EML",
                "tag": f"rt:{m:04x}{i:084x}", "uid": f"rid:{m:04x}{i:040x}"} for i in range(per)]
    s = {"v": 1, "protocol": "exchange", "kind": "manifest", "method": "SEARCH",
         "target": f"/c/{m}/", "collection": f"/c/{m}/", "upstream": "h:80",
         "request": {"token": None, "initial": True, "acknowledged": []},
         "response": {"status": 207, "manifest": True, "token": f"T{m}", "no_changes": False,
                      "changes": {"new": per, "change": 0, "delete": 0}, "entries": entries}}
    t.observe(s, flow=str(m), ts=0.0, client="c")
    del entries, s
after = rss()
print(json.dumps({"resources": sum(len(v) for v in t.resources.values()), "bytes": after - before}))
"""


def memory(resources: int = 1_000_000) -> dict[str, Any]:
    """Resident memory of the tracker's state for ``resources`` resources."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(resources)], capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout)
    assert got["resources"] == resources
    mb = got["bytes"] / 2**20
    return {
        "name": f"tracker state, {resources:,} resources",
        "baseline": "1 GiB",
        "baseline_s": None,
        "repltap_s": None,
        "value": f"{mb:,.0f} MiB",
        "ratio": got["bytes"] / 2**30,
        "target": "< 1.0",
        "ok": got["bytes"] < 2**30,
    }


_RETENTION_CHILD = r"""
import gc, json, sys, tracemalloc
from repltap.tracker import Tracker
from tests.tracker.stream import rounds

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

n, traced = int(sys.argv[1]), sys.argv[2] == "traced"
t = Tracker()
gc.collect()
if traced:
    tracemalloc.start()
base = tracemalloc.get_traced_memory()[0] if traced else rss()
marks = []
for k, (s, client) in enumerate(rounds(n)):
    t.observe(s, flow=f"f{k}", ts=float(k), client=client)
    del s
    if (k + 1) % (n * 5 // 3) == 0:  # about five flows a round
        gc.collect()
        now = tracemalloc.get_traced_memory()[0] if traced else rss()
        marks.append(now - base)
print(json.dumps({"marks": marks, "flows": k + 1}))
"""


def retention(rounds: int = 20_000) -> dict[str, Any]:
    """What the tracker holds after each third of a long stream: traced bytes and RSS."""
    got = {}
    for how in ("traced", "rss"):
        out = subprocess.run(
            [sys.executable, "-c", _RETENTION_CHILD, str(rounds), how],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],  # tests.tracker.stream is importable
        )
        got[how] = json.loads(out.stdout)
    traced = [m / 2**20 for m in got["traced"]["marks"]]
    rss = [m / 2**20 for m in got["rss"]["marks"]]
    growth = traced[-1] / traced[0] - 1
    return {
        "name": f"tracker state over {rounds:,} soak-like rounds",
        "baseline": "the first third",
        "baseline_s": None,
        "repltap_s": None,
        "value": " → ".join(f"{m:.1f}" for m in traced)
        + " MiB traced; RSS +"
        + " → ".join(f"{m:.1f}" for m in rss)
        + " MiB",
        "flows": got["traced"]["flows"],
        "ratio": 1 + growth,
        "target": "<= 1.10",
        "ok": growth <= 0.10,
    }


if __name__ == "__main__":
    for r in (cost(), memory(), retention()):
        print(json.dumps(r, ensure_ascii=False))
