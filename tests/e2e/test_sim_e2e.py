"""End to end: the reference client ⇄ a real ``mitmdump -s addons/repl.py`` (reverse mode) ⇄
the reference server, one test per step of the demo's scenario. Each test asserts what crossed
the wire as the proxy decoded it (``metadata["repl"]`` of the flows in the ``-w`` file) and that
after every round the client's store equals the server's collection.

Peers: the reference server (in-process, its own thread) and the reference client (in-process),
with mitmdump as a real subprocess between them; the last test runs all three as processes
(``repltap serve``, mitmdump in regular mode, ``repltap sync --proxy``).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from mitmproxy import io

from repltap.sim.admin import AdminClient
from repltap.sim.client import STATE_FILE, State, sync
from repltap.sim.server import ReplServer, Settings, serve_in_thread, stop_server
from tests.harness.mitm import MitmProc, start_mitmdump

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "addons" / "repl.py")
EXAMPLE = "/exchange/alice/Inbox/"


class World:
    """One server, one mitmdump in front of it, and the flow file it writes."""

    def __init__(self, server: ReplServer, proxy: MitmProc, recording: Path) -> None:
        self.server = server
        self.proxy = proxy
        self.recording = recording
        self.admin = AdminClient(server.url)  # straight to the server, never recorded
        self.proxy_url = f"http://127.0.0.1:{proxy.port}"

    def flows(self) -> list[Any]:
        with self.recording.open("rb") as f:
            return list(io.FlowReader(f).stream())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, mitm_confdir: str) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("sim-e2e")
    server, thread = serve_in_thread(tmp / "data", settings=Settings())
    rec = tmp / "rec.mitm"
    proxy = start_mitmdump(
        "--mode",
        f"reverse:{server.url}",
        "--set",
        "connection_strategy=lazy",
        "-s",
        SCRIPT,
        "-w",
        str(rec),
        "--flow-detail",
        "0",
        confdir=mitm_confdir,
    )
    try:
        yield World(server, proxy, rec)
    finally:
        rc = proxy.stop()
        stop_server(server, thread)
    out = proxy.output()
    assert rc == 0, out
    assert "Traceback" not in out and "Addon error" not in out, out


class Round:
    """A private copy of the example Inbox, a store, and the flows of each round."""

    def __init__(self, world: World, name: str, tmp: Path) -> None:
        self.world = world
        self.path = f"/exchange/{name}/Inbox/"
        self.store = tmp / "store"
        world.admin.post("settings", page_cap=None, transform="off")
        world.admin.post("create", path=f"/exchange/{name}/")
        world.admin.post("copy", path=EXAMPLE, destination=self.path)
        self.seen = len(world.flows())

    def item(self, name: str) -> dict[str, Any]:
        return self.world.admin.export(self.path)["items"][name]

    def sync(self, **kw: Any) -> tuple[list[str], list[dict[str, Any]]]:
        """One round through the proxy; returns (client lines, decoded summaries of its flows)
        and checks the store against the server."""
        lines: list[str] = []
        sync(self.world.proxy_url + self.path, self.store, out=lines.append, **kw)
        flows = self.world.flows()
        new, self.seen = flows[self.seen :], len(flows)
        prefix = quote(self.path)
        mine = [f for f in new if f.request.path.startswith(prefix)]
        assert len(mine) == len(new)  # nothing else went through the proxy meanwhile
        summaries = []
        for f in mine:
            s = f.metadata.get("repl")
            assert isinstance(s, dict), f"{f.request.method} {f.request.path} was not decoded"
            assert s["upstream"] == f"127.0.0.1:{self.world.server.server_address[1]}"
            summaries.append(s)
        self.check()
        return lines, summaries

    def check(self) -> None:
        """The store equals the collection: names, bytes, repl-uids and resourcetags."""
        server = self.world.admin.export(self.path)["items"]
        local = {p.name: p.read_bytes() for p in self.store.iterdir() if not p.name.startswith(".")}
        assert sorted(local) == sorted(server)
        assert all(local[n] == i["content"] for n, i in server.items())
        state = State.load(self.store / STATE_FILE)
        assert state is not None
        assert {i.name: (i.uid, i.tag) for i in state.items.values()} == {
            n: (i["uid"], i["tag"]) for n, i in server.items()
        }


@pytest.fixture
def rnd(world: World, request: pytest.FixtureRequest, tmp_path: Path) -> Round:
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return Round(world, name, tmp_path)


def kinds(summaries: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(s["method"], s["response"]["status"]) for s in summaries]


def manifests(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in summaries if s["kind"] == "manifest"]


def no_anomalies(summaries: list[dict[str, Any]]) -> None:
    """The tracker, an independent reader of the same traffic, finds nothing wrong."""
    found = {
        (s["method"], s["target"]): s.get("anomalies") for s in summaries if s.get("anomalies")
    }
    assert not found, found


def test_initial_sync_is_paged(rnd: Round) -> None:
    _lines, ss = rnd.sync(page_size=2)
    assert kinds(ss) == [
        ("SEARCH", 207),
        ("GET", 200),
        ("GET", 200),
        ("SEARCH", 207),
        ("GET", 200),
        ("GET", 200),
        ("SEARCH", 207),
        ("GET", 200),
        ("SEARCH", 207),
    ]
    m = manifests(ss)
    assert m[0]["request"]["initial"] is True and m[0]["request"]["token"] is None
    assert m[0]["request"]["range"] == ["0-1"]
    assert [x["response"]["content_range"] for x in m[:3]] == [
        {"first": 0, "last": 1, "total": 5},
        {"first": 0, "last": 1, "total": 3},
        {"first": 0, "last": 0, "total": 1},
    ]
    for before, after in itertools.pairwise(m):  # each page continues from the newest
        assert after["request"]["token"] == before["response"]["token"]
    assert [x["response"]["changes"]["new"] for x in m[:3]] == [2, 2, 1]
    assert m[3]["response"]["no_changes"] is True and m[3]["response"]["token"] is None
    gets = [s for s in ss if s["method"] == "GET"]
    entries = [e for x in m for e in x["response"]["entries"]]
    assert [g["response"]["tag"] for g in gets] == [e["tag"] for e in entries]
    no_anomalies(ss)


def test_server_side_changes(rnd: Round) -> None:
    rnd.sync()
    gone_uid = rnd.item("Newsletter.EML")["uid"]
    rnd.world.admin.post("create", path=rnd.path + "New.EML", subject="New")
    rnd.world.admin.post("modify", path=rnd.path + "Hello.EML", subject="Hello 2")
    rnd.world.admin.post("delete", path=rnd.path + "Newsletter.EML")
    _lines, ss = rnd.sync()
    assert kinds(ss) == [("SEARCH", 207), ("GET", 200), ("GET", 200)]
    entries = ss[0]["response"]["entries"]
    assert [e["type"] for e in entries] == ["new", "change", "delete"]
    assert entries[2]["uid"] == gone_uid and not entries[2]["href"]
    assert ss[0]["response"]["changes"] == {"new": 1, "change": 1, "delete": 1}
    no_anomalies(ss)


def test_client_edits_are_acknowledged_and_210(rnd: Round) -> None:
    rnd.sync()
    rnd.world.admin.post("settings", transform="crlf")
    old = rnd.item("Meeting.EML")["tag"]
    p = rnd.store / "Meeting.EML"
    p.write_bytes(p.read_bytes().replace(b"3. Any", b"3. Lunch\r\n4. Any"))
    (rnd.store / "Todo.EML").write_bytes(b"Subject: To do\n\n- one\n")
    _lines, ss = rnd.sync()
    assert kinds(ss) == [
        ("PUT", 204),
        ("PUT", 210),
        ("GET", 200),
        ("PROPFIND", 207),
        ("SEARCH", 207),
    ]
    edit, new, _get, _, manifest = ss
    assert edit["request"]["condition"]["tags"] == [old]
    assert edit["response"]["tag"] != old and edit["response"]["uid"]
    assert new["request"]["condition"]["if_none_match"] == "*"
    assert new["response"]["meaning"].startswith("content different")
    assert manifest["request"]["acknowledged"] == [edit["response"]["tag"], new["response"]["tag"]]
    assert manifest["response"]["entries"] == [] and manifest["response"]["token"]
    assert rnd.item("Todo.EML")["content"] == b"Subject: To do\r\n\r\n- one\r\n"
    no_anomalies(ss)


def test_conflict_keeps_both_versions(rnd: Round) -> None:
    rnd.sync()
    mine_before = rnd.item("Report.EML")["tag"]
    rnd.world.admin.post("modify", path=rnd.path + "Report.EML", subject="Theirs")
    (rnd.store / "Report.EML").write_bytes(b"Subject: Mine\r\n\r\n")
    lines, ss = rnd.sync()
    assert kinds(ss) == [
        ("PUT", 412),
        ("GET", 200),
        ("PROPFIND", 207),
        ("PUT", 201),
        ("SEARCH", 207),
    ]
    put, get, propfind, create, manifest = ss
    assert put["request"]["condition"]["tags"] == [mine_before]
    assert propfind["request"]["condition"]["tags"] == [get["response"]["tag"]]
    assert create["target"].endswith("Report%20(conflict%201).EML")
    assert manifest["request"]["acknowledged"] == [
        get["response"]["tag"],
        create["response"]["tag"],
    ]
    assert manifest["response"]["entries"] == []
    assert any(line.startswith("  ! PUT Report.EML") for line in lines)
    no_anomalies(ss)


def test_move_both_ways(rnd: Round) -> None:
    rnd.sync()
    meeting = rnd.item("Meeting.EML")
    lunch_uid = rnd.item("Lunch on Friday.EML")["uid"]
    (rnd.store / "Meeting.EML").rename(rnd.store / "Meeting notes.EML")
    rnd.world.admin.post(
        "move",
        path=rnd.path + "Lunch on Friday.EML",
        destination="/exchange/alice/Archive/" + rnd.path.split("/")[2] + ".EML",
    )
    _, ss = rnd.sync()
    assert kinds(ss) == [("MOVE", 201), ("PROPFIND", 207), ("SEARCH", 207)]
    move, propfind, manifest = ss
    assert move["request"]["condition"]["tags"] == [meeting["tag"]]
    assert move["request"]["overwrite"] == "F"
    assert move["request"]["destination"].endswith("/Meeting%20notes.EML")
    assert "tag" not in move["response"] and "uid" not in move["response"]
    assert propfind["request"]["condition"]["uids"] == [meeting["uid"]]
    assert manifest["request"]["acknowledged"] == [meeting["tag"]]  # a move keeps the tag
    assert [(e["type"], e["uid"]) for e in manifest["response"]["entries"]] == [
        ("delete", lunch_uid)
    ]
    moved = rnd.item("Meeting notes.EML")
    assert (moved["uid"], moved["tag"]) == (meeting["uid"], meeting["tag"])
    # A rename on the server: the client renames its file, downloads nothing.
    rnd.world.admin.post("move", path=rnd.path + "Hello.EML", destination=rnd.path + "Hi.EML")
    _lines, ss = rnd.sync()
    assert kinds(ss) == [("SEARCH", 207)]
    assert ss[0]["response"]["changes"] == {"new": 0, "change": 1, "delete": 0}
    no_anomalies(ss)


def test_deletions_both_ways(rnd: Round) -> None:
    rnd.sync()
    todo = rnd.item("Report.EML")
    gone_uid = rnd.item("Hello.EML")["uid"]
    (rnd.store / "Report.EML").unlink()
    rnd.world.admin.post("delete", path=rnd.path + "Hello.EML")
    _lines, ss = rnd.sync()
    assert kinds(ss) == [("DELETE", 204), ("SEARCH", 207)]
    delete, manifest = ss
    assert delete["request"]["condition"]["tags"] == [todo["tag"]]
    assert delete["response"]["tag"]  # the tombstone's tag: sent, and ignored by the client
    deleted = {e["uid"] for e in manifest["response"]["entries"] if e["type"] == "delete"}
    assert deleted == {gone_uid, todo["uid"]}  # ours echoed too (DELETE tags are not acked)
    no_anomalies(ss)


def test_recreated_collection_gives_475_and_a_resync(rnd: Round) -> None:
    rnd.sync(page_size=2)
    kept = ["Hello.EML", "Report.EML", "Meeting.EML"]
    rnd.world.admin.post("recreate", path=rnd.path, keep=kept)
    rnd.world.admin.post("create", path=rnd.path + "Welcome back.EML", subject="Welcome back")
    lines, ss = rnd.sync(page_size=2)
    assert kinds(ss) == [("SEARCH", 475), ("SEARCH", 207), ("SEARCH", 207), ("GET", 200)]
    rejected, first, second, get = ss
    assert rejected["response"]["invalid_token"] is True and rejected["request"]["token"]
    assert first["request"]["initial"] is True and first["request"]["acknowledged"] == []
    assert second["request"]["token"] == first["response"]["token"]
    assert get["target"].endswith("Welcome%20back.EML")  # the kept items are not downloaded
    events = [e for s in ss for e in s.get("events", [])]
    assert {"event": "invalid_token"}.items() <= next(
        e for e in events if e["event"] == "invalid_token"
    ).items()
    assert sum(1 for line in lines if "no longer on the server" in line) == 2
    no_anomalies(ss)


def test_server_page_cap(rnd: Round) -> None:
    rnd.world.admin.post("settings", page_cap=2)
    _lines, ss = rnd.sync(page_size=0)  # no Range from the client: the cap alone pages
    m = manifests(ss)
    assert [x["request"].get("range") for x in m] == [None] * 5
    # Truncated answers say so with Content-Range; the last, complete one needs none.
    assert [x["response"].get("content_range") for x in m[:3]] == [
        {"first": 0, "last": 1, "total": 5},
        {"first": 0, "last": 1, "total": 3},
        None,
    ]
    assert len(m[2]["response"]["entries"]) == 1
    # Without Range nor Content-Range the client cannot know the page was complete (a silent
    # cap, §13.14): it asks once more; then the round's own updated manifest.
    assert m[3]["response"]["no_changes"] is True and m[4]["response"]["no_changes"] is True
    no_anomalies(ss)


def test_processes_through_a_regular_proxy(tmp_path: Path, mitm_confdir: str) -> None:
    """``repltap serve`` and ``repltap sync --proxy`` as processes, mitmdump in regular mode."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "repltap.cli",
            "serve",
            "--port",
            "0",
            "--quiet",
            "--no-fsync",
            "--data",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert serve.stdout is not None
        m = re.match(r"listening on (http://\S+)/", serve.stdout.readline())
        assert m, serve.stdout.read()
        url = m.group(1)
        rec = tmp_path / "regular.mitm"
        proxy = start_mitmdump(
            "-s", SCRIPT, "-w", str(rec), "--flow-detail", "0", confdir=mitm_confdir
        )
        try:
            store = tmp_path / "contacts"
            cmd = [
                sys.executable,
                "-m",
                "repltap.cli",
                "sync",
                url + "/exchange/alice/Contacts/",
                "--store",
                str(store),
                "--proxy",
                f"http://127.0.0.1:{proxy.port}",
            ]
            first = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
            assert first.returncode == 0, first.stderr
            assert "done: 3 items in the store, 3 downloaded" in first.stdout
            (store / "Dave Brown.vcf").unlink()
            second = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
            assert second.returncode == 0 and "DELETE Dave Brown.vcf" in second.stdout
        finally:
            assert proxy.stop() == 0
        with rec.open("rb") as f:
            ss = [fl.metadata["repl"] for fl in io.FlowReader(f).stream()]
        assert [s["method"] for s in ss] == [
            "SEARCH",
            "GET",
            "GET",
            "GET",
            "SEARCH",
            "DELETE",
            "SEARCH",
        ]
        assert ss[0]["collection"] == "/exchange/alice/Contacts/"
        assert sorted(p.name for p in store.iterdir()) == [
            ".repltap-sync.json",
            "Bob Jones.vcf",
            "Carol Smith.vcf",
        ]
    finally:
        serve.terminate()
        serve.wait(10)
    assert serve.returncode == 0


def test_the_demo_runs_and_cleans_up(tmp_path: Path) -> None:
    """``make demo``'s script: every step checks store = server itself; here it must finish,
    write the recording, and leave nothing behind, also when stopped half-way."""
    out = tmp_path / "demo.mitm"
    cmd = [sys.executable, "-m", "repltap.sim.demo", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("✓ store = server") == 8 and "Traceback" not in r.stdout + r.stderr
    assert "475" in r.stdout and "mitmweb -r" in r.stdout
    with out.open("rb") as f:
        flows = list(io.FlowReader(f).stream())
    assert flows and all("repl" in fl.metadata for fl in flows)
    store = re.search(r"client store\s+(\S+)", r.stdout)
    assert store and not Path(store.group(1)).parent.exists()  # its temp dir is gone

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.stdout is not None
    head = "".join(p.stdout.readline() for _ in range(3))  # both peers are up
    tmp = re.search(r"client store\s+(\S+)/store", head)
    assert tmp, head
    p.terminate()  # SIGTERM in the middle of the scenario
    p.wait(30)
    rest = p.stdout.read()
    assert p.returncode == 130 and "interrupted" in rest, head + rest
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert tmp.group(1) not in ps and str(out) not in ps  # its server and mitmdump are gone
    assert not Path(tmp.group(1)).exists()
