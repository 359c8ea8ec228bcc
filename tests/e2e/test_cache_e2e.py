"""End to end: the manifest cache in a real ``mitmdump -s addons/repl.py`` (reverse mode, lazy
upstream connections) between real peers.

- the reference client (``repltap sync``, in-process) and the reference server: as a process
  (``repltap serve``) that is stopped for the offline test, in a thread counting its requests for
  the serve-mode test;
- python-caldav 3.6 and Radicale 3.9 (tests/harness/peers.py) for the replica.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import caldav
import pytest
from lxml import etree
from mitmproxy import io

from repltap.cachestore import CacheStore
from repltap.sim.admin import AdminClient
from repltap.sim.client import STATE_FILE, State, SyncError, sync
from tests.cache.servers import counting_server
from tests.harness.mitm import MitmProc, start_mitmdump
from tests.harness.peers import RADICALE_CALENDAR, RADICALE_USER, ical, radicale

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "addons" / "repl.py")
INBOX = "/exchange/alice/Inbox/"


def cached_proxy(upstream: str, tmp: Path, confdir: str, mode: str) -> MitmProc:
    return start_mitmdump(
        "--mode", f"reverse:{upstream}",
        "--set", "connection_strategy=lazy",  # or mitmproxy connects before the cache can answer
        "-s", SCRIPT,
        "--set", f"repl_cache={tmp / 'cache.db'}",
        "--set", f"repl_cache_mode={mode}",
        "--set", f"repl_log={tmp / 'events.jsonl'}",
        "-w", str(tmp / "rec.mitm"),
        "--flow-detail", "0",
        confdir=confdir,
    )  # fmt: skip


def stop_clean(m: MitmProc) -> None:
    code = m.stop()
    out = m.output()
    assert code == 0, out
    assert "Addon error" not in out and not re.search(r'File "[^"]*addons/repl', out), out


def cache_events(tmp: Path) -> list[dict[str, Any]]:
    lines = (tmp / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "cache"]


def files(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in store.iterdir() if not p.name.startswith(".")}


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``repltap serve`` as a process: stopping it closes every connection it had."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "repltap.cli", "serve", "--port", "0", "--quiet", "--no-fsync"]
    p = subprocess.Popen(
        [*cmd, "--data", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert p.stdout is not None
        m = re.match(r"listening on (http://\S+)/", p.stdout.readline())
        assert m, p.stdout.read()
        yield p, m.group(1)
    finally:
        if p.poll() is None:
            p.terminate()
        p.wait(10)


def test_offline_client_carries_on_from_cached_answers(
    tmp_path: Path, mitm_confdir: str, serve_process: tuple[subprocess.Popen[str], str]
) -> None:
    """Peers: the reference client through mitmdump (offline mode) to ``repltap serve``, which
    is stopped halfway. A second replica of the same store carries on from what the cache saw
    the first one get, and a request the cache never saw gets a 503, not a made-up manifest."""
    server, url = serve_process
    admin = AdminClient(url)
    proxy = cached_proxy(url, tmp_path, mitm_confdir, "offline")
    try:
        base = f"http://127.0.0.1:{proxy.port}{INBOX}"
        a, b = tmp_path / "a", tmp_path / "b"
        sync(base, a, out=lambda _line: None)  # initial sync, then "no changes"
        shutil.copytree(a, b)  # b: a second replica at the same collblob (a laptop's copy)
        admin.post("delete", path=INBOX + "Newsletter.EML")
        sync(base, a, out=lambda _line: None)  # the delete, and a new collblob
        sync(base, a, out=lambda _line: None)  # no changes under it
        server.terminate()
        server.wait(10)

        lines: list[str] = []
        report = sync(base, b, out=lines.append)
        assert report.removed_local == 1, lines
        assert any("Newsletter.EML" in line and "deleted on the server" in line for line in lines)
        report = sync(base, b, out=lines.append)  # and once more, under the new collblob
        assert report.manifests == 1 and report.removed_local == 0
        assert files(b) == files(a)
        state_a, state_b = State.load(a / STATE_FILE), State.load(b / STATE_FILE)
        assert state_a is not None and state_b is not None
        assert state_b.collblob == state_a.collblob  # a chain the server issued

        # A client asking what nobody asked before (pages of 7 rows): a 503 saying why.
        with pytest.raises(SyncError, match="503") as e:
            sync(base, tmp_path / "c", page_size=7, out=lambda _line: None)
        assert "cannot be reached" in str(e.value)
    finally:
        stop_clean(proxy)

    events = cache_events(tmp_path)
    assert [e["kind"] for e in events if e["kind"] != "store"] == [
        "offline-serve",
        "offline-serve",
        "miss",
    ]
    assert all("Connection refused" in e["cause"] for e in events if e["kind"] == "offline-serve")
    [miss] = [e for e in events if e["kind"] == "miss"]
    assert miss["status"] == 503 and miss["sent"] is None
    with (tmp_path / "rec.mitm").open("rb") as f:
        served = [fl for fl in io.FlowReader(f).stream() if fl.metadata["repl"].get("cache")]
    marks = [fl.metadata["repl"]["cache"]["kind"] for fl in served]
    assert marks.count("offline-serve") == 2
    assert all(
        "⛁ cache" in fl.comment for fl in served if fl.metadata["repl"]["cache"]["kind"] != "store"
    )


def test_serve_hit_spares_the_upstream_a_request(tmp_path: Path, mitm_confdir: str) -> None:
    """Peers: the reference client through mitmdump (serve mode) to the reference server in a
    thread that counts the requests it answers."""
    with counting_server(tmp_path / "data") as server:
        proxy = cached_proxy(server.url, tmp_path, mitm_confdir, "serve")
        try:
            base = f"http://127.0.0.1:{proxy.port}{INBOX}"
            store = tmp_path / "store"
            first = sync(base, store, out=lambda _line: None)
            assert first.downloaded == 5 and first.manifests == 2
            asked, connected = server.count(), server.connections
            assert server.count("SEARCH") == 2 and asked == 7  # 2 manifests, 5 downloads
            lines: list[str] = []
            again = sync(base, store, out=lines.append)  # a new client connection
            assert again.manifests == 1 and any("no changes" in line for line in lines)
            assert server.count() == asked  # the manifest was answered by the cache
            assert server.connections == connected  # and no upstream connection was opened
        finally:
            stop_clean(proxy)
    kinds = [e["kind"] for e in cache_events(tmp_path)]
    assert kinds == ["miss", "store", "miss", "store", "hit"]


# ----------------------------------------------------------------------------- Radicale

AUTH = {"Authorization": "Basic YWxpY2U6eA=="}  # alice:x


def direct(
    base: str, method: str, path: str, body: bytes = b"", **headers: str
) -> tuple[int, bytes]:
    """A request straight to the server, out of the proxy's sight."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={**AUTH, **headers})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def server_etags(base: str, collection: str) -> dict[str, str]:
    """{href: ETag} of the collection's members, asked of the server itself."""
    body = b'<D:propfind xmlns:D="DAV:"><D:prop><D:getetag/></D:prop></D:propfind>'
    status, data = direct(base, "PROPFIND", collection, body, Depth="1")
    assert status == 207, data
    out = {}
    for r in etree.fromstring(data).iter("{DAV:}response"):
        href = urllib.parse.unquote(r.findtext("{DAV:}href") or "")
        etag = r.findtext(".//{DAV:}getetag")
        if href.rstrip("/") != collection.rstrip("/") and etag:
            out[href] = etag
    return out


def test_radicale_replica_equals_the_collection(tmp_path: Path, mitm_confdir: str) -> None:
    """Peers: python-caldav 3.6 through mitmdump (reverse mode, cache in observe mode) to
    Radicale 3.9: creates, a modification, a change by another client that only a manifest
    shows, a delete, syncs between; then the cache's replica is compared with what Radicale
    itself lists."""
    with radicale(tmp_path / "peer") as base:
        proxy = cached_proxy(base, tmp_path, mitm_confdir, "observe")
        try:
            client = caldav.DAVClient(
                url=f"http://127.0.0.1:{proxy.port}{RADICALE_CALENDAR}",
                username=RADICALE_USER,
                password="x",
            )
            cal = client.calendar(url=f"http://127.0.0.1:{proxy.port}{RADICALE_CALENDAR}")
            token = cal.get_objects_by_sync_token(None, disable_fallback=True).sync_token
            events = [cal.add_event(ical(f"ev-{i}", f"one {i}")) for i in range(4)]
            token = cal.get_objects_by_sync_token(token, disable_fallback=True).sync_token
            events[0].icalendar_component["SUMMARY"] = "changed through the proxy"
            events[0].save()
            other = urllib.parse.urlsplit(str(events[1].url)).path
            status, _ = direct(
                base, "PUT", other, ical("ev-1", "changed elsewhere").encode(),
                **{"Content-Type": "text/calendar"},
            )  # fmt: skip
            assert status in (200, 201, 204)
            events[2].delete()
            cal.get_objects_by_sync_token(token, disable_fallback=True)
            client.close()
        finally:
            stop_clean(proxy)
        expected = server_etags(base, RADICALE_CALENDAR)
    assert len(expected) == 3
    store = CacheStore(tmp_path / "cache.db")
    try:
        upstream = urllib.parse.urlsplit(base).netloc
        [coll] = store.collections()
        assert (coll["upstream"], coll["collection"], coll["protocol"]) == (
            upstream,
            RADICALE_CALENDAR,
            "rfc6578",
        )
        replica = store.replica(upstream, RADICALE_CALENDAR)
        assert {urllib.parse.unquote(i["href"]): i["tag"] for i in replica} == expected
        via = {urllib.parse.unquote(i["href"]): i["via"] for i in replica}
        assert via[other] == "manifest"  # the other client's change: only a manifest told it
        assert coll["answers"] == 3  # each sync's answer, stored under its own token
    finally:
        store.close()
