"""End to end: record a replication session through a real ``mitmdump -s addons/repl.py
--set repl_record=...``, stop the server, and answer the client from the recording alone
(``repl_replay``), with the client re-running its sync from the start, from a mid-chain token,
polling more often than recorded, and with its XML written differently; forward mode; the
client-side replay tool; and mitmweb showing the sample recordings decoded.

Peers: the reference server (in-process thread) and the reference client (in-process), with
mitmdump as a real subprocess; python-caldav against Radicale (a subprocess); mitmweb and
Debian's chromium (subprocesses); mitmproxy's own client replay (``mitmdump -C``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import socket
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import caldav
import pytest
from caldav.lib import error as caldav_error
from mitmproxy import io

from repltap import cli
from repltap.mitm.record import index_path
from repltap.offline import read_flows
from repltap.sim.admin import AdminClient
from repltap.sim.client import STATE_FILE, State, SyncError, build_sql, sync
from repltap.sim.server import Settings, serve_in_thread, stop_server
from tests.harness.canned import CannedServer, RawResponse
from tests.harness.mitm import (
    MitmProc,
    free_port,
    raw_exchange,
    run_mitmdump,
    split_response,
    start_mitmdump,
)
from tests.harness.peers import RADICALE_CALENDAR, RADICALE_USER, ical, radicale
from tests.replay import mitmweb_shot
from tests.report import browser, png

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "addons" / "repl.py")
INBOX = "/exchange/alice/Inbox/"
PAGE = 2


# ----------------------------------------------------------------------------- helpers


class ConnectionCounter:
    """A TCP listener that only counts the connections made to it (and closes them)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(2)


def _clean(m: MitmProc) -> str:
    code, out = m.stop(), m.output()
    assert code == 0, out
    assert "Addon error" not in out and not re.search(r'File "[^"]*addons/repl', out), out
    return out


@dataclass
class Replayer:
    """A running mitmdump that answers from recordings."""

    proc: MitmProc
    log: Path  # its repl_log
    output: str = ""  # what it printed, once stopped

    @property
    def port(self) -> int:
        return self.proc.port

    def url(self, path: str = INBOX) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def events(self, event: str = "replay") -> list[dict[str, Any]]:
        return events(self.log, event)


@contextlib.contextmanager
def replayer(
    tmp: Path, confdir: str, *recordings: Path, upstream: str | None = None, mode: str = "strict"
) -> Iterator[Replayer]:
    """mitmdump answering from ``recordings``, checked clean when it stops."""
    log = tmp / f"replay-{free_port()}.jsonl"
    upstream = upstream or f"http://127.0.0.1:{free_port()}"  # nobody listens there
    args = ["--mode", f"reverse:{upstream}", "--set", "connection_strategy=lazy", "-s", SCRIPT]
    for recording in recordings:
        args += ["--set", f"repl_replay={recording}"]
    args += ["--set", f"repl_replay_mode={mode}", "--set", f"repl_log={log}"]
    r = Replayer(start_mitmdump(*args, "--flow-detail", "0", confdir=confdir), log)
    try:
        yield r
    finally:
        r.output = _clean(r.proc)


def events(log: Path, event: str = "replay") -> list[dict[str, Any]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == event]


def items(store: Path) -> dict[str, tuple[bytes, str, str]]:
    """A store as name → (bytes, repl-uid, resourcetag); every file in it is a tracked item."""
    state = State.load(store / STATE_FILE)
    assert state is not None
    files = {p.name for p in store.iterdir() if not p.name.startswith(".")}
    assert files == {i.name for i in state.items.values()}
    return {i.name: ((store / i.name).read_bytes(), i.uid, i.tag) for i in state.items.values()}


def edit_meeting(store: Path) -> None:
    p = store / "Meeting.EML"
    p.write_bytes(p.read_bytes().replace(b"3. Any other business", b"3. Lunch\r\n4. AOB"))


def run_sync(url: str, store: Path) -> list[str]:
    lines: list[str] = []
    sync(url, store, page_size=PAGE, out=lines.append)
    return lines


# ----------------------------------------------------------------------------- the recording


@dataclass
class Session:
    rec: Path
    snapshots: dict[str, Path]  # the client's store after each round
    final: dict[str, tuple[bytes, str, str]]
    tokens: list[str]  # every collblob the server handed out, in order
    server_url: str
    server_port: int


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory, mitm_confdir: str) -> Session:
    """Four rounds of the reference client through mitmdump with repl_record: the initial paged
    sync and a quiet poll; server-side changes (new, change, delete), paged; a client edit
    (PUT If, then the acknowledging manifest); a quiet poll. The server is stopped at the end."""
    tmp = tmp_path_factory.mktemp("replay-session")
    server, thread = serve_in_thread(tmp / "data", settings=Settings())
    rec = tmp / "session.mitm"
    proxy = start_mitmdump(
        "--mode", f"reverse:{server.url}", "--set", "connection_strategy=lazy", "-s", SCRIPT,
        "--set", f"repl_record={rec}", "--flow-detail", "0", confdir=mitm_confdir,
    )  # fmt: skip
    url = f"http://127.0.0.1:{proxy.port}{INBOX}"
    admin = AdminClient(server.url)
    store = tmp / "store"
    snapshots = {}
    try:
        run_sync(url, store)
        snapshots["after-1"] = Path(shutil.copytree(store, tmp / "after-1"))
        admin.post("create", path=INBOX + "New.EML", subject="New", body="new\r\n")
        admin.post("modify", path=INBOX + "Hello.EML", subject="Hello 2", body="changed\r\n")
        admin.post("delete", path=INBOX + "Newsletter.EML")
        run_sync(url, store)
        snapshots["after-2"] = Path(shutil.copytree(store, tmp / "after-2"))
        edit_meeting(store)
        run_sync(url, store)
        snapshots["after-3"] = Path(shutil.copytree(store, tmp / "after-3"))
        run_sync(url, store)
    finally:
        _clean(proxy)
        stop_server(server, thread)
    flows = read_flows(rec)
    tokens = []
    for f in flows:
        t = f.metadata["repl"]["response"].get("token") if f.request.method == "SEARCH" else None
        if t and t not in tokens:
            tokens.append(t)
    return Session(rec, snapshots, items(store), tokens, server.url, server.server_address[1])


def test_the_recording_is_indexed(session: Session) -> None:
    """Peer: the reference server and client. The sidecar says what the recording holds."""
    index = json.loads(index_path(session.rec).read_text())
    flows = read_flows(session.rec)
    assert index["flows"] == len(flows) == index["replication_flows"]
    assert index["redacted"] is True and index["errors"] == 0
    assert index["methods"]["SEARCH"] == sum(f.request.method == "SEARCH" for f in flows)
    [c] = index["collections"]
    assert (c["collection"], c["protocol"], c["initial_syncs"]) == (INBOX, "exchange", 1)
    assert c["scope"] and "SHALLOW TRAVERSAL" in c["scope"]
    assert c["changes"] == {"new": 6, "change": 1, "delete": 1}
    [chain] = c["chains"]
    assert chain["start"] == "initial" and chain["tokens"] == session.tokens
    first, last = flows[0].request.timestamp_start, flows[-1].response.timestamp_end  # type: ignore[union-attr]
    assert index["time"]["seconds"] == round(last - first, 3)
    assert all(f.metadata["repl.record"]["redacted"] for f in flows)


def test_strict_replay_reruns_the_session_with_no_server(
    session: Session, tmp_path: Path, mitm_confdir: str
) -> None:
    """Peer: the reference client against a recording of the reference server; the upstream
    is a listener that counts connections: strict mode opens none."""
    counter = ConnectionCounter()
    try:
        with replayer(
            tmp_path, mitm_confdir, session.rec, upstream=f"http://127.0.0.1:{counter.port}"
        ) as r:
            url = r.url()
            store = tmp_path / "store"
            run_sync(url, store)
            run_sync(url, store)
            edit_meeting(store)
            run_sync(url, store)
            run_sync(url, store)
        assert items(store) == session.final
        assert counter.accepted == 0
        kinds = [e["kind"] for e in r.events()]
        assert kinds and set(kinds) == {"hit"}
        assert len(kinds) == len(read_flows(session.rec))
        assert "0 misses" in r.output
    finally:
        counter.close()


def test_resuming_from_a_mid_chain_token(
    session: Session, tmp_path: Path, mitm_confdir: str
) -> None:
    """Peer: the reference client, resumed from its store after the second round (a collblob
    from the middle of the recorded chain), against the recording with no server."""
    store = Path(shutil.copytree(session.snapshots["after-2"], tmp_path / "store"))
    state = State.load(store / STATE_FILE)
    assert state is not None and state.collblob in session.tokens[1:-1]
    with replayer(tmp_path, mitm_confdir, session.rec) as r:
        url = r.url()
        edit_meeting(store)
        run_sync(url, store)
        run_sync(url, store)
    assert items(store) == session.final
    assert {e["kind"] for e in r.events()} == {"hit"}


def test_polling_more_often_than_recorded(
    session: Session, tmp_path: Path, mitm_confdir: str
) -> None:
    """Peer: the reference client syncing more often than recorded: the same manifest asked
    again gets the next recorded answer, then keeps getting the last one; nothing runs dry."""
    store = tmp_path / "store"
    with replayer(tmp_path, mitm_confdir, session.rec) as r:
        url = r.url()
        run_sync(url, store)
        # Asked again, the quiet poll's collblob gets its next recorded answer: round 2's changes.
        extra = run_sync(url, store)
        assert any("1 new, 1 change" in line for line in extra), extra
        edit_meeting(store)
        run_sync(url, store)
        for _ in range(4):  # the last recorded answer (no changes) keeps coming
            assert any("no changes" in line for line in run_sync(url, store))
    assert items(store) == session.final
    hits = r.events()
    assert {e["kind"] for e in hits} == {"hit"}
    assert sum(e["repeat"] for e in hits) == 3


def _search(token: str | None, port: int, acks: tuple[str, ...] = ()) -> bytes:
    """The reference client's manifest request in other bytes: a default namespace, another
    prefix, whitespace, single quotes, the SQL in CDATA, the initial collblob as whitespace."""
    blob = (
        f"<x:collblob>\n      {token}\n    </x:collblob>" if token else "<x:collblob> </x:collblob>"
    )
    tags = "".join(f"\n      <x:resourcetag>{t}</x:resourcetag>" for t in acks)
    body = (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        "<searchrequest xmlns='DAV:' xmlns:x='http://schemas.microsoft.com/repl/'>\n"
        f"  <x:repl>\n    {blob}"
        + (f"\n    <x:resourcetaglist>{tags}\n    </x:resourcetaglist>" if acks else "")
        + f"\n  </x:repl>\n  <sql><![CDATA[{build_sql(INBOX)}]]></sql>\n</searchrequest>\n"
    ).encode()
    return (
        f"SEARCH {INBOX} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/xml\r\n"
        f"Range: rows=0-{PAGE - 1}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def test_other_bytes_match_and_an_unknown_token_is_named(
    session: Session, tmp_path: Path, mitm_confdir: str
) -> None:
    """Peers: raw HTTP and the reference client against the recording: equivalent XML with
    other bytes gets the recorded answer; an unknown collblob gets a 500 naming the closest
    recorded requests, and a replay event."""
    flows = read_flows(session.rec)
    manifests = [f for f in flows if f.request.method == "SEARCH"]
    mid = manifests[2]  # the third page of the initial sync: a mid-chain collblob
    with replayer(tmp_path, mitm_confdir, session.rec) as r:
        for token, recorded in (
            (None, manifests[0]),
            (mid.metadata["repl"]["request"]["token"], mid),
        ):
            raw = _search(token, r.port)
            assert raw.split(b"\r\n\r\n", 1)[1] != recorded.request.content
            status, _, body = split_response(raw_exchange(r.port, raw))
            assert recorded.response is not None
            assert (status, body) == (recorded.response.status_code, recorded.response.content)
        status, headers, body = split_response(raw_exchange(r.port, _search("AAAAforged", r.port)))
        assert status == 500 and ("Repltap-Replay", "miss") in headers
        text = body.decode()
        assert text.startswith(
            f"repltap replay (strict): no recorded answer for SEARCH {INBOX}: collblob AAAAforged"
        )
        assert text.count("[differs in: token]") == 3
        assert (
            "collblobs recorded for /exchange/alice/Inbox/ (a client may resume from any)" in text
        )
        # The reference client with a damaged state file says what the replayer said.
        store = Path(shutil.copytree(session.snapshots["after-1"], tmp_path / "store"))
        state_file = store / STATE_FILE
        state_file.write_text(state_file.read_text().replace(session.tokens[2], "AAAAforged"))
        with pytest.raises(SyncError, match=r"500 .*repltap replay \(strict\): no recorded answer"):
            run_sync(r.url(), store)
    misses = [e for e in r.events() if e["kind"] == "miss"]
    assert len(misses) == 2 and {e["sent"] for e in misses} == {"AAAAforged"}
    assert all(e["status"] == 500 and len(e["closest"]) == 3 for e in misses)
    assert [e["kind"] for e in r.events()][:2] == ["hit", "hit"]


def test_forward_mode_sends_misses_upstream(
    session: Session, tmp_path: Path, mitm_confdir: str
) -> None:
    """Peer: a canned upstream that answers 475 to any SEARCH: recorded requests are answered
    from the recording and never reach it; an unknown collblob goes to it."""
    with CannedServer() as up:
        up.route("SEARCH", INBOX, RawResponse(475, "Invalid collblob", [], b"475 Invalid\n"))
        with replayer(tmp_path, mitm_confdir, session.rec, upstream=up.url, mode="forward") as r:
            status, _, _ = split_response(raw_exchange(r.port, _search(None, r.port)))
            assert status == 207 and up.requests == []
            status, _, _ = split_response(raw_exchange(r.port, _search("unknown", r.port)))
            assert status == 475 and len(up.requests) == 1
        assert [e["kind"] for e in r.events()] == ["hit", "forward"]
        [fwd] = [e for e in r.events() if e["kind"] == "forward"]
        assert fwd["mode"] == "forward" and fwd["sent"] == "unknown"
        assert [e["status"] for e in r.events("manifest")] == [207, 475]


# ----------------------------------------------------------------------------- client side


def test_client_replay_translates_tokens_and_names_the_divergence(
    session: Session, tmp_path: Path, mitm_confdir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Peers: a fresh reference server (same seed, another signing key) at the recorded
    address; mitmproxy's own client replay (``mitmdump -C``) and ``repltap replay-client``."""
    flows = read_flows(session.rec)
    # The first round ends with its quiet poll (the first manifest with no changes).
    quiet = next(
        i for i, f in enumerate(flows) if (f.metadata["repl"]["response"] or {}).get("no_changes")
    )
    round1 = flows[: quiet + 1]
    first_round = tmp_path / "round1.mitm"
    with first_round.open("wb") as fo:
        w = io.FlowWriter(fo)
        for f in round1:
            w.add(f)
    server, thread = serve_in_thread(tmp_path / "fresh", port=session.server_port)
    try:
        # mitmproxy's client replay sends the recorded collblobs: another key, so 475.
        code, out = run_mitmdump(
            "-n", "-C", str(session.rec), "-w", str(tmp_path / "stock.mitm"), "--flow-detail", "0",
            confdir=mitm_confdir,
        )  # fmt: skip
        assert code == 0, out
        stock = [f for f in read_flows(tmp_path / "stock.mitm") if f.request.method == "SEARCH"]
        assert stock[0].response is not None and stock[0].response.status_code == 207
        assert {f.response.status_code for f in stock[1:] if f.response} == {475}

        # The first round alone: every token translated, every answer as recorded.
        rc = cli.main(["replay-client", str(first_round), "--target", server.url])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert f"{len(round1)} sent, {len(round1)} answered as recorded, 0 diverged" in out
        assert "rewrote 1 token(s)/tag(s) in the body" in out

        # The whole session: it parts where the recorded server had out-of-band changes.
        report = tmp_path / "steps.json"
        rc = cli.main(
            ["replay-client", str(session.rec), "--target", server.url, "--json", str(report)]
        )
        out = capsys.readouterr().out
        assert rc == 1, out
        doc = json.loads(report.read_text())
        *same, first = doc["steps"]
        assert not any(s.get("differences") for s in same)
        assert first["method"] == "SEARCH" and first["number"] == len(round1) + 1
        assert first["differences"] == [
            "token: recorded a new one, live none",
            "changes: recorded 1 new, 1 change, live no changes; only recorded: "
            f"change {INBOX}Hello.EML, new {INBOX}New.EML",
        ]
        assert first["notes"] == ["rewrote 1 token(s)/tag(s) in the body"]
        assert "stopped at #" in out
        assert all(live != rec for rec, live in doc["translated"]["tokens"].items())
    finally:
        stop_server(server, thread)


# ----------------------------------------------------------------------------- RFC 6578


def _caldav_session(url: str) -> tuple[list[str], list[str]]:
    """python-caldav: initial sync, create, sync, modify, sync, sync again. Returns the tokens
    and what each sync listed."""
    client = caldav.DAVClient(url=url, username=RADICALE_USER, password="pw", auth_type="basic")
    try:
        cal = client.calendar(url=url)
        tokens, listed = [], []
        for step in range(5):
            if step == 1:
                cal.add_event(ical("replay-e2e", "one"))
            if step == 2:
                ev = cal.event_by_uid("replay-e2e")
                ev.icalendar_component["SUMMARY"] = "two"
                ev.save()
            got = cal.get_objects_by_sync_token(
                tokens[-1] if tokens else None, disable_fallback=True
            )
            tokens.append(str(got.sync_token))
            listed.append(",".join(sorted(urllib.parse.urlsplit(str(o.url)).path for o in got)))
        return tokens, listed
    finally:
        client.close()


def test_radicale_session_recorded_redacted_and_replayed(tmp_path: Path, mitm_confdir: str) -> None:
    """Peers: python-caldav 3.6 against Radicale 3.9 through mitmdump with repl_record (Basic
    credentials on every request), then the same client against the recording with Radicale
    stopped: the same tokens and listings, a mid-chain token, other XML bytes, an unknown token."""
    rec = tmp_path / "caldav.mitm"
    with radicale(tmp_path / "radicale") as base:
        proxy = start_mitmdump(
            "--mode", f"reverse:{base}", "--set", "connection_strategy=lazy", "-s", SCRIPT,
            "--set", f"repl_record={rec}", "--flow-detail", "0", confdir=mitm_confdir,
        )  # fmt: skip
        try:
            tokens, listed = _caldav_session(f"http://127.0.0.1:{proxy.port}{RADICALE_CALENDAR}")
        finally:
            _clean(proxy)
    secret = base64.b64encode(f"{RADICALE_USER}:pw".encode())
    assert secret not in rec.read_bytes()
    flows = read_flows(rec)
    assert all(
        f.request.headers.get("Authorization") == "Basic [redacted by repltap]" for f in flows
    )
    index = json.loads(index_path(rec).read_text())
    assert index["redaction"]["removed"]["request authorization"] == len(flows)
    [c] = index["collections"]
    assert c["protocol"] == "rfc6578" and c["chains"][0]["tokens"][: len(set(tokens))] == list(
        dict.fromkeys(tokens)
    )

    with replayer(tmp_path, mitm_confdir, rec) as r:
        url = r.url(RADICALE_CALENDAR)
        assert _caldav_session(url) == (tokens, listed)
        client = caldav.DAVClient(url=url, username=RADICALE_USER, password="pw", auth_type="basic")
        try:
            cal = client.calendar(url=url)
            mid = cal.get_objects_by_sync_token(tokens[2], disable_fallback=True)
            assert mid.sync_token == tokens[3]
            with pytest.raises(caldav_error.DAVError):
                cal.get_objects_by_sync_token("http://example.invalid/nope", disable_fallback=True)
        finally:
            client.close()
        body = (
            "<?xml version='1.0'?>\n<s:sync-collection xmlns:s='DAV:'>\n"
            f"  <s:sync-token>{tokens[1]}</s:sync-token>\n  <s:sync-level>1</s:sync-level>\n"
            "  <s:prop><s:getetag/></s:prop>\n</s:sync-collection>\n"
        ).encode()
        raw = (
            f"REPORT {RADICALE_CALENDAR} HTTP/1.1\r\nHost: x\r\nDepth: 1\r\nContent-Type: "
            f"application/xml\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        status, _, got = split_response(raw_exchange(r.port, raw))
        recorded = next(f for f in flows if f.metadata["repl"]["request"].get("token") == tokens[1])
        assert recorded.response is not None and status == 207
        assert got == recorded.response.raw_content  # the recorded bytes (gzip, as Radicale sent)
    kinds = [e["kind"] for e in r.events()]
    assert kinds.count("miss") == 1 and set(kinds) == {"hit", "miss"}
    [miss] = [e for e in r.events() if e["kind"] == "miss"]
    assert miss["protocol"] == "rfc6578" and miss["sent"] == "http://example.invalid/nope"


# ----------------------------------------------------------------------------- mitmweb


def test_mitmweb_shows_the_sample_recordings_decoded(tmp_path: Path, mitm_confdir: str) -> None:
    """Peers: mitmweb (``-r recordings/X.mitm -s addons/repl.py``), through its own REST API,
    and Debian's headless chromium showing a decoded flow."""
    for name, protocol in (
        ("exchange-reference.mitm", "exchange"),
        ("radicale-caldav.mitm", "rfc6578"),
    ):
        recording = ROOT / "recordings" / name
        index = json.loads(index_path(recording).read_text())
        assert index["redacted"] is True and index["redaction"]["removed"]
        web = mitmweb_shot.start(recording, mitm_confdir)
        try:
            status, flows = web.api("GET", "/flows")
            assert status == 200 and len(flows) == index["flows"]
            firsts = [(f.get("comment") or "").splitlines()[0] for f in flows]
            assert (
                sum(c.startswith("manifest ") for c in firsts)
                == index["collections"][0]["manifests"]
            )
            assert all("🔒 credentials redacted" in (f.get("comment") or "") for f in flows)
            shown = mitmweb_shot.showcase(flows)
            status, view = web.api("GET", f"/flows/{shown['id']}/response/content/auto.json")
            assert status == 200 and view["view_name"] == "WebDAV Replication"
            assert view["text"].startswith(f"== WebDAV replication ({protocol}): manifest ")
            status, state = web.api("GET", "/state")
            assert "webdav replication" in state["contentViews"]
            if protocol == "exchange":
                assert "changetype  href" in view["text"]
                if not browser.available():
                    pytest.fail(browser.MISSING, pytrace=False)
                shot = tmp_path / "mitmweb.png"
                mitmweb_shot.screenshot(web, shown["id"], shot, tmp_path / "profile")
                img = png.read(shot.read_bytes())
                assert (img.width, img.height) == mitmweb_shot.SIZE
                pixels = Counter(px for row in img.rows[::4] for px in row[::4])
                assert len(pixels) > 50, "hardly any colours: a blank page?"
                _, most = pixels.most_common(1)[0]
                assert most < 0.8 * sum(pixels.values()), "one colour covers most of the page"
        finally:
            web.stop()
