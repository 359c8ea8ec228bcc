"""Tracking cost and tracker memory.

- cost: ``Tracker.observe`` on the summary of a decoded 10,000-entry manifest (every entry new
  to the tracker, as in an initial sync), as a fraction of decoding the same manifest;
- memory: the resident size the tracker's state adds for 1,000,000 resources, measured in a
  child process (peak RSS after, minus before), with the manifests' own data freed as it goes.
"""

from __future__ import annotations

import json
import subprocess
import sys
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
        return Tracker().observe(s, flow="f", ts=0.0, client="c")  # type: ignore[arg-type]

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
