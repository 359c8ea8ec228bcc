"""What mitmproxy's event dispatch costs repltap on a plain conditional GET, in one process.

A flow is eight events (request headers, request, response headers, response, each followed by
``update``), sent through a real mitmproxy addon manager to repltap's seven parts: once as seven
entries of the chain, as ``addons/repl.py`` had them, and once behind the Suite, as it has them
now. Each side's figure includes the parts' own work on the flow, which is the same on both.
Informational (no target): the proxy benchmark carries the target this serves.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mitmproxy import hooks, http
from mitmproxy.proxy.layers.http import (
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)
from mitmproxy.test import taddons, tflow, tutils
from tests.harness.mitm import load_repl_script

from repltap.mitm.log import Log
from repltap.mitm.suite import Suite


def _flow() -> http.HTTPFlow:
    req = tutils.treq(
        method=b"GET",
        path=b"/c/item.EML",
        headers=http.Headers(If="(<rt:1>)", Translate="f", **{"User-Agent": "bench"}),
        content=b"",
    )
    f = tflow.tflow(req=req)
    f.response = tutils.tresp(
        headers=http.Headers(ResourceTag="<rt:2>", **{"Repl-UID": "<rid:1>"}),
        content=b"Subject: x\r\n\r\nbody\r\n",
    )
    return f


def _parts() -> tuple[list[object], Log]:
    """A fresh set of the parts addons/repl.py puts in its Suite, in its order, and its log."""
    (suite,) = load_repl_script().addons
    log = next(p for p in suite.parts if isinstance(p, Log))
    return list(suite.parts), log


async def _per_flow(suite: bool, log_path: str, flows: int, rounds: int) -> float:
    parts, log = _parts()
    chain = [Suite(*parts)] if suite else parts
    with taddons.context(*chain) as tctx:
        tctx.configure(log, repl_log=log_path)
        manager = tctx.master.addons
        times = []
        for _ in range(rounds):
            batch = [_flow() for _ in range(flows)]
            t = time.perf_counter()
            for f in batch:
                for event in (
                    HttpRequestHeadersHook(f),
                    HttpRequestHook(f),
                    HttpResponseHeadersHook(f),
                    HttpResponseHook(f),
                ):
                    await manager.trigger_event(event)
                    await manager.trigger_event(hooks.UpdateHook([f]))
            times.append((time.perf_counter() - t) / flows)
        log.done()
    return statistics.median(times)


def run(flows: int = 1000, rounds: int = 9) -> dict[str, Any]:
    """Seven chain entries against the Suite, each timed after an untimed round of itself."""
    with tempfile.TemporaryDirectory() as tmp:
        log_path = str(Path(tmp) / "events.jsonl")
        asyncio.run(_per_flow(False, log_path, flows, 1))
        seven = asyncio.run(_per_flow(False, log_path, flows, rounds))
        asyncio.run(_per_flow(True, log_path, flows, 1))
        one = asyncio.run(_per_flow(True, log_path, flows, rounds))
    return {
        "name": "dispatch + hooks, plain GET",
        "baseline": "seven chain entries",
        "baseline_s": seven,
        "repltap_s": one,
        "ratio": one / seven,
        "target": "(info)",
        "ok": True,
    }


if __name__ == "__main__":
    import json

    r = run()
    print(json.dumps(r, indent=2))
    print(f"{r['baseline_s'] * 1e6:.1f} µs → {r['repltap_s'] * 1e6:.1f} µs a flow")
