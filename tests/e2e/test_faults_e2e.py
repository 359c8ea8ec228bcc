"""End to end: faults injected by a real ``mitmdump -s addons/repl.py --set repl_faults=...``
between real peers, and what the clients make of them.

Peers: the reference Exchange-style server (in-process, its own thread) and the reference client
(in-process), with mitmdump as a real subprocess in reverse mode between them; raw sockets where
the bytes on the wire are the point (resets, truncation, hangs, first-byte times); the canned
vector server for the byte-for-byte check; a deliberately naive client written here; and, last,
python-caldav against Radicale for the RFC 6578 faults.

One mitmdump serves every action test: its scenario (ACTIONS below) gives each action a rule of
its own, bound to a mailbox of its own (``/exchange/a-<action>/``), so the tests do not meet.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import caldav
import pytest
from caldav.lib import error as caldav_error
from mitmproxy import io

from repltap.faults import load
from repltap.protocol import exchange
from repltap.sim.admin import AdminClient, AdminError
from repltap.sim.client import STATE_FILE, Reply, State, Sync, SyncError, build_sql, manifest_body
from repltap.sim.server import ReplServer, Settings, serve_in_thread, stop_server
from tests.harness.mitm import (
    MitmProc,
    raw_exchange,
    run_mitmdump,
    split_response,
    start_mitmdump,
)
from tests.harness.peers import RADICALE_CALENDAR, RADICALE_USER, ical, radicale
from tests.harness.vectors import send_all_vectors, vector_server

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "addons" / "repl.py")
LIBRARY = ROOT / "config" / "faults"
EXAMPLE = "/exchange/alice/Inbox/"
CONTACTS = "/exchange/alice/Contacts/"
STATUSES = (500, 507, 401, 440)


def rule(name: str, action: str, match: str = "", path: str | None = None) -> str:
    """A rule bound to the mailbox of the test named after it (``/exchange/a-<name>/``)."""
    where = path or f"/exchange/a-{name}/*"
    crit = f"path: '{where}'" + (f", {match}" if match else "")
    return f"  - name: {name}\n    match: {{{crit}}}\n    action: {action}\n"


RAW = "/exchange/a-raw/"  # requests sent with raw sockets: the bytes on the wire are the point
ACTIONS = "seed: 11\nrules:\n" + "".join(
    [
        rule("delay", "{type: delay, ms: 800, jitter_ms: 100}", "method: GET"),
        rule("drop", "drop", "kind: manifest, initial: false, nth: 1"),
        rule("dropw", "{type: drop, phase: response}", "kind: upload, nth: 1"),
        rule("reset", "reset", "method: GET, nth: 1"),
        rule("raw-reset", "reset", path=RAW + "reset"),
        rule("trunc", "{type: truncate, bytes: 40}", "method: GET, nth: 1"),
        rule("raw-fin", "{type: truncate, bytes: 40}", path=RAW + "Fin.EML"),
        rule("raw-rst", "{type: truncate, fraction: 0.5, rst: true}", path=RAW + "Rst.EML"),
        rule("hang", "hang", "method: GET"),
        rule("busy", "{type: status, code: 503, retry_after: 7}", "kind: manifest, nth: 1"),
        *(rule(f"raw-{c}", f"{{type: status, code: {c}}}", path=f"{RAW}{c}") for c in STATUSES),
        rule("slow", "{type: slow_first_byte, ms: 600}", "method: GET"),
        rule("reject", "invalid_token", "nth: 1"),
        rule("conflict", "conflict", "nth: 1"),
        rule("corrupt", "corrupt_token", "initial: true, nth: 1"),
        rule("swap", "swap_token", "nth: 1", path="/exchange/a-swap/Inbox/"),
        rule("stale", "stale_token", "nth: 1"),
        rule("dropent", "{type: drop_entries, which: first}", "nth: 1"),
        rule("dup", "{type: duplicate_entries, count: 2}"),
        rule("mix", "reorder_entries"),
        rule("pages", "{type: paginate, rows: 2}"),
        rule("differ", "content_different", "nth: 1"),
        rule("notags", "strip_tags", "kind: [download, upload]"),
        rule("retype", "{type: rewrite_changetype, from: new, to: change}"),
    ]
)


class Lab:
    """The reference server, one mitmdump with a fault scenario, its flow file and event log."""

    def __init__(self, server: ReplServer, proxy: MitmProc, rec: Path, log: Path) -> None:
        self.server = server
        self.proxy = proxy
        self.recording = rec
        self.log = log
        self.scenario: Path | None = None
        self.admin = AdminClient(server.url)  # straight to the server, never faulted
        self.url = f"http://127.0.0.1:{proxy.port}"

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def faults(self, rule: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == "fault" and e["rule"] == rule]

    def wait_faults(self, rule: str, n: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(found := self.faults(rule)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return found

    def flows(self, prefix: str) -> list[Any]:
        with self.recording.open("rb") as f:
            return [fl for fl in io.FlowReader(f).stream() if fl.request.path.startswith(prefix)]


def start_lab(tmp: Path, confdir: str, scenario: Path | str | None, *args: str) -> Lab:
    server, thread = serve_in_thread(tmp / "data", settings=Settings())
    server.thread = thread  # type: ignore[attr-defined]
    rec, log = tmp / "rec.mitm", tmp / "events.jsonl"
    extra = ["--set", f"repl_faults={scenario}"] if scenario else []
    try:
        proxy = start_mitmdump(
            "--mode",
            f"reverse:{server.url}",
            "--set",
            "connection_strategy=lazy",
            "-s",
            SCRIPT,
            *extra,
            "--set",
            f"repl_log={log}",
            "-w",
            str(rec),
            "--flow-detail",
            "0",
            *args,
            confdir=confdir,
        )
    except Exception:
        stop_server(server, thread)
        raise
    lab = Lab(server, proxy, rec, log)
    lab.scenario = Path(scenario) if scenario else None
    return lab


def stop_lab(lab: Lab) -> None:
    rc = lab.proxy.stop()
    stop_server(lab.server, lab.server.thread)  # type: ignore[attr-defined]
    out = lab.proxy.output()
    assert rc == 0, out
    assert "Traceback" not in out and "Addon error" not in out, out


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, mitm_confdir: str) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("faults-e2e")
    scenario = tmp / "actions.yaml"
    scenario.write_text(ACTIONS)
    lb = start_lab(tmp, mitm_confdir, scenario)
    body = "".join(f"line {i} of a message long enough to be cut\n" for i in range(40))
    for name in ("Fin.EML", "Rst.EML"):
        lb.admin.post("create", path=RAW + name, subject=name, body=body, parents=True)
    try:
        yield lb
    finally:
        stop_lab(lb)


class Box:
    """A private copy of the example Inbox on the server, and a reference client's store."""

    def __init__(self, lab: Lab, user: str, tmp: Path, source: str = EXAMPLE) -> None:
        self.lab = lab
        self.path = f"/exchange/{user}/{source.rstrip('/').rsplit('/', 1)[1]}/"
        self.store = tmp / f"store-{user}-{source.rstrip('/').rsplit('/', 1)[1]}"
        with contextlib.suppress(AdminError):  # a second mailbox of the same user
            lab.admin.post("create", path=f"/exchange/{user}/", parents=True)
        lab.admin.post("copy", path=source, destination=self.path)

    def server(self) -> dict[str, Any]:
        items: dict[str, Any] = self.lab.admin.export(self.path)["items"]
        return items

    def sync(self, timeout: float = 30, **kw: Any) -> tuple[bool, list[str]]:
        """One round of the reference client through the proxy: (finished, its lines)."""
        lines: list[str] = []
        s = Sync(self.lab.url + self.path, self.store, out=lines.append, **kw)
        s.http.timeout = timeout
        try:
            s.run()
        except SyncError as e:
            lines.append(f"error: {e}")
            return False, lines
        return True, lines

    def converge(self, rounds: int = 8) -> list[list[str]]:
        """Rounds until one finishes (a correct client survives by trying again)."""
        runs = []
        for _ in range(rounds):
            ok, lines = self.sync()
            runs.append(lines)
            if ok:
                return runs
        raise AssertionError(f"no round finished in {rounds}: {runs}")

    def same(self) -> bool:
        """The store equals the collection: names, bytes, repl-uids and resourcetags."""
        server = self.server()
        local = {p.name: p.read_bytes() for p in self.store.iterdir() if not p.name.startswith(".")}
        if sorted(local) != sorted(server) or any(
            local[n] != i["content"] for n, i in server.items()
        ):
            return False
        state = State.load(self.store / STATE_FILE)
        return state is not None and {i.name: (i.uid, i.tag) for i in state.items.values()} == {
            n: (i["uid"], i["tag"]) for n, i in server.items()
        }

    def summaries(self) -> list[dict[str, Any]]:
        return [f.metadata.get("repl") or {} for f in self.lab.flows(quote(self.path))]

    def edit(self, name: str, text: bytes = b"\r\n-- edited here\r\n") -> None:
        p = self.store / name
        p.write_bytes(p.read_bytes() + text)


@pytest.fixture
def box(lab: Lab, request: pytest.FixtureRequest, tmp_path: Path) -> Box:
    """The mailbox /exchange/a-<name>/Inbox/ of the test ``test_<name>`` (or ``..._<name>``)."""
    name = request.node.name.removeprefix("test_").split("_")[0]
    return Box(lab, f"a-{name}", tmp_path)


def request_bytes(method: str, path: str, port: int) -> bytes:
    return f"{method} {quote(path)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


def read_raw(port: int, data: bytes, timeout: float = 10) -> tuple[bytes, str, float]:
    """Send a request; (every byte received, how it ended: eof | reset | timeout, seconds to the
    first byte or to the end when none came)."""
    buf = b""
    t0 = time.monotonic()
    first: float | None = None
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return buf, "reset", (first or time.monotonic()) - t0
            except TimeoutError:
                return buf, "timeout", (first or time.monotonic()) - t0
            if not chunk:
                return buf, "eof", (first or time.monotonic()) - t0
            if first is None:
                first = time.monotonic()
            buf += chunk
            if b"\r\n\r\n" in buf:
                head, _, body = buf.partition(b"\r\n\r\n")
                m = re.search(rb"content-length:\s*(\d+)", head, re.I)
                if m and len(body) >= int(m[1]) and not head.startswith(b"HTTP/1.1 1"):
                    return buf, "complete", first - t0


# ================================================================== transport


def test_delay_holds_only_its_own_flows(lab: Lab, box: Box, tmp_path: Path) -> None:
    """Three delayed requests at once take one delay, not three, and a request to another
    mailbox meanwhile is not held at all."""
    hello = request_bytes("GET", box.path + "Hello.EML", lab.proxy.port)
    other = request_bytes("GET", EXAMPLE + "Hello.EML", lab.proxy.port)
    results: list[tuple[bytes, str, float]] = []
    threads = [
        threading.Thread(target=lambda: results.append(read_raw(lab.proxy.port, hello)))
        for _ in range(3)
    ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.1)
    _, how, first = read_raw(lab.proxy.port, other)
    assert how == "complete" and first < 0.5  # not held behind the delayed ones
    for t in threads:
        t.join()
    assert time.monotonic() - t0 < 1.6  # concurrently: about one delay
    assert [r[1] for r in results] == ["complete"] * 3
    delays = [e["delay_ms"] for e in lab.wait_faults("delay", 3)]
    assert len(delays) == 3 and all(700 <= d <= 900 for d in delays)
    assert len(set(delays)) == 3  # jitter


def test_drop_before_the_server(lab: Lab, box: Box) -> None:
    """The connection closes before a byte of an answer; the reference client sends an
    idempotent SEARCH again when a kept-alive connection closes under it, so its round goes
    through, and the flow file shows the dropped request and the retry."""
    assert box.sync()[0] and box.same()
    searches = [f for f in lab.flows(quote(box.path)) if f.request.method == "SEARCH"]
    assert [(f.response.status_code if f.response else None) for f in searches] == [207, None, 207]
    dropped = searches[1]
    assert dropped.error.msg == "Connection killed."
    assert dropped.metadata["repl"]["fault"][0]["detail"] == (
        "closed the client connection without a byte"
    )
    assert dropped.marked == ":zap:"  # what mitmweb shows in its flow list
    assert "⚡ fault drop: closed the client connection without a byte" in dropped.comment
    assert dropped.metadata["repl"]["request"]["token"]  # the first incremental manifest


def test_dropw_the_answer_after_the_server_wrote(lab: Lab, box: Box) -> None:
    """A PUT reaches the server, its answer is lost: the client does not send it again (the
    round ends), and the next round reads the manifest before it writes: it finds its own edit
    there and takes the server's tag, with no conflict and no duplicate."""
    assert box.sync()[0]
    box.edit("Report.EML")
    ok, lines = box.sync()
    assert not ok and "not sent again" in lines[-1]
    assert lab.faults("dropw")[0]["phase"] == "response"
    assert box.server()["Report.EML"]["content"].endswith(b"-- edited here\r\n")  # it was stored
    runs = box.converge()
    assert any("was lost last round" in line for line in runs[-1])
    assert not any("conflict" in line for line in runs[-1])
    assert "Report (conflict 1).EML" not in box.server()
    assert box.same()
    puts = [f for f in lab.flows(quote(box.path)) if f.request.method == "PUT"]
    assert len(puts) == 1  # sent once
    codes = [e["code"] for e in lab.events() if e["event"] == "anomaly" and box.path in str(e)]
    assert "retry-without-refresh" not in codes and "stale-condition" not in codes, codes


def test_reset_is_a_tcp_rst(lab: Lab, box: Box) -> None:
    """A TCP RST, not a FIN; the reference client retries a GET on a kept-alive connection once,
    so its round goes through."""
    data, how, _ = read_raw(lab.proxy.port, request_bytes("GET", RAW + "reset", 0))
    assert (data, how) == (b"", "reset")
    assert lab.wait_faults("raw-reset")[0]["rst"] is True
    ok, _ = box.sync()
    assert ok and box.same()
    (fault,) = lab.faults("reset")
    assert fault["method"] == "GET" and fault["rst"] is True


def test_trunc_a_download(lab: Lab, box: Box) -> None:
    """The server's headers and 40 bytes of the body, then a FIN (or a RST); the client takes the
    short body for the failure it is and stores nothing of it."""
    data, how, _ = read_raw(lab.proxy.port, request_bytes("GET", RAW + "Fin.EML", 0))
    status, headers, body = split_response(data)
    declared = int(next(v for k, v in headers if k.lower() == "content-length"))
    assert (status, how, len(body)) == (200, "eof", 40) and declared > 40
    assert (
        lab.wait_faults("raw-fin")[0] | {"bytes": 40, "of": declared, "rst": False}
        == (lab.faults("raw-fin")[0])
    )
    data, how, _ = read_raw(lab.proxy.port, request_bytes("GET", RAW + "Rst.EML", 0))
    assert how == "reset"  # the bytes before the RST may or may not be read: the kernel's call
    (fault,) = lab.wait_faults("raw-rst")
    assert fault["rst"] is True and fault["bytes"] == fault["of"] // 2
    ok, lines = box.sync()
    assert not ok and "IncompleteRead" in lines[-1]
    assert not [p for p in box.store.iterdir() if not p.name.startswith(".")]
    assert box.sync()[0] and box.same()


def test_hang_until_the_client_gives_up(lab: Lab, box: Box) -> None:
    """Nothing comes back; when the client gives up (here after 1 s) the proxy lets go."""
    data, how, waited = read_raw(
        lab.proxy.port, request_bytes("GET", box.path + "Hello.EML", 0), timeout=1
    )
    assert (data, how) == (b"", "timeout") and waited >= 1
    (fault,) = lab.wait_faults("hang")
    assert fault["ended"] == "the client gave up" and 0.9 < fault["held_s"] < 3


# ================================================================== HTTP


def test_busy_503_with_retry_after(lab: Lab, box: Box) -> None:
    ok, lines = box.sync()
    assert not ok and lines[-1].startswith("error: manifest: 503 Service Unavailable")
    (flow,) = [f for f in lab.flows(quote(box.path)) if f.response.status_code == 503]
    assert flow.response.headers["Retry-After"] == "7"
    assert box.sync()[0] and box.same()


@pytest.mark.parametrize("code", STATUSES)
def test_raw_status(lab: Lab, code: int) -> None:
    got = raw_exchange(lab.proxy.port, request_bytes("GET", f"{RAW}{code}", 0))
    assert split_response(got)[0] == code


def test_slow_first_byte(lab: Lab, box: Box) -> None:
    _, how, first = read_raw(lab.proxy.port, request_bytes("GET", box.path + "Hello.EML", 0))
    assert how == "complete" and first >= 0.6
    _, how, first = read_raw(lab.proxy.port, request_bytes("GET", EXAMPLE + "Hello.EML", 0))
    assert first < 0.5


# ================================================================== replication


def test_reject_the_token_and_the_client_starts_over(lab: Lab, box: Box) -> None:
    """The first incremental manifest (right after the initial sync) gets a 475: the client
    drops its collblob, syncs from scratch and reconciles by repl-uid, downloading nothing."""
    ok, lines = box.sync()
    assert ok and box.same()
    assert "manifest (update): 475 Invalid collblob: rejected by repltap fault rule reject" in lines
    assert sum(line.startswith("  ↓") for line in lines) == 5  # the initial sync's downloads only
    events = [e for e in lab.events() if e.get("collection") == box.path]
    assert [e["status"] for e in events if e["event"] == "invalid_token"] == [475]
    assert [e["kind"] for e in events if e["event"] == "token"] == [
        "initial",
        "rejected",
        "reset",
    ]


def test_conflict_on_a_conditional_write(lab: Lab, box: Box) -> None:
    assert box.sync()[0]
    before = box.server()["Report.EML"]
    box.edit("Report.EML")
    ok, _ = box.sync()
    assert ok and box.same()
    items = box.server()
    assert items["Report.EML"]["tag"] == before["tag"]  # the server never saw the write
    assert "Report (conflict 1).EML" in items  # the client kept its version as a new item
    conflicts = [e for e in lab.events() if e["event"] == "conflict" and box.path in e["resource"]]
    assert len(conflicts) == 1 and conflicts[0]["status"] == 412


def test_corrupt_token_then_the_server_rejects_it(lab: Lab, box: Box) -> None:
    """The initial sync hands out a corrupted collblob; the client sends it back, the server
    itself answers 475, and the client starts over."""
    ok, lines = box.sync()
    assert ok and box.same()
    (fault,) = lab.faults("corrupt")
    sent = [s["request"]["token"] for s in box.summaries() if s.get("kind") == "manifest"]
    assert sent[:2] == [None, fault["token_to"]]
    assert any(line.startswith("manifest (update): 475 Invalid collblob: ") for line in lines)
    assert "rejected by repltap" not in "\n".join(lines)  # the server's own 475


def test_swap_in_another_collections_token(lab: Lab, box: Box, tmp_path: Path) -> None:
    """Inbox is handed Contacts' collblob; the server refuses it for Inbox (475)."""
    contacts = Box(lab, "a-swap", tmp_path, CONTACTS)
    assert contacts.sync()[0]
    ok, lines = box.sync()
    assert ok and box.same()
    (fault,) = lab.faults("swap")
    assert fault["from_collection"].endswith(contacts.path)
    assert any(f"was issued for {contacts.path}" in line for line in lines)


def test_stale_answer_then_catching_up(lab: Lab, box: Box) -> None:
    """The third incremental manifest is answered with the second's answer again: the client
    is handed back the token it sent, sees nothing new, and catches up next round."""
    assert box.sync()[0]
    lab.admin.post("modify", path=box.path + "Hello.EML", subject="Hello again")
    assert box.sync()[0] and box.same()
    lab.admin.post("modify", path=box.path + "Report.EML", subject="Report again")
    assert box.sync()[0]
    assert not box.same()  # the change was hidden behind an older answer
    (fault,) = lab.faults("stale")
    stale = next(s for s in box.summaries() if s.get("fault"))
    assert fault["token_to"] == stale["request"]["token"] != fault["token_from"]
    assert [e["href"].rsplit("/", 1)[1] for e in stale["response"]["entries"]] == ["Hello.EML"]
    codes = [e["code"] for e in lab.events() if e["event"] == "anomaly" and box.path in str(e)]
    assert "token-unchanged-with-changes" in codes  # the tracker sees what the client got
    assert box.sync()[0] and box.same()  # the older token still works: nothing is lost


def test_dropent_is_invisible_and_lost(lab: Lab, box: Box) -> None:
    """A dropped entry cannot be seen by a client: its store lacks the item for good."""
    assert box.sync()[0]
    assert box.sync()[0]
    local = {p.name for p in box.store.iterdir() if not p.name.startswith(".")}
    assert set(box.server()) - local == {"Hello.EML"}  # the first entry of the initial sync
    (fault,) = lab.faults("dropent")
    assert fault["entries"] == [1] and fault["of"] == 5


@pytest.mark.parametrize("name", ["dup", "mix"])
def test_entries_repeated_or_reordered_change_nothing(lab: Lab, tmp_path: Path, name: str) -> None:
    b = Box(lab, f"a-{name}", tmp_path)
    assert b.sync()[0] and b.same()
    assert lab.faults(name)
    lab.admin.post("delete", path=b.path + "Hello.EML")
    lab.admin.post("create", path=b.path + "New.EML", subject="New")
    assert b.sync()[0] and b.same()


def test_pages_served_by_the_proxy(lab: Lab, box: Box) -> None:
    ok, lines = box.sync()
    assert ok and box.same()
    assert [line.split(":")[0] for line in lines if line.startswith("manifest")] == [
        "manifest (initial)",
        "manifest (initial, page 2)",
        "manifest (initial, page 3)",
        "manifest (update)",
    ]
    faults = lab.faults("pages")
    assert [f.get("page") for f in faults] == [1, 2, 3]
    searches = [f for f in lab.flows(quote(box.path)) if f.request.method == "SEARCH"]
    assert [f.response.headers.get("Content-Range") for f in searches[:3]] == [
        "rows 0-1; total=5",
        "rows 0-1; total=3",
        "rows 0-0; total=1",
    ]


def test_differ_210_after_an_upload(lab: Lab, box: Box) -> None:
    assert box.sync()[0]
    box.edit("Meeting.EML")
    ok, lines = box.sync()
    assert ok and any("210 Content Different" in line for line in lines) and box.same()


def test_notags_in_answers(lab: Lab, box: Box) -> None:
    """Downloads and uploads answered without ResourceTag/ETag: the client takes the tag from
    the manifest, and after an upload from the next manifest."""
    assert box.sync()[0] and box.same()
    box.edit("Meeting.EML")
    assert box.sync()[0]
    assert box.sync()[0] and box.same()
    assert {f["method"] for f in lab.faults("notags")} == {"GET", "PUT"}


def test_retype_new_as_change(lab: Lab, box: Box) -> None:
    assert box.sync()[0] and box.same()
    ss = [s for s in box.summaries() if s.get("kind") == "manifest"]
    assert ss[0]["response"]["changes"] == {"new": 0, "change": 5, "delete": 0}


# ================================================================== no fault, no change


def test_no_scenario_or_every_rule_disabled_changes_no_byte(
    mitm_confdir: str, tmp_path: Path
) -> None:
    """Every spec vector through mitmdump without repltap, with repltap and no scenario, and with
    a scenario whose every rule is disabled: client and server receive the same bytes."""
    off = tmp_path / "off.yaml"
    off.write_text(
        "rules:\n"
        + "".join(
            f"  - name: r{i}\n    action: {a}\n    enabled: false\n"
            for i, a in enumerate(
                ["drop", "{type: delay, ms: 1}", "invalid_token", "corrupt_token",
                 "{type: truncate, bytes: 1}", "{type: paginate, rows: 1}", "strip_tags"]
            )
        )
    )  # fmt: skip
    runs = []
    with vector_server() as up:
        for args in (
            [],
            ["-s", SCRIPT],
            ["-s", SCRIPT, "--set", f"repl_faults={off}"],
        ):
            got, received, _ = send_all_vectors(up, ["--flow-detail", "0", *args], mitm_confdir)
            runs.append((got, received))
    assert runs[1] == runs[0]
    assert runs[2] == runs[0]


def test_a_bad_scenario_stops_mitmdump_naming_file_line_and_field(
    tmp_path: Path, mitm_confdir: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    action: drop\n    match: {kind: manifests}\n")
    rc, out = run_mitmdump("-n", "-s", SCRIPT, "--set", f"repl_faults={bad}", confdir=mitm_confdir)
    assert rc == 1
    assert f"repl_faults: {bad}:4: rules[0] (x).match.kind: must be one of" in out
    assert "(did you mean 'manifest'?)" in out


# ================================================================== the library


class Session:
    """A mailbox that changes on both sides between rounds, synchronised through a scenario."""

    def __init__(self, lab: Lab, tmp: Path, user: str) -> None:
        self.box = Box(lab, user, tmp)
        self.lab = lab

    def play(self) -> list[list[str]]:
        """Five rounds of changes; each round is retried until the client finishes one."""
        b, admin = self.box, self.lab.admin
        runs = b.converge()
        steps = [
            lambda: admin.post("create", path=b.path + "Monday.EML", subject="Monday"),
            lambda: b.edit("Report.EML"),
            lambda: (
                admin.post("modify", path=b.path + "Hello.EML", subject="Hello 2"),
                admin.post("delete", path=b.path + "Newsletter.EML"),
            ),
            lambda: (b.store / "Todo.EML").write_bytes(b"Subject: To do\r\n\r\n- one\r\n"),
            lambda: (
                admin.post("create", path=b.path + "Tuesday.EML", subject="Tuesday"),
                admin.post("create", path=b.path + "Wednesday.EML", subject="Wednesday"),
                b.edit("Meeting.EML"),
            ),
        ]
        for step in steps:
            step()
            runs += b.converge()
        return runs


@pytest.fixture
def library_lab(request: pytest.FixtureRequest, tmp_path: Path, mitm_confdir: str) -> Iterator[Lab]:
    lb = start_lab(tmp_path, mitm_confdir, LIBRARY / f"{request.param}.yaml")
    try:
        yield lb
    finally:
        stop_lab(lb)


@pytest.mark.parametrize(
    "library_lab",
    ["flaky-network", "server-reset", "conflict-storm", "truncated-manifests", "token-corruption"],
    indirect=True,
)
def test_the_reference_client_survives_the_library(
    library_lab: Lab, tmp_path: Path, mitm_confdir: str
) -> None:
    """Each scenario of config/faults/ as it ships: the reference client's store ends equal to
    the server's collection, every rule of the scenario was exercised, and the recording,
    read again offline, logs what the live run logged."""
    session = Session(library_lab, tmp_path, "lib")
    session.play()
    assert session.box.same()
    live = library_lab.events()
    fired = {e["rule"] for e in live if e["event"] == "fault"}
    assert library_lab.scenario is not None
    assert fired == {r.name for r in load(library_lab.scenario).rules}
    offline = tmp_path / "offline.jsonl"
    rc, out = run_mitmdump(
        "-n",
        "-r",
        str(library_lab.recording),
        "-s",
        SCRIPT,
        "--set",
        f"repl_log={offline}",
        "--flow-detail",
        "0",
        confdir=mitm_confdir,
    )
    assert rc == 0, out
    replayed = [json.loads(line) for line in offline.read_text().splitlines()]
    # Every event, a flow killed after its answer arrived included (truncate; drop, reset, hang
    # at phase: response), is logged again from the recording as it was live.
    assert [{k: v for k, v in e.items() if k != "ts"} for e in replayed] == [
        {k: v for k, v in e.items() if k != "ts"} for e in live
    ]


# ================================================================== a naive client


class NaiveClient:
    """What a hurried integration writes: it keeps the first collblob it got whatever the server
    says (a 475 is "the server is flaky"), and when a conditional write fails it sends it again,
    then once more without the condition, so that "the user's edit is never lost"."""

    def __init__(self, proxy_port: int, path: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
        self.path = path
        self.collblob: str | None = None
        self.tags: dict[str, str] = {}  # path -> resourcetag

    def close(self) -> None:
        # An open client connection at mitmdump's shutdown makes asyncio print a traceback.
        self.conn.close()

    def call(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Reply:
        self.conn.request(method, path, body=body or None, headers=headers)
        r = self.conn.getresponse()
        return Reply(r.status, r.reason, r.getheaders(), r.read())

    def manifest(self) -> int:
        body = manifest_body(build_sql(self.path), self.collblob, [])
        rep = self.call("SEARCH", self.path, {"Content-Type": "text/xml"}, body)
        if rep.status == 207:
            req = exchange.decode_request("SEARCH", self.path, {}, body)
            resp = exchange.decode_response(req, rep.status, rep.headers, rep.body)
            self.collblob = resp.token or self.collblob
            for e in resp.entries:
                if e["href"] and e["tag"]:
                    self.tags[urlsplit(e["href"]).path] = e["tag"]
        return rep.status  # anything else: keep the collblob and carry on

    def save(self, path: str, content: bytes) -> list[int]:
        statuses = []
        for headers in ({"If": f"(<{self.tags[path]}>)"},) * 2 + ({},):
            rep = self.call("PUT", path, {"Content-Type": "message/rfc822", **headers}, content)
            statuses.append(rep.status)
            if rep.status != 412:
                break
        return statuses


NAIVE = """\
rules:
  - name: reset
    match: {kind: manifest, initial: false, nth: 1}
    action: invalid_token
  - name: storm
    action: conflict
    times: 2
"""


@pytest.fixture(scope="module")
def naive_lab(tmp_path_factory: pytest.TempPathFactory, mitm_confdir: str) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("naive")
    (tmp / "naive.yaml").write_text(NAIVE)
    lb = start_lab(tmp, mitm_confdir, tmp / "naive.yaml")
    try:
        yield lb
    finally:
        stop_lab(lb)


def test_a_naive_client_that_retries_412_blindly_is_caught(naive_lab: Lab, tmp_path: Path) -> None:
    """The tracker's anomalies name what the naive client did wrong: the same stale write again
    (retry-without-refresh), then a write without a condition (unconditional-write)."""
    box = Box(naive_lab, "naive-412", tmp_path)
    client = NaiveClient(naive_lab.proxy.port, box.path)
    try:
        assert client.manifest() == 207
        report = box.path + "Report.EML"
        assert client.save(report, b"Subject: mine\r\n\r\nmine\r\n") == [412, 412, 204]
    finally:
        client.close()
    assert box.server()["Report.EML"]["content"] == b"Subject: mine\r\n\r\nmine\r\n"  # overwritten
    anomalies = [e for e in naive_lab.events() if e["event"] == "anomaly"]
    assert [(e["code"], e["severity"]) for e in anomalies if e.get("resource") == report] == [
        ("retry-without-refresh", "error"),
        ("unconditional-write", "warning"),
    ]


def test_a_naive_client_that_ignores_475_is_caught(naive_lab: Lab, tmp_path: Path) -> None:
    box = Box(naive_lab, "naive-475", tmp_path)
    client = NaiveClient(naive_lab.proxy.port, box.path)
    try:
        assert client.manifest() == 207
        rejected = client.collblob
        assert client.manifest() == 475  # ignored: the client keeps its collblob
        assert client.manifest() == 207  # the same collblob again
    finally:
        client.close()
    events = [e for e in naive_lab.events() if e.get("collection") == box.path]
    assert [e["sent"] for e in events if e["event"] == "invalid_token"] == [rejected]
    codes = [e["code"] for e in events if e["event"] == "anomaly"]
    assert codes == ["rejected-token-reused"], codes


# ================================================================== python-caldav and Radicale

CALDAV = """\
seed: 4
rules:
  - name: pages
    description: the initial sync comes in pages of one member (507 + a partial token)
    match: {kind: manifest, initial: true}
    action: {type: paginate, rows: 1}
  - name: reset
    description: the first incremental sync-token is refused, as Radicale refuses one
    match: {kind: manifest, initial: false, nth: 1}
    action: invalid_token
  - name: conflict
    description: the first write conditional on an ETag gets 412
    match: {method: PUT, header: {If-Match: '"*'}, nth: 1}
    action: conflict
"""


def _direct(base: str, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """A request straight to Radicale, as another client: never through repltap."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname or "", u.port or 80, timeout=10)
    try:
        headers = {"Authorization": "Basic YWxpY2U6eA==", "Content-Type": "text/calendar"}
        if method == "PROPFIND":
            headers |= {"Depth": "1", "Content-Type": "text/xml"}
        conn.request(method, path, body=body or None, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _members(base: str) -> set[str]:
    """The calendar's events, by path, as Radicale lists them."""
    status, body = _direct(base, "PROPFIND", RADICALE_CALENDAR)
    assert status == 207, body
    hrefs = re.findall(rb"<(?:\w+:)?href>([^<]+)</(?:\w+:)?href>", body)
    return {h.decode() for h in hrefs if h.decode().endswith(".ics")}


def test_caldav_against_radicale(tmp_path: Path, mitm_confdir: str) -> None:
    """Peers: python-caldav 3.6 against Radicale 3.9, through repltap in reverse mode. An initial
    sync split into three pages (each with a 507 for the calendar and a partial token), a
    refused sync-token in Radicale's own style (403 + valid-sync-token), and a 412 on an
    If-Match write: python-caldav follows the pages, falls back to a full listing, and a reload
    lets the write through; its objects end equal to Radicale's calendar."""
    (tmp_path / "caldav.yaml").write_text(CALDAV)
    with radicale(tmp_path / "radicale") as base:
        for i in range(3):
            path = f"{RADICALE_CALENDAR}seed-{i}.ics"
            assert _direct(base, "PUT", path, ical(f"seed-{i}", i).encode())[0] == 201
        rec, log = tmp_path / "rec.mitm", tmp_path / "events.jsonl"
        m = start_mitmdump(
            "--mode",
            f"reverse:{base}",
            "--set",
            "connection_strategy=lazy",
            "-s",
            SCRIPT,
            "--set",
            f"repl_faults={tmp_path / 'caldav.yaml'}",
            "--set",
            f"repl_log={log}",
            "-w",
            str(rec),
            "--flow-detail",
            "0",
            confdir=mitm_confdir,
        )
        proxy = f"http://127.0.0.1:{m.port}"
        client = caldav.DAVClient(
            url=proxy + RADICALE_CALENDAR, username=RADICALE_USER, password="x"
        )
        try:
            cal = client.calendar(url=proxy + RADICALE_CALENDAR)
            objs = cal.get_objects_by_sync_token(load_objects=True)
            held = {urlsplit(str(o.url)).path for o in objs}
            assert held == _members(base) and len(held) == 3 and not objs.truncated
            # Another client changes the calendar behind repltap's back.
            assert _direct(base, "DELETE", f"{RADICALE_CALENDAR}seed-0.ics")[0] in (200, 204)
            new = ical("later", "later").encode()
            assert _direct(base, "PUT", f"{RADICALE_CALENDAR}later.ics", new)[0] == 201
            objs.sync()  # the token is refused: python-caldav lists everything instead
            held = {urlsplit(str(o.url)).path for o in objs.objects}
            assert held == _members(base)
            assert str(objs.sync_token).startswith("fake-")  # and stays off sync-collection
            ev = next(o for o in objs.objects if str(o.url).endswith("seed-1.ics"))
            ev.load()
            ev.icalendar_component["SUMMARY"] = "edited through repltap"
            with pytest.raises(caldav_error.DAVError):
                ev.save()  # 412: the write never reached Radicale
            ev.load()
            ev.icalendar_component["SUMMARY"] = "edited through repltap"
            ev.save()
        finally:
            client.close()
            assert m.stop() == 0, m.output()
        status, body = _direct(base, "GET", f"{RADICALE_CALENDAR}seed-1.ics")
        assert status == 200 and b"edited through repltap" in body
    out = m.output()
    assert "Traceback" not in out and "Addon error" not in out, out
    events = [json.loads(line) for line in log.read_text().splitlines()]
    faults = [(e["rule"], e.get("page"), e.get("status")) for e in events if e["event"] == "fault"]
    assert faults == [
        ("pages", 1, None),
        ("pages", 2, None),
        ("pages", 3, None),
        ("reset", None, 403),
        ("conflict", None, 412),
    ]
    manifests = [e for e in events if e["event"] == "manifest"]
    assert [(m["status"], m["truncated"]) for m in manifests] == [
        (207, True),
        (207, True),
        (207, False),
        (403, False),
    ]
    (invalid,) = [e for e in events if e["event"] == "invalid_token"]
    assert invalid["status"] == 403 and invalid["protocol"] == "rfc6578"
    assert [e["status"] for e in events if e["event"] == "conflict"] == [412]
