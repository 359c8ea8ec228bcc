"""``make soak``: a long run of mixed replication traffic with faults through a real mitmdump,
showing whether its memory stays flat and whether every flow's events reach the log.

    .venv/bin/python -m bench.soak [--minutes 30] [--faults bench/soak-faults.yaml] [--no-caldav]

What runs (loopback only, in a scratch directory, everything stopped at the end, also on Ctrl-C):

- ``repltap serve`` (the reference Exchange server) and, unless ``--no-caldav``, Radicale;
- ``mitmdump -s addons/repl.py --set repl_log=events.jsonl --set repl_faults=SCENARIO -w
  soak.mitm`` in regular proxy mode: every client uses it as its HTTP proxy;
- rounds until the time is up (or ``--max-rounds``): server-side changes through the admin API
  (create, modify, delete, move; every ``--recreate-every`` rounds the Inbox is re-created, so
  old collblobs get 475), edits in the clients' stores, then one ``repltap sync`` per reference
  client in parallel (three on the Inbox with different page sizes, one on Contacts), and a
  python-caldav round against Radicale (sync-collection, create, modify with If-Match, delete,
  and another client changing the calendar directly). Every step has a timeout.

Measured: the RSS of the mitmdump process every ``--sample`` seconds. Checked at the end:

1. memory is flat: after a warm-up, the median RSS of the last third of the run is at most
   ``--max-growth`` (10 %) above the median of the first third (the maximum and the slope are
   reported too);
2. no event is lost: every flow in the recording has exactly as many lines in the log as the
   flow itself says it produced (its kept events plus its per-entry tag events), each of its kept
   events is in the log under its seq, every decoded manifest answer has its ``manifest`` event,
   every faulted flow its ``fault`` events, and no log line names a flow the recording lacks;
3. mitmdump stayed up, logged no traceback, and exited cleanly;
4. traffic flowed (most sync rounds succeeded; failed ones are listed, faults make some fail).

It prints a summary and exits 1 when a check fails. ``--keep`` keeps the scratch directory.

To see what grows, ``--tracemalloc`` (or ``SOAK_TRACEMALLOC=1``) loads a small addon into mitmdump
that traces Python allocations and writes, every ``--trace-every`` seconds and at the end, the
growth since the warm-up by source line and by file (``tracemalloc.txt`` in the scratch
directory, printed at the end). Tracing slows mitmdump and adds to its RSS: not for the verdict.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.harness.mitm import MitmProc, start_mitmdump

from repltap.sim.admin import AdminClient, AdminError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "addons" / "repl.py"
FAULTS = Path(__file__).with_name("soak-faults.yaml")
BIN = Path(sys.executable).parent
INBOX = "/exchange/alice/Inbox/"
ARCHIVE = "/exchange/alice/Archive/"
CONTACTS = "/exchange/alice/Contacts/"
CALENDAR = "/alice/cal/"
MiB = 1024 * 1024

# (name, collection, --page-size): several clients on one collection meet in conflicts
CLIENTS = (
    ("inbox-a", INBOX, 100),
    ("inbox-b", INBOX, 4),
    ("inbox-c", INBOX, 0),
    ("contacts", CONTACTS, 2),
)
INBOX_MAX = 24  # items; the server-side changes keep the Inbox between INBOX_MIN and this
INBOX_MIN = 6
CAL_MAX = 12
STEP_TIMEOUT = 120.0  # seconds for one client's round


# Loaded into mitmdump with --tracemalloc: the Python heap's growth since the warm-up, written to
# a file every few minutes and when mitmdump stops.
TRACE_ADDON = """
import asyncio, time, tracemalloc
from pathlib import Path

OUT, WARMUP, EVERY, FRAMES = {out!r}, {warmup!r}, {every!r}, {frames!r}
SKIP = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]


class SoakTrace:
    def __init__(self):
        self.base = None
        self.t0 = time.monotonic()
        self.task = None

    def running(self):
        tracemalloc.start(FRAMES)
        self.task = asyncio.get_running_loop().create_task(self.loop())

    async def loop(self):
        await asyncio.sleep(WARMUP)
        self.base = tracemalloc.take_snapshot().filter_traces(SKIP)
        while True:
            await asyncio.sleep(EVERY)
            self.write()

    def write(self):
        if self.base is None:
            return
        snap = tracemalloc.take_snapshot().filter_traces(SKIP)
        cur, peak = tracemalloc.get_traced_memory()
        mib = 1024 * 1024
        out = [
            f"after {{time.monotonic() - self.t0:.0f}} s: traced {{cur / mib:.1f}} MiB "
            f"(peak {{peak / mib:.1f}} MiB); growth since {{WARMUP}} s",
            "", "by line:",
        ]
        out += [str(s) for s in snap.compare_to(self.base, "lineno")[:30]]
        out += ["", "by file:"]
        out += [str(s) for s in snap.compare_to(self.base, "filename")[:15]]
        Path(OUT).write_text("\\n".join(out) + "\\n")

    def done(self):
        if self.task is not None:
            self.task.cancel()
        self.write()


addons = [SoakTrace()]
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------ processes


def wait_for_line(path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first match of ``pattern`` in the file a process writes, or RuntimeError."""
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if m := rx.search(text):
            return m[1]
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{text}")
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args}: no {pattern!r} after {timeout} s")


@contextlib.contextmanager
def reference_server(work: Path) -> Iterator[str]:
    """``repltap serve`` on a free loopback port; its base URL."""
    out = work / "server.log"
    with out.open("wb") as f:
        cmd = [
            str(BIN / "repltap"), "serve", "--host", "127.0.0.1", "--port", "0",
            "--data", str(work / "server-data"), "--quiet", "--no-fsync",
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield wait_for_line(out, r"listening on (http://127\.0\.0\.1:\d+)/", proc, 30).rstrip("/")
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[Any], timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class RssSampler(threading.Thread):
    """VmRSS of one process every ``every`` seconds, from /proc (Linux)."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self.t0 = time.monotonic()
        self._halt = threading.Event()

    def read(self) -> int | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        return int(m[1]) * 1024 if m else None

    def run(self) -> None:
        while True:
            rss = self.read()
            if rss is not None:
                self.samples.append((time.monotonic() - self.t0, rss))
            if self._halt.wait(self.every):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# ------------------------------------------------------------------------------ traffic


@dataclass
class Stats:
    rounds: int = 0
    syncs: int = 0
    sync_failures: list[str] = field(default_factory=list)
    failure_reasons: Counter[str] = field(default_factory=Counter)
    admin: Counter[str] = field(default_factory=Counter)
    local_edits: Counter[str] = field(default_factory=Counter)
    caldav_rounds: int = 0
    caldav: Counter[str] = field(default_factory=Counter)
    caldav_errors: list[str] = field(default_factory=list)


class ServerSide:
    """Changes made to the reference server's world between rounds, as another user would."""

    def __init__(self, base: str, rng: random.Random, stats: Stats) -> None:
        self.admin = AdminClient(base, timeout=30)
        self.rng = rng
        self.stats = stats
        self.n = 0

    def items(self, collection: str) -> dict[str, Any]:
        return dict(self.admin.export(collection)["items"])

    def change(self, round_no: int, recreate_every: int) -> None:
        rng, a = self.rng, self.admin
        try:
            if recreate_every and round_no % recreate_every == 0:
                a.post("recreate", path=INBOX, keep=True)
                self.stats.admin["recreate"] += 1
                return
            inbox = self.items(INBOX)
            names = sorted(inbox)
            for _ in range(rng.randint(0, 2)):
                if len(names) >= INBOX_MAX:
                    break
                self.n += 1
                name = f"Soak {self.n % 200:03d}.EML"  # a bounded pool of names
                if name in inbox:
                    continue
                a.post("create", path=INBOX + name, subject=f"soak {self.n}", body="x" * 200)
                self.stats.admin["create"] += 1
            for name in rng.sample(names, min(len(names), rng.randint(0, 2))):
                a.post("modify", path=INBOX + name, subject=f"edited in round {round_no}")
                self.stats.admin["modify"] += 1
            if len(names) > INBOX_MIN and rng.random() < 0.5:
                a.post("delete", path=INBOX + rng.choice(names))
                self.stats.admin["delete"] += 1
            while len(names := sorted(self.items(INBOX))) > INBOX_MAX:
                a.post("delete", path=INBOX + names[0])  # conflict copies pile up otherwise
                self.stats.admin["delete"] += 1
            archive = sorted(self.items(ARCHIVE))
            if rng.random() < 0.2 and len(names) > INBOX_MIN:
                a.post("move", path=INBOX + rng.choice(names), destination=ARCHIVE + "moved.EML")
                self.stats.admin["move"] += 1
            elif archive and rng.random() < 0.3:
                a.post(
                    "move", path=ARCHIVE + archive[0], destination=INBOX + f"back {round_no}.EML"
                )
                self.stats.admin["move"] += 1
            if rng.random() < 0.3:
                cards = sorted(self.items(CONTACTS))
                if cards:
                    name = rng.choice(cards)
                    a.post("modify", path=CONTACTS + name, props={"urn:x-soak:round": round_no})
                    self.stats.admin["modify"] += 1
        except AdminError as e:
            self.stats.admin["error"] += 1
            log(f"admin: {e}")


def local_edits(store: Path, rng: random.Random, client: str, stats: Stats) -> None:
    """A person editing the synced files: the next round uploads what changed."""
    if not store.is_dir():
        return
    files = sorted(p for p in store.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        return
    r = rng.random()
    if r < 0.3:
        p = rng.choice(files)
        with p.open("ab") as f:
            f.write(f"edited by {client} at {time.time():.3f}\r\n".encode())
        stats.local_edits["edit"] += 1
    elif r < 0.4 and len(files) < INBOX_MAX:
        name = f"Local {client} {rng.randrange(20):02d}.EML"
        if not (store / name).exists():
            (store / name).write_bytes(
                f"Subject: from {client}\r\n\r\nwritten locally\r\n".encode()
            )
            stats.local_edits["create"] += 1
    elif r < 0.45 and len(files) > INBOX_MIN:
        rng.choice(files).unlink()
        stats.local_edits["delete"] += 1


def sync_round(
    base: str, proxy: str, work: Path, rng: random.Random, stats: Stats
) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
    """Start one ``repltap sync`` per client (in parallel); the caller waits for them."""
    running = []
    for name, collection, page in CLIENTS:
        store = work / "clients" / name
        local_edits(store, rng, name, stats)
        out = work / "clients" / f"{name}.out"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("wb") as f:
            cmd = [
                str(BIN / "repltap"), "sync", base + collection, "--store", str(store),
                "--proxy", proxy, "--page-size", str(page),
            ]  # fmt: skip
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        running.append((name, proc, out))
    return running


def finish_syncs(
    running: list[tuple[str, subprocess.Popen[bytes], Path]], round_no: int, stats: Stats
) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    for name, proc, out in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stats.syncs += 1
        if proc.returncode != 0:
            lines = out.read_text(errors="replace").strip().splitlines()
            why = lines[-1] if lines else f"exit {proc.returncode}"
            stats.sync_failures.append(f"round {round_no} {name}: {why[:200]}")
            stats.failure_reasons[failure_reason(why)] += 1


def failure_reason(line: str) -> str:
    """A failed round's last line without what differs between rounds (URLs, numbers)."""
    why = line.removeprefix("repltap sync: error: ")
    why = re.sub(r"https?://.*?(?=: |$)", "<url>", why)
    return re.sub(r"\d+", "N", why)[:160]


# ------------------------------------------------------------------------------ python-caldav

VEVENT = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//repltap//soak//EN\r\nBEGIN:VEVENT\r\n"
    "UID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260105T100000Z\r\n"
    "DTEND:20260105T110000Z\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)
ALICE = "Basic " + base64.b64encode(b"alice:x").decode()


def direct(base: str, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """A request straight to Radicale, as another client (never through the proxy)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname or "", u.port or 80, timeout=30)
    try:
        headers = {"Authorization": ALICE, "Content-Type": "text/calendar; charset=utf-8"}
        if method == "PROPFIND":
            headers |= {"Depth": "1", "Content-Type": "text/xml"}
        conn.request(method, path, body=body or None, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class CaldavSide:
    """python-caldav through repltap against Radicale, plus another client behind its back."""

    def __init__(self, base: str, proxy: str, rng: random.Random, stats: Stats) -> None:
        import caldav

        self.caldav = caldav
        self.base = base
        self.rng = rng
        self.stats = stats
        self.client = caldav.DAVClient(
            url=base + CALENDAR, proxy=proxy, username="alice", password="x", timeout=60
        )
        self.cal = self.client.calendar(url=base + CALENDAR)
        self.token: str | None = None
        self.n = 0

    def members(self) -> list[str]:
        status, body = direct(self.base, "PROPFIND", CALENDAR)
        hrefs = (
            re.findall(rb"<(?:\w+:)?href>([^<]+)</(?:\w+:)?href>", body) if status == 207 else []
        )
        return sorted(h.decode() for h in hrefs if h.endswith(b".ics"))

    def round(self) -> None:
        from caldav.lib import error as caldav_error

        rng, st = self.rng, self.stats
        try:
            got = self.cal.get_objects_by_sync_token(self.token)
            token = str(got.sync_token)
            # after a refused token python-caldav falls back to a listing with a fake token
            self.token = None if token.startswith("fake") else token
            st.caldav["sync"] += 1
            members = self.members()
            r = rng.random()
            if r < 0.35 and len(members) < CAL_MAX:
                self.n += 1
                uid = f"soak-{self.n % 50}"
                self.cal.save_event(VEVENT.format(uid=uid, summary=f"created {self.n}"))
                st.caldav["create"] += 1
            elif r < 0.7 and members:
                ev = self.cal.event_by_url(self.base + rng.choice(members))
                ev.load()
                ev.icalendar_component["SUMMARY"] = f"edited {time.time():.3f}"
                ev.save()  # If-Match: a stale copy or an injected conflict gets 412
                st.caldav["modify"] += 1
            elif r < 0.85 and len(members) > 2:
                self.cal.event_by_url(self.base + rng.choice(members)).delete()
                st.caldav["delete"] += 1
            if members and rng.random() < 0.3:  # another client, behind repltap's back
                path = rng.choice(members)
                uid = path.rsplit("/", 1)[1].removesuffix(".ics")
                direct(self.base, "PUT", path, VEVENT.format(uid=uid, summary="other").encode())
                st.caldav["other-client"] += 1
        except (caldav_error.DAVError, OSError, ValueError) as e:
            st.caldav_errors.append(f"{type(e).__name__}: {' '.join(str(e).split())[:160]}")
        st.caldav_rounds += 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


@contextlib.contextmanager
def radicale_server(work: Path) -> Iterator[str]:
    from tests.harness.peers import radicale

    with radicale(work / "radicale") as base:
        for i in range(3):
            direct(
                base,
                "PUT",
                f"{CALENDAR}seed-{i}.ics",
                VEVENT.format(uid=f"seed-{i}", summary=i).encode(),
            )
        yield base


# ------------------------------------------------------------------------------ the checks


def memory_report(samples: list[tuple[float, int]], max_growth: float) -> dict[str, Any]:
    """Flatness of the RSS after a warm-up: last third's median against the first third's."""
    if len(samples) < 6:
        return {"ok": False, "why": f"only {len(samples)} RSS samples"}
    end = samples[-1][0]
    warmup = min(60.0, 0.1 * end)
    body = [(t, b) for t, b in samples if t >= warmup]
    third = max(1, len(body) // 3)
    first = statistics.median(b for _, b in body[:third])
    last = statistics.median(b for _, b in body[-third:])
    ts = [t for t, _ in body]
    bs = [b for _, b in body]
    slope = statistics.linear_regression(ts, bs).slope * 60 if len(set(ts)) > 1 else 0.0
    growth = last / first - 1
    return {
        "ok": growth <= max_growth,
        "samples": len(samples),
        "warmup_s": round(warmup, 1),
        "start_mib": round(samples[0][1] / MiB, 1),
        "first_third_median_mib": round(first / MiB, 1),
        "last_third_median_mib": round(last / MiB, 1),
        "growth": round(growth, 4),
        "max_growth": max_growth,
        "max_mib": round(max(b for _, b in samples) / MiB, 1),
        "slope_mib_per_min": round(slope / MiB, 3),
    }


def events_report(recording: Path, log_path: Path) -> dict[str, Any]:
    """Every flow's events in the log, counted per flow id."""
    from mitmproxy import io
    from mitmproxy.exceptions import FlowReadException

    lines: dict[str, list[dict[str, Any]]] = {}
    kinds: Counter[str] = Counter()
    bad_lines = 0
    with log_path.open(encoding="utf-8") as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                bad_lines += 1
                continue
            lines.setdefault(str(ev.get("flow")), []).append(ev)
            kinds[ev.get("event", "?")] += 1
    flows = decoded = manifests = faulted = 0
    problems: list[str] = []
    bad: set[str] = set()  # flows with a problem
    seen: set[str] = set()
    read_error = None
    with recording.open("rb") as f:
        try:
            for fl in io.FlowReader(f).stream():
                flows += 1
                seen.add(fl.id)
                s = fl.metadata.get("repl")
                got = lines.get(fl.id, [])
                if not isinstance(s, dict):
                    if got:
                        problems.append(f"{fl.id}: {len(got)} log lines, but no summary")
                    continue
                if "request" in s:
                    decoded += 1
                kept = [e for e in s.get("events") or [] if isinstance(e, dict)]
                want = len(kept) + int(s.get("tag_events") or 0)
                where = f"{fl.id} {fl.request.method} {fl.request.path[:60]}"
                if len(got) != want:
                    problems.append(f"{where}: {len(got)} log lines, the flow says {want}")
                by_seq = {e.get("seq"): e.get("event") for e in got}
                missing = [e for e in kept if by_seq.get(e.get("seq")) != e.get("event")]
                if missing:
                    problems.append(f"{where}: {len(missing)} of its events not in the log")
                if s.get("kind") == "manifest" and s.get("response"):
                    manifests += 1
                    if not any(e.get("event") == "manifest" for e in got):
                        problems.append(f"{where}: a decoded manifest answer without its event")
                if s.get("fault"):
                    faulted += 1
                    if sum(e.get("event") == "fault" for e in got) < len(s["fault"]):
                        problems.append(f"{where}: a faulted flow without its fault events")
        except FlowReadException as e:
            read_error = str(e)
    bad.update(p.split(" ", 1)[0].rstrip(":") for p in problems)
    orphans = {fid: len(evs) for fid, evs in lines.items() if fid not in seen}
    for fid, n in list(orphans.items())[:5]:
        problems.append(f"{fid}: {n} log lines for a flow the recording lacks")
    if bad_lines:
        problems.append(f"{bad_lines} log lines are not JSON")
    if read_error:
        problems.append(f"the recording could not be read to its end: {read_error}")
    return {
        "ok": not problems and flows > 0,
        "flows": flows,
        "decoded_flows": decoded,
        "manifest_flows": manifests,
        "faulted_flows": faulted,
        "log_lines": sum(kinds.values()),
        "events": dict(kinds.most_common()),
        "orphan_flows": len(orphans),
        "flows_with_problems": len(bad),
        "problems": len(problems),
        "first_problems": problems[:10],
    }


# ------------------------------------------------------------------------------ main


def run(ns: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="repltap-soak-"))
    rng = random.Random(ns.seed)
    stats = Stats()
    rec, events = work / "soak.mitm", work / "events.jsonl"
    caldav_on = not ns.no_caldav
    if caldav_on:
        try:
            import caldav  # noqa: F401
        except ImportError:
            caldav_on = False
            log("python-caldav is not installed: reference clients only")
    log(f"scratch directory {work}")
    result: dict[str, Any] = {"machine": machine(), "minutes": ns.minutes, "faults": str(ns.faults)}
    proxy_proc: MitmProc | None = None
    trace_out = work / "tracemalloc.txt"
    tracing: list[str] = []
    if ns.tracemalloc:
        script = work / "soak_trace.py"
        warmup = min(60.0, 0.1 * ns.minutes * 60)
        script.write_text(
            TRACE_ADDON.format(
                out=str(trace_out), warmup=warmup, every=ns.trace_every, frames=ns.trace_frames
            )
        )
        tracing = ["-s", str(script)]
        log(f"tracing allocations in mitmdump: {trace_out}")
    sampler: RssSampler | None = None
    exit_code: int | None = None
    output = ""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(reference_server(work))
        cal_base = stack.enter_context(radicale_server(work)) if caldav_on else None
        proxy_proc = start_mitmdump(
            "-s", str(SCRIPT),
            "--set", f"repl_log={events}",
            "--set", f"repl_faults={ns.faults}",
            "-w", str(rec),
            "--flow-detail", "0",
            *tracing,
            *ns.mitm_arg,
            confdir=work / "mitmconf",
        )  # fmt: skip
        proxy = f"http://127.0.0.1:{proxy_proc.port}"
        log(f"reference server {base}, Radicale {cal_base or '-'}, mitmdump {proxy}")
        sampler = RssSampler(proxy_proc.proc.pid, ns.sample)
        sampler.start()
        server = ServerSide(base, rng, stats)
        cal = CaldavSide(cal_base, proxy, rng, stats) if cal_base else None
        if cal is not None:
            stack.callback(cal.close)
        deadline = time.monotonic() + ns.minutes * 60
        next_report = time.monotonic() + 60
        try:
            while time.monotonic() < deadline and stats.rounds < ns.max_rounds:
                if proxy_proc.proc.poll() is not None:
                    log("mitmdump is gone")
                    break
                stats.rounds += 1
                if stats.rounds > 1:
                    server.change(stats.rounds, ns.recreate_every)
                running = sync_round(base, proxy, work, rng, stats)
                if cal is not None:
                    cal.round()
                finish_syncs(running, stats.rounds, stats)
                if time.monotonic() >= next_report:
                    next_report += 60
                    rss = sampler.samples[-1][1] / MiB if sampler.samples else 0
                    log(
                        f"round {stats.rounds}: {stats.syncs} syncs "
                        f"({len(stats.sync_failures)} failed), {stats.caldav_rounds} caldav "
                        f"rounds, mitmdump RSS {rss:.1f} MiB"
                    )
                time.sleep(ns.pause)
        except KeyboardInterrupt:
            log("interrupted: stopping")
        traffic_s = time.monotonic() - started
        sampler.stop()
        exit_code = proxy_proc.stop(timeout=30)
        output = proxy_proc.output()
    result["traffic_seconds"] = round(traffic_s, 1)
    result["traffic"] = {
        "rounds": stats.rounds,
        "reference_syncs": stats.syncs,
        "reference_sync_failures": len(stats.sync_failures),
        "first_failures": stats.sync_failures[:10],
        "failure_reasons": dict(stats.failure_reasons.most_common()),
        "server_changes": dict(stats.admin),
        "local_edits": dict(stats.local_edits),
        "caldav_rounds": stats.caldav_rounds,
        "caldav": dict(stats.caldav),
        "caldav_errors": len(stats.caldav_errors),
        "first_caldav_errors": stats.caldav_errors[:5],
    }
    result["memory"] = memory_report(sampler.samples, ns.max_growth) if sampler else {"ok": False}
    result["rss_samples"] = [(round(t, 1), b) for t, b in sampler.samples] if sampler else []
    result["events"] = events_report(rec, events)
    tracebacks = [ln for ln in output.splitlines() if "Traceback" in ln or "Addon error" in ln]
    result["proxy"] = {
        "exit_code": exit_code,
        "tracebacks": len(tracebacks),
        "first_errors": [ln[:200] for ln in output.splitlines() if "rror" in ln][:5],
        "recording_mib": round(rec.stat().st_size / MiB, 1) if rec.exists() else 0,
        "log_mib": round(events.stat().st_size / MiB, 1) if events.exists() else 0,
    }
    result["proxy"]["ok"] = exit_code == 0 and not tracebacks
    t = result["traffic"]
    t["ok"] = stats.syncs > 0 and len(stats.sync_failures) <= stats.syncs // 2
    checks = ("memory", "events", "proxy", "traffic")
    ok = all(result[k].get("ok") for k in checks)
    result["ok"] = ok
    (work / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    if ns.json:
        ns.json.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    if ns.tracemalloc and trace_out.exists():
        print(f"\nwhat grew in mitmdump's Python heap ({trace_out}):")
        print(trace_out.read_text())
    if ok and not ns.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"scratch directory kept: {work} (soak.json, soak.mitm, events.jsonl)")
    return 0 if ok else 1


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def summary(r: dict[str, Any]) -> str:
    def mark(ok: Any) -> str:
        return "ok" if ok else "FAILED"

    t, m, e, p = r["traffic"], r["memory"], r["events"], r["proxy"]
    out = [
        "",
        f"repltap soak: {r['traffic_seconds'] / 60:.1f} min of traffic through mitmdump "
        f"with {Path(r['faults']).name}",
        f"  traffic  {t['rounds']} rounds: {t['reference_syncs']} `repltap sync` runs "
        f"({t['reference_sync_failures']} failed), {t['caldav_rounds']} python-caldav rounds "
        f"({t['caldav_errors']} errors); server changes {t['server_changes']}  "
        f"[{mark(t['ok'])}]",
    ]
    if "growth" in m:
        out.append(
            f"  memory   mitmdump RSS {m['start_mib']} MiB at start; median "
            f"{m['first_third_median_mib']} MiB in the first third (after {m['warmup_s']} s), "
            f"{m['last_third_median_mib']} MiB in the last ({m['growth']:+.1%}, limit "
            f"{m['max_growth']:+.0%}); max {m['max_mib']} MiB; slope "
            f"{m['slope_mib_per_min']:+.3f} MiB/min; {m['samples']} samples  [{mark(m['ok'])}]"
        )
    else:
        out.append(f"  memory   {m.get('why', 'no samples')}  [FAILED]")
    out.append(
        f"  events   {e['flows']} flows ({e['decoded_flows']} decoded, {e['manifest_flows']} "
        f"manifest answers, {e['faulted_flows']} faulted), {e['log_lines']} log lines; "
        f"flows whose events are not all in the log: {e['flows_with_problems']}; orphan "
        f"flows in the log: {e['orphan_flows']}  [{mark(e['ok'])}]"
    )
    out.append(f"           by kind: {e['events']}")
    for line in e["first_problems"]:
        out.append(f"           ! {line}")
    out.append(
        f"  proxy    exit {p['exit_code']}, {p['tracebacks']} tracebacks in its output; "
        f"recording {p['recording_mib']} MiB, log {p['log_mib']} MiB  [{mark(p['ok'])}]"
    )
    for why, n in list(t.get("failure_reasons", {}).items())[:8]:
        out.append(f"           sync failed {n}x: {why}")
    for line in t["first_caldav_errors"][:3]:
        out.append(f"           caldav: {line}")
    out.append(f"  result   {'PASS' if r['ok'] else 'FAIL'}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "30")))
    ap.add_argument("--faults", type=Path, default=FAULTS, help="the fault scenario")
    ap.add_argument("--no-caldav", action="store_true", help="reference clients only")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth")
    ap.add_argument("--max-rounds", type=int, default=100_000)
    ap.add_argument("--recreate-every", type=int, default=40, help="rounds (0: never)")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds between rounds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--mitm-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more mitmdump argument (repeat: --mitm-arg=--set --mitm-arg=repl_cache=c.db)",
    )
    ap.add_argument(
        "--tracemalloc",
        action="store_true",
        default=os.environ.get("SOAK_TRACEMALLOC", "") not in ("", "0"),
        help="trace mitmdump's allocations and report what grew (slows it; for diagnosis)",
    )
    ap.add_argument("--trace-every", type=float, default=120.0, help="seconds between reports")
    ap.add_argument("--trace-frames", type=int, default=1, help="frames kept per allocation")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
