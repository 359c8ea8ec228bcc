"""The reference client against the reference server (no proxy): every kind of round, every
conflict, and after each round the store equals the server's collection."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from repltap.cli import main
from repltap.sim import client as clientmod
from repltap.sim.client import STATE_FILE, State, SyncError, file_name, sync

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
