"""What a request costs the proxy in CPU instructions, counted by valgrind: a figure that does
not move with the machine's other tenants, where the throughput ratio moves by ±0.04.

mitmdump runs under ``valgrind --tool=cachegrind --cache-sim=no`` (it counts every instruction
the process executes, the interpreter's and the C libraries', about 50 times slower) and serves
one keep-alive client the plain part of the sync workload: conditional GETs and PUTs, seven to
three. Each side runs twice, with N and 3N requests; the difference over 2N is the cost of a
request, without start-up and shutdown. Three sides: bare mitmdump, mitmdump with a script that
loads no addon (what mitmproxy itself spends on any ``-s`` script), and repltap with its log.

Informational (no target): the throughput ratio is the target; this says how much of its gap
is work that repltap's code adds, and two runs agree within half a percent. Needs valgrind
(Debian's ``valgrind``); without it the row says "not measured" and why, and has no figure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .proxy import GET, PUT, SCRIPT, _client, _upstream, start_proxy

_SUMMARY = re.compile(r"^summary:\s+(\d+)", re.MULTILINE)


def _instructions(args: list[str], requests: int, tmp: Path, out: Path) -> int:
    """Instructions mitmdump executes from start to exit, serving ``requests`` requests."""
    plan = ([GET] * 7 + [PUT] * 3) * (requests // 10)
    with _upstream() as up:
        m = start_proxy(
            up,
            args,
            tmp / "conf",
            timeout=600,  # start-up under valgrind: about a minute
            wrapper=[
                "valgrind",
                "--tool=cachegrind",
                "--cache-sim=no",
                f"--cachegrind-out-file={out}",
            ],
        )
        try:
            _client(m.port, plan, [])
        finally:
            m.stop(timeout=300)  # valgrind writes its counts as the process exits
    found = _SUMMARY.search(out.read_text()) if out.exists() else None
    if found is None:  # killed, not stopped: valgrind writes its counts only on a clean exit
        raise RuntimeError(f"valgrind wrote no instruction count to {out}")
    return int(found[1])


def run(requests: int = 200) -> dict[str, Any]:
    """Instructions a request, bare mitmdump against repltap (and an empty script)."""
    name = "proxy CPU instructions a request (GET/PUT)"
    if shutil.which("valgrind") is None:
        return {
            "name": name,
            "baseline": "bare mitmdump",
            "baseline_s": None,
            "value": "not measured",
            "repltap_s": None,
            "ratio": None,
            "target": "(info)",
            "ok": True,
            "detail": {"skipped": "valgrind is not installed (Debian: apt install valgrind)"},
        }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        empty = tmp / "empty.py"
        empty.write_text("addons = []\n")
        sides = {
            "bare": [],
            "empty script": ["-s", str(empty)],
            "repltap": ["-s", SCRIPT, "--set", f"repl_log={tmp / 'events.jsonl'}"],
        }
        # The first start makes mitmproxy's CA in the confdir: not part of any side's count.
        _instructions([], 10, tmp, tmp / "warm.out")
        per: dict[str, float] = {}
        for side, args in sides.items():
            counts = [
                _instructions(args, n, tmp, tmp / f"{side.replace(' ', '-')}.{n}.out")
                for n in (requests, 3 * requests)
            ]
            per[side] = (counts[1] - counts[0]) / (2 * requests)
    bare = per["bare"]
    return {
        "name": name,
        "baseline": "bare mitmdump",
        "baseline_s": None,
        "value": f"{per['repltap'] / 1e6:.2f} M",
        "repltap_s": None,
        "ratio": per["repltap"] / bare,
        "target": "(info)",
        "ok": True,
        "detail": {
            "requests": [requests, 3 * requests],
            "instructions_per_request": {k: round(v) for k, v in per.items()},
            "ratio_empty_script": per["empty script"] / bare,
            "valgrind": subprocess.run(
                ["valgrind", "--version"], capture_output=True, text=True
            ).stdout.strip(),
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
