"""The reference client against the reference server (no proxy): every kind of round, every
conflict, and after each round the store equals the server's collection."""

from __future__ import annotations

import ast
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from repltap.cli import main
from repltap.sim import client as clientmod
from repltap.sim.client import STATE_FILE, Http, State, Sync, SyncError, file_name, sync

from .conftest import INBOX, Peer


def same(peer: Peer, store: Path, path: str = INBOX) -> None:
    """The store holds exactly the collection's items: names, bytes, tags and repl-uids."""
    server = peer.admin.export(path)["items"]
    local = {p.name: p.read_bytes() for p in store.iterdir() if not p.name.startswith(".")}
    assert sorted(local) == sorted(server)
    for name, item in server.items():
        assert local[name] == item["content"], name
    state = State.load(store / STATE_FILE)
    assert state is not None
    assert {i.name: (i.uid, i.tag) for i in state.items.values()} == {
        n: (i["uid"], i["tag"]) for n, i in server.items()
    }


def run(peer: Peer, store: Path, **kw: object) -> tuple[clientmod.Report, list[str]]:
    lines: list[str] = []
    report = sync(peer.url + INBOX, store, out=lines.append, **kw)  # type: ignore[arg-type]
    same(peer, store)
    return report, lines


@pytest.fixture
def synced(peer: Peer, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    run(peer, store)
    return store


# An action of the relay on one request: passed on (None); "drop": the connection closes before
# the server sees the request; "lost": the server applies it and the connection closes before its
# answer comes back; "close": answered, then the connection closes (with no "Connection: close"
# said); "untagged": the answer without its ResourceTag header (repltap's strip_tags); a status:
# answered so by the relay (as a proxy would), the server never sees the request.
Action = str | int | None


class Relay:
    """An HTTP/1.1 keep-alive relay in front of the reference server that fails requests the way
    a network or a proxy does, one action per matching request, and remembers every request."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.rules: list[tuple[str, str, list[Action]]] = []
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def relay(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                action = relay.take(self.command, self.path)
                if action == "drop":
                    self.close_connection = True
                    return
                if isinstance(action, int):
                    self.send_response_only(action)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                skip = ("connection", "keep-alive", "transfer-encoding", "content-length")
                conn = http.client.HTTPConnection("127.0.0.1", relay.upstream, timeout=10)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                finally:
                    conn.close()
                if action == "lost":
                    self.close_connection = True
                    return
                self.send_response_only(r.status, r.reason)
                if action == "untagged":
                    skip += ("resourcetag",)
                for k, v in r.getheaders():
                    if k.lower() not in skip:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = action == "close"

            do_GET = do_PUT = do_DELETE = do_MOVE = do_PROPFIND = do_SEARCH = relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def fault(self, method: str, suffix: str, *actions: Action) -> None:
        """The next requests ``method`` whose path ends with ``suffix`` meet ``actions``."""
        self.rules.append((method, suffix, list(actions)))

    def take(self, method: str, path: str) -> Action:
        with self.lock:
            self.seen.append((method, path))
            for m, suffix, actions in self.rules:
                if m == method and path.endswith(suffix) and actions:
                    return actions.pop(0)
            return None

    def count(self, method: str, suffix: str = "") -> int:
        return sum(1 for m, p in self.seen if m == method and p.endswith(suffix))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def relay(peer: Peer) -> Iterator[Relay]:
    r = Relay(peer.port)
    try:
        yield r
    finally:
        r.stop()


def test_first_round_pages_and_ends_with_no_changes(peer: Peer, tmp_path: Path) -> None:
    store = tmp_path / "s"
    report, lines = run(peer, store, page_size=2)
    assert report.downloaded == 5 and report.manifests == 4
    assert lines[1].startswith("manifest (initial): rows 0-1 of 5, 2 new; collblob → ")
    assert any(line.startswith("manifest (initial, page 3): rows 0-0 of 1") for line in lines)
    assert "manifest (update): no changes (collblob kept)" in lines
    assert lines[-1] == "done: 5 items in the store, 5 downloaded"
    doc = json.loads((store / STATE_FILE).read_text())
    assert doc["collblob"] and doc["url"].endswith(INBOX) and len(doc["items"]) == 5
    item = next(i for i in doc["items"].values() if i["name"] == "Hello.EML")
    assert item["props"]["{urn:schemas:httpmail:}subject"] == "Hello"
    again, lines = run(peer, store, page_size=2)
    assert again.manifests == 1 and again.downloaded == 0


def test_server_changes_are_applied(peer: Peer, synced: Path) -> None:
    peer.admin.post("create", path=INBOX + "New.EML", subject="New")
    peer.admin.post("modify", path=INBOX + "Hello.EML", subject="Hello 2")
    peer.admin.post("delete", path=INBOX + "Newsletter.EML")
    peer.admin.post("move", path=INBOX + "Meeting.EML", destination=INBOX + "Minutes.EML")
    report, lines = run(peer, synced)
    assert (report.downloaded, report.removed_local, report.moved) == (2, 1, 1)
    assert any("Minutes.EML" in line and "moved on the server" in line for line in lines)


def test_local_changes_are_uploaded_with_conditions(peer: Peer, synced: Path) -> None:
    (synced / "Hello.EML").write_bytes(b"Subject: edited\r\n\r\nmine\r\n")
    (synced / "Mine.EML").write_bytes(b"Subject: mine\r\n\r\nnew\r\n")
    (synced / "Newsletter.EML").unlink()
    (synced / "Meeting.EML").rename(synced / "Minutes.EML")
    report, lines = run(peer, synced)
    assert (report.uploaded, report.deleted_remote, report.conflicts) == (3, 1, [])
    assert "upload: 1 edited, 1 new, 1 deleted, 1 renamed" in lines
    assert any(line.startswith("manifest (update, 3 acknowledged)") for line in lines)
    server = peer.admin.export(INBOX)["items"]
    assert server["Hello.EML"]["props"]["{urn:schemas:httpmail:}subject"] == "edited"
    assert "Newsletter.EML" not in server and "Minutes.EML" in server
    assert run(peer, synced)[0].manifests == 1  # nothing echoed back later either


def test_edit_against_server_edit_keeps_both(peer: Peer, synced: Path) -> None:
    peer.admin.post("modify", path=INBOX + "Report.EML", subject="Theirs")
    (synced / "Report.EML").write_bytes(b"Subject: Mine\r\n\r\n")
    report, _lines = run(peer, synced)
    assert len(report.conflicts) == 1 and "Report (conflict 1).EML" in report.conflicts[0]
    server = peer.admin.export(INBOX)["items"]
    assert server["Report.EML"]["props"]["{urn:schemas:httpmail:}subject"] == "Theirs"
    assert server["Report (conflict 1).EML"]["content"] == b"Subject: Mine\r\n\r\n"


def test_edit_against_server_delete_recreates(peer: Peer, synced: Path) -> None:
    peer.admin.post("delete", path=INBOX + "Report.EML")
    (synced / "Report.EML").write_bytes(b"Subject: Mine\r\n\r\n")
    report, _ = run(peer, synced)
    assert len(report.conflicts) == 1 and "deleted on the server" in report.conflicts[0]
    assert peer.admin.export(INBOX)["items"]["Report.EML"]["content"] == b"Subject: Mine\r\n\r\n"


def test_delete_against_server_edit_restores(peer: Peer, synced: Path) -> None:
    peer.admin.post("modify", path=INBOX + "Report.EML", subject="Theirs")
    (synced / "Report.EML").unlink()
    report, _lines = run(peer, synced)
    assert len(report.conflicts) == 1 and "back" in report.conflicts[0]
    assert (synced / "Report.EML").exists()


@pytest.mark.parametrize("spurious", [True, False], ids=["injected-412", "real-412"])
def test_a_failed_refetch_after_412_loses_nothing(
    peer: Peer, relay: Relay, synced: Path, spurious: bool
) -> None:
    """After a 412 the server's version is fetched before the local file is set aside: when that
    GET is cut off, the local edit stays where it was (not a local delete the next round would
    send as a DELETE of the server's version), and the next round resolves it."""
    mine = b"Subject: Mine\r\n\r\n"
    if spurious:  # a proxy answers 412 although nothing changed; the server never sees the PUT
        relay.fault("PUT", "/Report.EML", 412)
    else:
        peer.admin.post("modify", path=INBOX + "Report.EML", subject="Theirs")
    relay.fault("GET", "/Report.EML", "drop", "drop")  # the refetch, and its one retry
    (synced / "Report.EML").write_bytes(mine)
    with pytest.raises(SyncError, match=r"GET .*Report\.EML: the connection was closed"):
        sync(relay.url + INBOX, synced, out=lambda _: None)
    assert relay.count("GET", "/Report.EML") == 2
    assert (synced / "Report.EML").read_bytes() == mine
    assert not (synced / "Report (conflict 1).EML").exists()
    report, _lines = run(peer, synced)  # no faults now
    server = peer.admin.export(INBOX)["items"]
    assert report.deleted_remote == 0
    if spurious:  # the PUT goes through now: one version, mine
        assert report.conflicts == [] and server["Report.EML"]["content"] == mine
        assert "Report (conflict 1).EML" not in server
    else:  # both versions
        assert server["Report.EML"]["props"]["{urn:schemas:httpmail:}subject"] == "Theirs"
        assert server["Report (conflict 1).EML"]["content"] == mine


def item_named(store: Path, name: str) -> clientmod.Item:
    state = State.load(store / STATE_FILE)
    assert state is not None
    return next(i for i in state.items.values() if i.name == name)


@pytest.mark.parametrize("spurious", [True, False], ids=["injected-412", "real-412"])
def test_a_refetch_without_resourcetag_after_412_does_not_fail_the_round(
    peer: Peer, relay: Relay, synced: Path, spurious: bool
) -> None:
    """The server's version, fetched after a 412, comes without ResourceTag (repltap's
    strip_tags): the round goes on with the content in hand, and the item's tag is left to the
    manifest, which lists the item with its tag when it changed on the server."""
    mine = b"Subject: Mine\r\n\r\n"
    if spurious:  # the server never saw the PUT: its version, and its tag, are the old ones
        relay.fault("PUT", "/Report.EML", 412)
    else:
        peer.admin.post("modify", path=INBOX + "Report.EML", subject="Theirs")
    relay.fault("GET", "/Report.EML", "untagged")
    (synced / "Report.EML").write_bytes(mine)
    report = sync(relay.url + INBOX, synced, out=lambda _: None)
    same(peer, synced)  # names, bytes and tags
    assert len(report.conflicts) == 1
    assert peer.admin.export(INBOX)["items"]["Report (conflict 1).EML"]["content"] == mine
    if spurious:  # not in the manifest: the old tag stays, marked stale, and it is right
        assert item_named(synced, "Report.EML").stale
        assert relay.count("GET", "/Report.EML") == 1
    else:  # in the manifest: downloaded once more, with its tag
        assert not item_named(synced, "Report.EML").stale
        assert relay.count("GET", "/Report.EML") == 2
    again, _ = run(peer, synced)
    assert again.conflicts == [] and again.uploaded == again.downloaded == 0


def test_a_refetch_without_resourcetag_after_210_is_settled_by_the_manifest(
    peer: Peer, relay: Relay, synced: Path
) -> None:
    peer.admin.post("settings", transform="crlf")
    (synced / "Lf.EML").write_bytes(b"Subject: lf\n\nline\n")
    relay.fault("GET", "/Lf.EML", "untagged")
    report = sync(relay.url + INBOX, synced, out=lambda _: None)
    same(peer, synced)
    assert (synced / "Lf.EML").read_bytes() == b"Subject: lf\r\n\r\nline\r\n"
    assert report.conflicts == [] and not item_named(synced, "Lf.EML").stale
    assert relay.count("GET", "/Lf.EML") == 2  # the refetch, then for the manifest's tag


@pytest.mark.parametrize("kind", ["edit", "create"])
def test_after_a_210_a_failed_refetch_is_mended_by_the_next_round(
    peer: Peer, relay: Relay, synced: Path, kind: str
) -> None:
    """The tag a 210 gives names the server's changed version: the item is stale until the
    refetch brings that version, so when the refetch is cut off the next round downloads it
    (and does not take the version here for the server's because the tags agree)."""
    peer.admin.post("settings", transform="crlf")
    name = "Report.EML" if kind == "edit" else "Lf.EML"
    (synced / name).write_bytes(b"Subject: lf\n\nline\n")
    relay.fault("GET", "/" + name, "drop", "drop")  # the refetch, and its one retry
    with pytest.raises(SyncError, match=f"GET .*{name}: the connection was closed"):
        sync(relay.url + INBOX, synced, out=lambda _: None)
    assert item_named(synced, name).stale
    report, _lines = run(peer, synced)  # same(): the server's version is here now
    assert (synced / name).read_bytes() == b"Subject: lf\r\n\r\nline\r\n"
    assert report.conflicts == [] and report.uploaded == 0 and report.downloaded == 1
    assert not item_named(synced, name).stale


@pytest.mark.parametrize("method", ["PUT", "DELETE", "MOVE"])
def test_a_write_is_not_sent_again_when_the_connection_closes(
    peer: Peer, relay: Relay, method: str
) -> None:
    """An idempotent request is sent once more when a kept-alive connection closes under it; a
    write never is: the server may have applied it already (here it has)."""
    http = Http(relay.url + INBOX)
    hello = INBOX + "Hello.EML"
    relay.fault("GET", "/Hello.EML", None, "drop")
    assert http.request("GET", hello).status == 200  # opens the kept-alive connection
    assert http.request("GET", hello).status == 200  # closed under it: sent again
    assert relay.count("GET") == 3
    relay.fault(method, "/Hello.EML", "lost")
    headers = {"Destination": relay.url + INBOX + "Hi.EML"} if method == "MOVE" else {}
    with pytest.raises(SyncError, match="not sent again") as e:
        http.request(method, hello, headers, b"Subject: x\r\n\r\n" if method == "PUT" else b"")
    assert isinstance(e.value, clientmod.AnswerLost)
    assert relay.count(method) == 1
    after = peer.admin.export(INBOX)["items"]
    if method == "PUT":  # applied, once (the relay saw one PUT)
        assert after["Hello.EML"]["content"] == b"Subject: x\r\n\r\n"
    else:
        assert "Hello.EML" not in after
    http.close()


def test_a_read_dropped_on_a_new_connection_is_sent_once_more(relay: Relay) -> None:
    """A proxy that drops a GET before the server sees it (repltap's drop fault) costs a second
    request, not the round; a second drop ends it."""
    http = Http(relay.url + INBOX)
    relay.fault("GET", "/Hello.EML", "drop")
    assert http.request("GET", INBOX + "Hello.EML").status == 200
    assert relay.count("GET") == 2
    http.close()
    relay.fault("GET", "/Hello.EML", "drop", "drop")
    with pytest.raises(SyncError, match="the connection was closed"):
        http.request("GET", INBOX + "Hello.EML")
    assert relay.count("GET") == 4
    http.close()


def test_a_write_does_not_go_on_a_connection_closed_while_idle(peer: Peer, relay: Relay) -> None:
    """A kept-alive connection the server closed while idle is seen before a write is sent on
    it: the write goes on a new connection instead of failing for nothing."""
    http = Http(relay.url + INBOX)
    relay.fault("GET", "/Hello.EML", "close")
    assert http.request("GET", INBOX + "Hello.EML").status == 200
    time.sleep(0.2)  # the close arrives
    rep = http.request("PUT", INBOX + "Hello.EML", {}, b"Subject: x\r\n\r\n")
    assert rep.status in (200, 204) and relay.count("PUT") == 1
    http.close()


def test_a_write_that_could_not_be_sent_is_not_unsure(synced: Path) -> None:
    """No connection at all: nothing was sent, so the next round need not read the manifest
    before it writes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (synced / "Report.EML").write_bytes(b"Subject: Mine\r\n\r\n")
    with pytest.raises(SyncError, match="cannot talk to") as e:
        sync(f"http://127.0.0.1:{port}{INBOX}", synced, out=lambda _: None)
    assert not isinstance(e.value, clientmod.AnswerLost)
    state = State.load(synced / STATE_FILE)
    assert state is not None and state.unsure == []


WRITES = {
    # kind: (the write that meets the fault, its path's end, the local change)
    "edit": ("PUT", "/Report.EML"),
    "create": ("PUT", "/Mine.EML"),
    "delete": ("DELETE", "/Newsletter.EML"),
    "rename": ("MOVE", "/Meeting.EML"),
}


def change_here(store: Path, kind: str) -> None:
    if kind == "edit":
        (store / "Report.EML").write_bytes(b"Subject: edited\r\n\r\nmine\r\n")
    elif kind == "create":
        (store / "Mine.EML").write_bytes(b"Subject: mine\r\n\r\nnew\r\n")
    elif kind == "delete":
        (store / "Newsletter.EML").unlink()
    else:
        (store / "Meeting.EML").rename(store / "Minutes.EML")


@pytest.mark.parametrize("kind", list(WRITES))
@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
def test_a_write_whose_answer_was_lost_is_reconciled_by_the_manifest(
    peer: Peer, relay: Relay, synced: Path, kind: str, applied: bool
) -> None:
    """A write on a kept-alive connection that closes before the answer: the round ends with a
    clear message and the write is not sent again; the next round reads the manifest first, which
    tells whether the server applied it, and ends without a conflict or a duplicate."""
    method, suffix = WRITES[kind]
    change_here(synced, kind)
    before = set(peer.admin.export(INBOX)["items"])
    relay.fault(method, suffix, "lost" if applied else "drop")
    lines: list[str] = []
    s = Sync(relay.url + INBOX, synced, out=lines.append)
    assert s.http.request("GET", INBOX + "Hello.EML").status == 200  # a kept-alive connection
    with pytest.raises(SyncError, match=f"{method} .*{suffix}: the connection was closed .*"):
        s.run()
    assert relay.count(method, suffix) == 1  # not sent again
    state = State.load(synced / STATE_FILE)
    assert state is not None and len(state.unsure) == 1 and state.unsure[0].startswith(method)
    report, lines = run(peer, synced)  # no faults now; same(): the store equals the server
    assert lines[1].startswith(f"the answer to {method} ") and "was lost last round" in lines[1]
    assert report.conflicts == []
    assert report.uploaded + report.deleted_remote == (0 if applied else 1)
    after = set(peer.admin.export(INBOX)["items"])
    expected = {
        "edit": before,
        "create": before | {"Mine.EML"},
        "delete": before - {"Newsletter.EML"},
        "rename": before - {"Meeting.EML"} | {"Minutes.EML"},
    }[kind]
    assert after == expected  # no "(conflict 1)", "(local 1)" or "(2)" copies
    if kind == "edit":
        assert peer.admin.export(INBOX)["items"]["Report.EML"]["content"].endswith(b"mine\r\n")
    state = State.load(synced / STATE_FILE)
    assert state is not None and state.unsure == []
    assert json.loads((synced / STATE_FILE).read_text()).keys() == {
        "version",
        "url",
        "sql",
        "collblob",
        "items",
    }
    assert run(peer, synced)[0].manifests == 1  # and nothing left over


def test_a_lost_answer_then_a_server_edit_then_a_failed_download(
    peer: Peer, relay: Relay, synced: Path
) -> None:
    """The server applied our PUT (its answer lost), then changed the item again; the next
    round's manifest brings a real conflict, and the download of the server's version is cut
    off: the local file stays, and the round after keeps both versions."""
    mine = b"Subject: edited\r\n\r\nmine\r\n"
    (synced / "Report.EML").write_bytes(mine)
    relay.fault("PUT", "/Report.EML", "lost")
    with pytest.raises(SyncError, match="not sent again"):
        sync(relay.url + INBOX, synced, out=lambda _: None)
    peer.admin.post("modify", path=INBOX + "Report.EML", subject="Theirs")
    relay.fault("GET", "/Report.EML", "drop", "drop")
    with pytest.raises(SyncError, match=r"GET .*Report\.EML"):
        sync(relay.url + INBOX, synced, out=lambda _: None)
    assert (synced / "Report.EML").read_bytes() == mine
    assert not (synced / "Report (conflict 1).EML").exists()
    report, _ = run(peer, synced)
    assert len(report.conflicts) == 1 and report.deleted_remote == 0
    server = peer.admin.export(INBOX)["items"]
    assert server["Report.EML"]["props"]["{urn:schemas:httpmail:}subject"] == "Theirs"
    assert server["Report (conflict 1).EML"]["content"] == mine


def test_rename_onto_a_name_taken_on_the_server(peer: Peer, synced: Path) -> None:
    peer.admin.post("create", path=INBOX + "Taken.EML", subject="server's")
    (synced / "Meeting.EML").rename(synced / "Taken.EML")
    report, _lines = run(peer, synced)
    assert len(report.conflicts) == 1  # Overwrite: F → 412; both versions survive
    names = set(peer.admin.export(INBOX)["items"])
    assert {"Meeting.EML", "Taken.EML", "Taken (2).EML"} <= names


def test_210_makes_the_client_download_the_servers_version(peer: Peer, synced: Path) -> None:
    peer.admin.post("settings", transform="crlf")
    (synced / "Lf.EML").write_bytes(b"Subject: lf\n\nline\n")
    _report, lines = run(peer, synced)
    assert (synced / "Lf.EML").read_bytes() == b"Subject: lf\r\n\r\nline\r\n"
    assert any("210 Content Different" in line for line in lines)


def test_475_resync_reconciles_by_repl_uid(peer: Peer, synced: Path) -> None:
    before = State.load(synced / STATE_FILE)
    assert before is not None
    peer.admin.post("recreate", path=INBOX, keep=["Hello.EML", "Report.EML"])
    peer.admin.post("create", path=INBOX + "After.EML", subject="after")
    report, lines = run(peer, synced, page_size=2)
    assert report.resyncs == 1 and report.downloaded == 1 and report.removed_local == 3
    assert any("475 Invalid collblob" in line and "re-created" in line for line in lines)
    after = State.load(synced / STATE_FILE)
    assert after is not None and after.collblob != before.collblob
    kept = {i.uid for i in after.items.values()} & set(before.items)
    assert len(kept) == 2  # same repl-uids: nothing downloaded again for them


def test_server_page_cap_without_client_range(peer: Peer, tmp_path: Path) -> None:
    peer.admin.post("settings", page_cap=2)
    report, _lines = run(peer, tmp_path / "s", page_size=0)  # no Range: Content-Range drives it
    assert report.downloaded == 5 and report.manifests == 5


def test_name_taken_on_create_picks_another(peer: Peer, synced: Path) -> None:
    peer.admin.post("create", path=INBOX + "Idea.EML", subject="server's idea")
    (synced / "Idea.EML").write_bytes(b"Subject: my idea\r\n\r\n")
    _report, _lines = run(peer, synced)
    server = peer.admin.export(INBOX)["items"]
    assert server["Idea (2).EML"]["content"] == b"Subject: my idea\r\n\r\n"
    assert server["Idea.EML"]["props"]["{urn:schemas:httpmail:}subject"] == "server's idea"


def test_store_of_another_collection_is_refused(peer: Peer, synced: Path) -> None:
    with pytest.raises(SyncError, match="replicates"):
        sync(peer.url + "/exchange/alice/Contacts/", synced, out=lambda _: None)
    (synced / STATE_FILE).write_text("{broken")
    with pytest.raises(SyncError, match="cannot be read"):
        sync(peer.url + INBOX, synced, out=lambda _: None)


def test_cli(peer: Peer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "cli"
    assert main(["sync", peer.url + "/exchange/alice/Contacts/", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "Bob Jones.vcf  “Bob Jones”" in out and (store / "Carol Smith.vcf").exists()
    assert main(["sync", "http://127.0.0.1:9/x/", "--store", str(tmp_path / "n")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("repltap sync: error: ") and "Traceback" not in err
    assert main(["sync", "ftp://x/", "--store", str(tmp_path / "n")]) == 1
    assert main(["sync", peer.url + INBOX, "--store", str(store), "--page-size", "-1"]) == 2
    assert main(["sync", peer.url + "/exchange/nobody/", "--store", str(tmp_path / "m")]) == 1
    assert "404" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("href", "name"),
    [
        ("http://h/exchange/a/Inbox/Hello.EML", "Hello.EML"),
        ("/exchange/a/Inbox/Lunch%20on%20Friday%3F.EML", "Lunch on Friday?.EML"),
        ("/x/%2Ehidden", "%2Ehidden"),
        ("/x/a%2Fb", "a%2Fb"),
        ("/x/tab%09name", "tab%09name"),
    ],
)
def test_file_names_are_safe(href: str, name: str) -> None:
    assert file_name(href) == name


def test_the_client_imports_nothing_from_the_server() -> None:
    """Client and server are independent implementations: only repltap.protocol is shared."""
    tree = ast.parse(Path(clientmod.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    local = {m for m in imported if m.startswith(".")}
    assert local and all(m.startswith("..protocol") for m in local), local
    assert not any("sim" in m for m in imported)
