"""``make bench``: run every benchmark, print a table, write bench/results.json."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from . import cache, cache_scale, decode, dispatch, instructions, proxy, tracker


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def main() -> int:
    results = [
        decode.run(),
        *decode.large(),
        tracker.cost(),
        tracker.memory(),
        cache.run(),
        *cache_scale.run(),
        dispatch.run(),
        proxy.run("sync", repeats=5),  # the target: more rounds, as the machine moves ±0.04
        proxy.run("manifests"),
        instructions.run(),  # noise-free: what the throughput ratio's gap is made of
    ]
    print(f"{'benchmark':<34} {'baseline':>12} {'repltap':>12} {'ratio':>7}  target  ok")
    for r in results:
        if r["baseline_s"] is None:
            figures = f"{r['baseline']:>12} {r['value']:>12}"
        else:
            figures = f"{r['baseline_s'] * 1000:>10.1f}ms {r['repltap_s'] * 1000:>10.1f}ms"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(
            f"{r['name']:<34} {figures} {ratio:>7}  {r['target']:<7} {'yes' if r['ok'] else 'NO'}"
        )
    for r in results:
        detail = r.get("detail", {})
        if "skipped" in detail:
            print(f"{r['name']}: not measured: {detail['skipped']}")
        pairs = detail.get("paired_ratios")
        if pairs:
            print(f"{r['name']}: round by round {', '.join(f'{x:.2f}' for x in pairs)}")
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    print(f"\nmachine: {machine()}\nwritten: {out}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
