"""RFC 6578 end to end against real peers that nobody on this team wrote.

Real servers (Radicale, Xandikos, wsgidav from PyPI; tests/harness/peers.py) on loopback with
throwaway storage, real clients (python-caldav, caldav-server-tester, Debian's litmus), and a
real ``mitmdump -s addons/repl.py --set repl_log=...`` in between, in regular and in reverse
proxy mode. The events are read back from the JSON Lines log, the wire from a ``-w`` recording.
What each peer does on the wire is in ../shared/spec/rfc6578-peers.md; every quirk asserted
here was seen on the wire by these tests.

A missing peer (a console script or the litmus binary) fails these tests; it never skips them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import caldav
import pytest
from caldav.collection import Calendar
from caldav.lib import error as caldav_error
from mitmproxy import http as mhttp
from mitmproxy import io as mio

from tests.harness.mitm import MitmProc, start_mitmdump
from tests.harness.peers import (
    RADICALE_CALENDAR,
    RADICALE_USER,
    XANDIKOS_CALENDAR,
    find_peer_exe,
    ical,
    radicale,
    wsgidav,
    xandikos,
)

pytestmark = pytest.mark.e2e

SCRIPT = str(Path(__file__).resolve().parents[2] / "addons" / "repl.py")
INVALID_TOKEN = "http://example.invalid/repltap-never-issued"
EVENT_NAME = "repltap-e2e.ics"
SEED_NAME = "repltap-seed.ics"
HEX40 = re.compile(r"[0-9a-f]{40}")
RADICALE_TOKEN = re.compile(r"http://radicale\.org/ns/sync/[0-9a-f]{64}")

Event = dict[str, Any]


@dataclass(frozen=True)
class Peer:
    name: str
    start: Callable[[Path], AbstractContextManager[str]]
    calendar: str  # the calendar collection's path
    tester_path: str  # where caldav-server-tester starts (a principal or the root)
    invalid_status: int  # the answer to a sync-token the server never issued


PEERS = {
    "radicale": Peer("radicale", radicale, RADICALE_CALENDAR, f"/{RADICALE_USER}/", 403),
    "xandikos": Peer("xandikos", xandikos, XANDIKOS_CALENDAR, "/", 412),
}


# ----------------------------------------------------------------------------- helpers


def _events(path: Path) -> list[Event]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _flows(path: Path) -> list[mhttp.HTTPFlow]:
    with path.open("rb") as f:
        return [fl for fl in mio.FlowReader(f).stream() if isinstance(fl, mhttp.HTTPFlow)]


def _assert_clean(m: MitmProc) -> None:
    """mitmdump exited 0 and no addon raised (safecall logs "Addon error" and goes on).

    mitmproxy itself may log a CancelledError traceback for a keep-alive connection still open
    at shutdown; only tracebacks through repltap's code count.
    """
    code = m.stop()
    out = m.output()
    assert code == 0, out
    assert "Addon error" not in out, out
    assert not re.search(r'File "[^"]*addons/repl', out), out


@contextlib.contextmanager
def _repltap(
    tmp: Path, mode: str, upstream: str | None, confdir: str
) -> Iterator[tuple[MitmProc, Path, Path]]:
    """mitmdump with repltap; yields (proc, event log, recording). Checked clean on exit."""
    log, rec = tmp / "events.jsonl", tmp / "session.mitm"
    args = ["-s", SCRIPT, "--set", f"repl_log={log}", "-w", str(rec), "--flow-detail", "0"]
    if mode == "reverse":
        assert upstream
        args = ["--mode", f"reverse:{upstream}", "--set", "connection_strategy=lazy", *args]
    m = start_mitmdump(*args, confdir=confdir)
    try:
        yield m, log, rec
    finally:
        _assert_clean(m)


def _direct(
    base: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    """A second client talking to the server directly, out of repltap's sight."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=10)
    hdrs = {"Authorization": "Basic YWxpY2U6eA=="}  # alice:x (Radicale: owner_only)
    hdrs.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


@dataclass
class Run:
    """What python-caldav saw, step by step, to compare with what repltap logged."""

    t: list[str] = field(default_factory=list)  # tokens t0.. as caldav got them
    etags: list[str] = field(default_factory=list)  # e1 (create), e2 (modify), e3 (other client)
    href: str = ""
    stale_error: str = ""
    invalid_error: Exception | None = None


def _scenario(peer: Peer, cal: Calendar, base: str) -> Run:
    """initial sync; create, sync; modify, sync; another client modifies, sync; a stale write
    (412); delete, sync; an old token; an invalid token."""
    run = Run()

    def sync(token: str | None) -> str:
        got = cal.get_objects_by_sync_token(token, disable_fallback=True)
        assert got.sync_token and isinstance(got.sync_token, str)
        run.t.append(got.sync_token)
        return got.sync_token

    sync(None)  # t0
    ev = cal.add_event(ical("repltap-e2e", "one"))
    run.href = urllib.parse.urlsplit(str(ev.url)).path
    assert run.href == peer.calendar + EVENT_NAME
    assert ev.etag
    run.etags.append(ev.etag)
    sync(run.t[0])  # t1
    ev.icalendar_component["SUMMARY"] = "two"
    ev.save()
    assert ev.etag and ev.etag != run.etags[0]
    run.etags.append(ev.etag)
    sync(run.t[1])  # t2
    # Another client changes the event behind repltap's back: only the manifest can tell.
    status, headers = _direct(
        base,
        "PUT",
        run.href,
        ical("repltap-e2e", "three").encode(),
        {"Content-Type": "text/calendar; charset=utf-8"},
    )
    assert status in (200, 204) and headers.get("etag"), (status, headers)
    run.etags.append(headers["etag"])
    sync(run.t[2])  # t3: the event's ETag changes via manifest
    # Our client's copy is stale now: its conditional write must fail.
    ev.icalendar_component["SUMMARY"] = "four"
    with pytest.raises(caldav_error.DAVError) as stale:
        ev.save()
    run.stale_error = type(stale.value).__name__
    ev.delete()
    sync(run.t[3])  # t4
    sync(run.t[1])  # t5: an old token
    with pytest.raises(caldav_error.DAVError) as invalid:
        cal.get_objects_by_sync_token(INVALID_TOKEN, disable_fallback=True)
    run.invalid_error = invalid.value
    return run


def _seed(peer: Peer, base: str) -> None:
    """Before repltap looks: an event is created and deleted (Radicale remembers deletions)."""
    path = peer.calendar + SEED_NAME
    body = ical("repltap-seed", "seed").encode()
    assert _direct(base, "PUT", path, body, {"Content-Type": "text/calendar"})[0] == 201
    assert _direct(base, "DELETE", path)[0] in (200, 204)


def _by_flow(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in events:
        out.setdefault(e["flow"], []).append(e)
    return out


def _brief(events: list[Event]) -> list[str]:
    """One line an event, for assertion messages."""
    keys = ("event", "protocol", "code", "via", "method", "status", "resource", "detail")
    return [" ".join(f"{k}={e[k]}" for k in keys if e.get(k) is not None) for e in events]


def writes_of(flows: list[mhttp.HTTPFlow]) -> list[mhttp.HTTPFlow]:
    return [f for f in flows if f.request.method in ("PUT", "DELETE")]


def _codes(events: list[Event]) -> set[str]:
    return {e["code"] for e in events if e["event"] == "anomaly"}


# ----------------------------------------------------------------------------- python-caldav


@pytest.mark.parametrize("mode", ["regular", "reverse"])
@pytest.mark.parametrize("peer_name", ["radicale", "xandikos"])
def test_caldav_scenario(peer_name: str, mode: str, tmp_path: Path, mitm_confdir: str) -> None:
    """Peers: python-caldav 3.6 against Radicale 3.9 or Xandikos 0.4, through repltap in regular
    and in reverse mode: every sync's tokens, the event's ETags via PUT and via manifest, a
    conflict, the invalid token, and each peer's quirks as RFC 6578 anomalies."""
    peer = PEERS[peer_name]
    with peer.start(tmp_path / "peer") as base:
        _seed(peer, base)
        with _repltap(tmp_path, mode, base, mitm_confdir) as (m, log, rec):
            proxy = f"http://127.0.0.1:{m.port}"
            if mode == "regular":
                client = caldav.DAVClient(
                    url=base + peer.calendar, proxy=proxy, username=RADICALE_USER, password="x"
                )
                cal = client.calendar(url=base + peer.calendar)
            else:
                client = caldav.DAVClient(
                    url=proxy + peer.calendar, username=RADICALE_USER, password="x"
                )
                cal = client.calendar(url=proxy + peer.calendar)
            try:
                run = _scenario(peer, cal, base)
            finally:
                client.close()
    events, flows = _events(log), _flows(rec)
    per_flow = _by_flow(events)
    upstream = urllib.parse.urlsplit(base).netloc
    assert {e["upstream"] for e in events} == {upstream}  # never the Host header (the proxy's)
    t, (e1, e2, e3), href = run.t, run.etags, run.href

    # ---- manifests and tokens: exactly what python-caldav sent and got, in order
    manifests = [e for e in events if e["event"] == "manifest"]
    assert all(e["protocol"] == "rfc6578" and e["collection"] == peer.calendar for e in manifests)
    assert [(e["sent"], e["received"], e["status"]) for e in manifests] == [
        (None, t[0], 207),
        (t[0], t[1], 207),
        (t[1], t[2], 207),
        (t[2], t[3], 207),
        (t[3], t[4], 207),
        (t[1], t[5], 207),
        (INVALID_TOKEN, None, peer.invalid_status),
    ]
    assert [m["changes"] for m in manifests[1:5]] == [
        {"new": 0, "change": 1, "delete": 0},  # RFC 6578 does not tell new from changed
        {"new": 0, "change": 1, "delete": 0},
        {"new": 0, "change": 1, "delete": 0},
        {"new": 0, "change": 0, "delete": 1},
    ]
    assert not any(m["truncated"] for m in manifests) and all(m["limit"] is None for m in manifests)
    tokens = [e for e in events if e["event"] == "token"]
    assert [(e["from"], e["to"], e["kind"]) for e in tokens] == [
        (None, t[0], "initial"),
        (t[0], t[1], "advance"),
        (t[1], t[2], "advance"),
        (t[2], t[3], "advance"),
        (t[3], t[4], "advance"),
        (t[1], t[5], "advance"),
        (INVALID_TOKEN, None, "rejected"),
    ]
    [invalid] = [e for e in events if e["event"] == "invalid_token"]
    assert (invalid["sent"], invalid["status"], invalid["protocol"]) == (
        INVALID_TOKEN,
        peer.invalid_status,
        "rfc6578",
    )
    assert invalid["flow"] == manifests[-1]["flow"]
    # python-caldav read the same precondition from the body
    assert "{DAV:}valid-sync-token" in getattr(run.invalid_error, "preconditions", [])

    # ---- the event's ETag history: via PUT, via manifest, and gone
    tags = [e for e in events if e["event"] == "tag" and e["resource"] == href]
    assert [e["protocol"] for e in tags] == ["rfc6578"] * len(tags), _brief(tags)
    changes = [(e["via"], e["from"], e["to"]) for e in tags if e["from"] != e["to"]]
    assert changes == [
        ("PUT", None, e1),
        ("PUT", e1, e2),
        ("manifest", e2, e3),  # the other client's write, seen only in the manifest
        ("DELETE", e3, None),
    ]
    assert all(e["uid"] == href for e in tags if e["via"] == "manifest")  # the href is the uid

    # ---- the stale write: a 412 and a conflict
    conflicts = [e for e in events if e["event"] == "conflict"]
    assert len(conflicts) == 1, _brief(per_flow.get(writes_of(flows)[2].id, []))
    [conflict] = conflicts
    assert (conflict["resource"], conflict["method"], conflict["status"]) == (href, "PUT", 412)
    assert conflict["protocol"] == "rfc6578" and conflict["current"] == e3

    # ---- anomalies, flow by flow
    codes = [_codes(per_flow[m["flow"]]) for m in manifests]
    assert all("depth-not-zero" in c for c in codes), codes  # python-caldav sends Depth: 1
    assert "token-regressed" in codes[5]  # t1 again after t2 was issued for it
    writes = writes_of(flows)
    assert [(f.request.method, f.response and f.response.status_code) for f in writes] == [
        ("PUT", 201),
        ("PUT", 204),
        ("PUT", 412),
        ("DELETE", 200 if peer.name == "radicale" else 204),
    ]
    put_create, put_modify, put_stale, delete = (_codes(per_flow.get(f.id, [])) for f in writes)
    assert "unconditional-write" not in put_create  # an unknown resource: nothing to overwrite
    assert "unconditional-write" not in put_modify, put_modify  # it has a condition (below)
    assert "unconditional-write" in delete  # python-caldav deletes without If-Match
    assert [e["protocol"] for e in per_flow[writes[3].id] if e["event"] == "anomaly"] == ["rfc6578"]
    anomalies = [e for e in events if e["event"] == "anomaly"]
    assert [e["protocol"] for e in anomalies] == ["rfc6578"] * len(anomalies), _brief(anomalies)
    assert not {"truncated-without-507", "silent-reset", "identity-changed"} & {
        e["code"] for e in anomalies
    }

    # ---- the wire: what python-caldav sends
    reports = [f for f in flows if f.request.method == "REPORT"]
    assert len(reports) == 7
    assert all(f.request.headers.get("Depth") == "1" for f in reports)
    host = f"127.0.0.1:{m.port}" if mode == "regular" else upstream
    assert {f.request.headers.get("Host") for f in flows} == {host}  # regular: the proxy's!
    assert writes[1].request.headers.get("If-Match") in (None, e1)

    # ---- each server's own behaviour
    if peer.name == "radicale":
        assert all(RADICALE_TOKEN.fullmatch(tok) for tok in t)
        assert len(set(t[:5])) == 5  # history-hashed: a deletion is a new state
        assert t[5] == t[4]
        # An initial sync lists the long-deleted seed event as a bare 404.
        assert "removed-in-initial-sync" in codes[0]
        first = reports[0].response
        assert first is not None and first.http_version == "HTTP/1.0"
        assert first.headers.get("Content-Encoding") == "gzip"  # decoded all the same
        body = first.get_text() or ""
        assert SEED_NAME in body and "404 Not Found" in body
        assert body.index("sync-token>") < body.index("<response>")  # the token comes first
        assert "token-repeated" not in codes[4] and "token-repeated" in codes[5]
        # Radicale has no Schedule-Tag: python-caldav's modify carries If-Match.
        assert writes[1].request.headers.get("If-Match") == e1
        assert writes[2].request.headers.get("If-Match") == e2
        assert conflict["sent"] == e2
        assert "stale-condition" in put_stale  # e2 was older than e3 seen in the manifest
        assert run.stale_error == "ETagMismatchError"
        assert reports[-1].response is not None and reports[-1].response.status_code == 403
    else:
        assert all(HEX40.fullmatch(tok) for tok in t)
        # Git tree ids: after the delete the calendar is as empty as at the initial sync.
        assert t[4] == t[0] and t[5] == t[4]
        assert "token-repeated" in codes[4] and "token-repeated" in codes[5]
        repeated = [e for e in anomalies if e["code"] == "token-repeated"]
        assert {e["severity"] for e in repeated} == {"info"}
        assert "removed-in-initial-sync" not in codes[0]  # Xandikos forgets deletions
        body = (reports[1].response.get_text() if reports[1].response else "") or ""
        assert body and body.index("<ns0:response>") < body.index("<ns0:sync-token>")
        # Xandikos hands out a Schedule-Tag for a plain event, so python-caldav conditions its
        # writes on If-Schedule-Tag-Match, not If-Match; Xandikos enforces it with a 412.
        created = writes[0].response
        assert created is not None and created.headers.get("Schedule-Tag")
        for w in writes[1:3]:
            assert "If-Match" not in w.request.headers
            assert w.request.headers.get("If-Schedule-Tag-Match")
        assert conflict["sent"] == writes[2].request.headers["If-Schedule-Tag-Match"]
        assert run.stale_error == "ScheduleTagMismatchError"
        last = reports[-1].response
        assert last is not None and last.status_code == 412
        assert "responsedescription" in (last.get_text() or "")
        assert last.headers["Content-Type"] == 'text/xml; encoding="utf-8"'  # sic: not charset


# ----------------------------------------------------------------------------- caldav-server-tester


def _feature(report: dict[str, Any], name: str) -> dict[str, Any]:
    """A feature as the tester reports it; a child that behaves like its parent is left out of
    the report, so fall back to the nearest parent, and to 'full' when none is listed."""
    features: dict[str, dict[str, Any]] = report["features"]
    parts = name.split(".")
    while parts:
        got = features.get(".".join(parts))
        if got is not None:
            return got
        parts.pop()
    return {"support": "full"}


@pytest.mark.parametrize("peer_name", ["radicale", "xandikos"])
def test_caldav_server_tester(peer_name: str, tmp_path: Path, mitm_confdir: str) -> None:
    """Peers: caldav-server-tester 1.7 against Radicale 3.9 or Xandikos 0.4 through repltap in
    regular mode (HTTP_PROXY): repltap's events agree with the tester's sync-token verdicts."""
    peer = PEERS[peer_name]
    exe = find_peer_exe("caldav-server-tester")
    with (
        peer.start(tmp_path / "peer") as base,
        _repltap(tmp_path, "regular", None, mitm_confdir) as (m, log, _rec),
    ):
        proxy = f"http://127.0.0.1:{m.port}"
        env = {**os.environ, "HTTP_PROXY": proxy, "http_proxy": proxy}
        env.pop("NO_PROXY", None)
        env.pop("no_proxy", None)
        cmd = [
            exe, "--caldav-url", base + peer.tester_path,
            "--caldav-username", RADICALE_USER, "--caldav-password", "x", "--format", "json",
        ]  # fmt: skip
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    events = _events(log)
    manifests = [e for e in events if e["event"] == "manifest"]
    assert len(manifests) >= 8, "the tester's sync checks did not go through the proxy"
    anomalies = [e for e in events if e["event"] == "anomaly"]
    flagged = {e["flow"] for e in anomalies if e["code"] == "truncated-without-507"}

    # Invalid tokens: the tester sends two it never got; both are refused with valid-sync-token.
    invalid = _feature(report, "sync-token.invalid-token")
    rejected = [e for e in events if e["event"] == "invalid_token"]
    assert {e["sent"] for e in rejected} == {
        "http://example.invalid/never-issued",
        "0" * 40,
    }
    if invalid["support"] == "full":  # 403, as RFC 4918 §16 suggests
        assert {e["status"] for e in rejected} == {403}
    else:
        assert invalid["support"] == "quirk"
        said = {int(s) for s in re.findall(r"(\d{3}) with valid-sync-token", invalid["behaviour"])}
        assert said and {e["status"] for e in rejected} == said
    assert {e["status"] for e in rejected} == {peer.invalid_status}

    # DAV:limit, from an issued token and on an initial sync.
    limited = [e for e in manifests if e["limit"] is not None and e["status"] == 207]
    for feature, initial in (("sync-token.limit", False), ("sync-token.limit.initial-sync", True)):
        verdict = _feature(report, feature)
        asked = [e for e in limited if (e["sent"] is None) == initial]
        assert asked, f"no manifest with a limit for {feature}"
        if verdict["support"] == "broken":
            # Cut at the limit without a 507: the changes beyond are lost.
            assert any(e["flow"] in flagged for e in asked), (feature, verdict, asked)
            cut = [e for e in asked if e["flow"] in flagged]
            assert all(sum(e["changes"].values()) == e["limit"] for e in cut)
            assert not any(e["truncated"] for e in cut)
        elif verdict["support"] == "unsupported":  # "DAV:limit is ignored"
            assert "ignored" in verdict.get("behaviour", "")
            assert not any(e["flow"] in flagged for e in asked)
            assert any(sum(e["changes"].values()) > e["limit"] for e in asked)
        else:
            assert verdict["support"] == "full", verdict
            assert any(e["truncated"] for e in asked) and not flagged

    # Xandikos answers PROPPATCH with an absolute href built from the Host header, which
    # python-caldav sets to the proxy's address in regular mode: still the same resource.
    changed = [e for e in anomalies if e["code"] == "identity-changed"]
    assert not changed, _brief(changed)

    if peer.name == "xandikos":
        assert _feature(report, "sync-token.limit")["support"] == "broken"
        assert flagged
    else:
        assert _feature(report, "sync-token.limit")["support"] == "unsupported"
        assert not flagged
        # Radicale's initial syncs list what the tester deleted before.
        assert "removed-in-initial-sync" in {e["code"] for e in anomalies}


# ----------------------------------------------------------------------------- litmus

SUMMARY_RE = re.compile(
    r"<- summary for `(\w+)': of (\d+) tests run: (\d+) passed, (\d+) failed\. ([\d.]+)%"
)
VERDICT_RE = re.compile(r"^\s*(\d+)\. (\w+)\.*\s+(pass|FAIL|SKIPPED|WARNING)", re.MULTILINE)


class LitmusScore(NamedTuple):
    summary: dict[str, tuple[int, int, int]]  # suite: (tests run, passed, failed)
    verdicts: list[tuple[str, str, str]]  # (number, test, pass|FAIL|SKIPPED|WARNING), in order
    rc: int


def _litmus(exe: str, url: str, cwd: Path, proxy: str | None = None) -> tuple[LitmusScore, str]:
    cmd = [exe, "-k", *([f"--proxy={proxy}"] if proxy else []), url]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)
    out = p.stdout + p.stderr
    summary = {m[0]: (int(m[1]), int(m[2]), int(m[3])) for m in SUMMARY_RE.findall(out)}
    return LitmusScore(summary, VERDICT_RE.findall(out), p.returncode), out


def test_litmus_transparent(tmp_path: Path, mitm_confdir: str) -> None:
    """Peers: Debian's litmus 0.13 against wsgidav 4.4, directly and through repltap in regular
    mode (--proxy): the same score, test by test. repltap changes nothing it passes on."""
    exe = shutil.which("litmus")
    if exe is None:
        pytest.fail("litmus not found on PATH: `apt-get install litmus` (.ci/run installs it)")
    with wsgidav(tmp_path / "peer") as base:
        direct, out_direct = _litmus(exe, base + "/", tmp_path)
        with _repltap(tmp_path, "regular", None, mitm_confdir) as (m, _log, rec):
            proxied, out_proxied = _litmus(exe, base + "/", tmp_path, f"http://127.0.0.1:{m.port}")
    assert set(direct.summary) == {"basic", "copymove", "props", "locks", "http"}, out_direct
    assert direct.summary["basic"][1] == direct.summary["basic"][0]  # a working server
    assert proxied == direct, f"direct:\n{out_direct}\n\nthrough repltap:\n{out_proxied}"
    flows = _flows(rec)
    assert len(flows) >= 100, "litmus did not go through the proxy"
    # wsgidav is plain WebDAV: no sync-collection anywhere, so no manifest.
    methods = {f.request.method for f in flows}
    assert {"PROPFIND", "PROPPATCH", "LOCK", "UNLOCK", "COPY", "MOVE", "MKCOL"} <= methods
