"""The admin interface: JSON over HTTP and ``repltap admin``."""

from __future__ import annotations

import base64

import pytest

from repltap.cli import main
from repltap.sim.admin import AdminClient, AdminError

from .conftest import INBOX, Peer


def test_http_api(peer: Peer) -> None:
    adm = peer.admin
    assert "POST /_admin/recreate" in adm.get("")["endpoints"]
    created = adm.post(
        "create",
        path=INBOX + "A.EML",
        subject="A",
        body="a",
        props={"urn:schemas:httpmail:importance": "2"},
    )["created"]
    assert created["uid"].startswith("rid:") and created["content_type"] == "message/rfc822"
    assert created["props"]["{urn:schemas:httpmail:}importance"] == "2"
    assert created["props"]["{urn:schemas:httpmail:}subject"] == "A"  # promoted
    modified = adm.post("modify", path=INBOX + "A.EML", content="Subject: B\r\n\r\n")["modified"]
    assert modified["uid"] == created["uid"] and modified["tag"] != created["tag"]
    binary = adm.post(
        "create", path=INBOX + "b.bin", content_base64=base64.b64encode(b"\x00\xff").decode()
    )
    assert binary["created"]["size"] == 2
    moved = adm.post("move", path=INBOX + "A.EML", destination="/exchange/alice/Archive/A.EML")
    assert moved["moved"]["uid"] == created["uid"] and moved["overwritten"] is False
    copied = adm.post("copy", path="/exchange/alice/Archive/A.EML", destination=INBOX + "C.EML")
    assert copied["copied"]["uid"] != created["uid"]
    assert adm.post("delete", path=INBOX + "C.EML")["deleted"]["path"] == INBOX + "C.EML"
    folder = adm.post("create", path="/exchange/carol/Inbox/", parents=True)["created"]
    assert folder["collection"] and folder["incarnation"]
    export = adm.export(INBOX)
    assert export["items"]["Hello.EML"]["content"].startswith(b"From: ")
    assert "Receipts" not in export["items"]  # items only
    inc = export["collection"]["incarnation"]
    recreated = adm.post("recreate", path=INBOX, keep=["Hello.EML"])
    assert recreated["recreated"]["incarnation"] != inc
    assert [k["name"] for k in recreated["kept"]] == ["Hello.EML"]
    assert adm.post("settings", page_cap=3, transform="crlf") == {
        "page_cap": 3,
        "transform": "crlf",
    }
    assert peer.server.settings.page_cap == 3
    paths = {r["path"] for r in adm.get("tree")["resources"]}
    assert "/exchange/carol/Inbox/" in paths and INBOX + "b.bin" not in paths  # not kept


@pytest.mark.parametrize(
    ("op", "args", "reason"),
    [
        ("create", {}, "'path' is required"),
        ("create", {"path": INBOX + "Hello.EML"}, "already exists"),
        ("create", {"path": "/nowhere/x.EML"}, "does not exist"),
        ("modify", {"path": INBOX + "Hello.EML"}, "nothing to modify"),
        ("modify", {"path": INBOX + "nope", "content": "x"}, "does not exist"),
        ("move", {"path": INBOX + "Hello.EML"}, "'destination' is required"),
        ("recreate", {"path": INBOX, "keep": "yes"}, "'keep' must be"),
        ("settings", {"page_cap": -1}, "page_cap"),
        ("settings", {"transform": "rot13"}, "transform"),
        ("create", {"path": INBOX + "x", "props": {"nonamespace": "1"}}, "namespace"),
        ("frobnicate", {}, "no admin endpoint"),
    ],
)
def test_http_api_errors(peer: Peer, op: str, args: dict[str, object], reason: str) -> None:
    with pytest.raises(AdminError, match=reason):
        peer.admin.post(op, **args)


def test_not_json_and_bad_method(peer: Peer) -> None:
    ans = peer.request("POST", "/_admin/create", b"{nope")
    assert ans.status == 400 and b"not JSON" in ans.body
    assert peer.request("DELETE", "/_admin/tree").status == 405


def test_cli(peer: Peer, capsys: pytest.CaptureFixture[str]) -> None:
    url = peer.url
    assert (
        main(
            [
                "admin",
                url,
                "create",
                INBOX + "Cli.EML",
                "--subject",
                "From the shell",
                "--body",
                "hello",
                "--prop",
                "urn:schemas:httpmail:importance=1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith(f"created: {INBOX}Cli.EML  rid:")
    assert main(["admin", url, "modify", INBOX + "Cli.EML", "--text", "Subject: x\r\n\r\n"]) == 0
    assert main(["admin", url, "move", INBOX + "Cli.EML", INBOX + "Cli2.EML"]) == 0
    capsys.readouterr()
    assert main(["admin", url, "show", INBOX]) == 0
    out = capsys.readouterr().out
    assert "Cli2.EML" in out and "Cli.EML " not in out
    assert main(["admin", url, "recreate", INBOX, "--keep", "Cli2.EML"]) == 0
    assert main(["admin", url, "settings", "--page-cap", "2"]) == 0
    assert "page_cap=2" in capsys.readouterr().out
    assert main(["admin", url, "--json", "settings"]) == 0
    assert '"page_cap": 2' in capsys.readouterr().out
    assert main(["admin", url, "delete", INBOX + "nope"]) == 1
    assert "404" in capsys.readouterr().err
    assert main(["admin", "http://127.0.0.1:9", "show"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_admin_client_accepts_the_admin_url() -> None:
    assert AdminClient("http://h:1/_admin/").base == "http://h:1"
