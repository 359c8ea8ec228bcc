"""The reference server over HTTP: manifests, the method matrix of spec §6.4, conditions, 475s,
paging, refusals with reasons, concurrency, and ``repltap serve`` as a process."""

from __future__ import annotations

import http.client
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from repltap.protocol import exchange
from repltap.protocol import xml as safexml
from repltap.sim.server import Settings, serve_in_thread, stop_server

from .conftest import INBOX, REPL, SQL, Answer, Peer, by_name, decode, manifest_body

DAV = "DAV:"
HELLO = INBOX + "Hello.EML"


def tags(ans: Answer) -> tuple[str | None, str | None]:
    return ans.header("ResourceTag"), ans.header("Repl-UID")


def bare(v: str | None) -> str:
    assert v is not None and v.startswith("<") and v.endswith(">"), v
    return v[1:-1]


# ------------------------------------------------------------------------------ manifests


def test_initial_manifest_is_exchange_shaped(peer: Peer) -> None:
    ans, resp = peer.manifest()
    assert ans.status == 207 and ans.header("Accept-Ranges") == "rows"
    assert ans.header("ResourceTag") is None  # never on SEARCH (spec §9.6)
    assert resp.manifest and resp.token and not resp.notes and resp.problem is None
    assert resp.changes == {"new": 5, "change": 0, "delete": 0}
    e = by_name(resp)["Hello.EML"]
    assert e["href"] == f"{peer.url}{HELLO}" and e["tag"].startswith("rt:")
    assert re.fullmatch(r"rid:[0-9a-f]{44}", e["uid"]) and re.fullmatch(
        r"rt:[0-9a-f]{88}", e["tag"]
    )
    assert "Lunch%20on%20Friday.EML" in by_name(resp)
    # Generated prefixes like Exchange's (a: for DAV:), the canonical repl namespace.
    assert ans.body.startswith(b"<?xml") and b'xmlns:a="DAV:"' in ans.body
    assert f'="{REPL}"'.encode() in ans.body and b"<a:multistatus" in ans.body
    # The receipts subfolder is filtered out by WHERE "DAV:isfolder" = false.
    assert "Receipts" not in str(resp.entries)


@pytest.fixture(params=["random", "hex-404"])
def tagged(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Peer]:
    """A fresh server whose ids are random hex, or whose ids are hex full of "404" (so are
    its resourcetags and collblobs): a check on an answer's structure holds for both."""
    if request.param == "hex-404":
        monkeypatch.setattr(secrets, "token_hex", lambda n=32: ("404" * n)[: 2 * n])
    server, thread = serve_in_thread(tmp_path / "data", settings=Settings())
    monkeypatch.undo()
    try:
        yield Peer(server)
    finally:
        stop_server(server, thread)


def statuses(body: bytes) -> list[list[int | None]]:
    """The propstat statuses of each D:response, in document order."""
    root = safexml.parse(body)
    return [
        [
            exchange.parse_status_line(ps.findtext(f"{{{DAV}}}status"))
            for ps in r.findall(f"{{{DAV}}}propstat")
        ]
        for r in root.iter(f"{{{DAV}}}response")
    ]


def test_select_list_is_honoured_with_aliases_and_404_propstats(tagged: Peer) -> None:
    peer = tagged
    sql = (
        'SELECT "urn:schemas:httpmail:subject" AS subj, '
        '"http://schemas.microsoft.com/repl/resourcetag", "urn:schemas:httpmail:importance" '
        f'FROM SCOPE(\'SHALLOW TRAVERSAL OF "{INBOX}"\') WHERE "DAV:isfolder" = false'
    )
    ans, resp = peer.manifest(sql=sql)
    root = safexml.parse(ans.body)
    first = root.find(f"{{{DAV}}}response")
    assert first is not None
    ok, missing = first.findall(f"{{{DAV}}}propstat")
    assert [p.tag for p in ok.find(f"{{{DAV}}}prop")] == ["subj", f"{{{REPL}}}resourcetag"]
    assert ok.findtext(f"{{{DAV}}}status") == "HTTP/1.1 200 OK"
    assert [p.tag for p in missing.find(f"{{{DAV}}}prop")] == ["{urn:schemas:httpmail:}importance"]
    assert "404" in (missing.findtext(f"{{{DAV}}}status") or "")
    # Report.EML has an importance: it is in its 200 propstat.
    assert b">2</" in ans.body
    assert [200, 404] in statuses(ans.body)
    # Brief: t leaves the 404 propstats out: only 200 propstats, importance in Report.EML's only
    # (the body is not searched for "404": resourcetags are hex and may well contain it).
    ans2, resp2 = peer.manifest(sql=sql, headers={"Brief": "t"})
    assert statuses(ans2.body) == [[200]] * len(resp2.entries) and resp2.entries
    root2 = safexml.parse(ans2.body)
    importance = "{urn:schemas:httpmail:}importance"
    with_importance = [
        r.findtext(f"{{{DAV}}}href") or ""
        for r in root2.iter(f"{{{DAV}}}response")
        if r.find(f".//{{{DAV}}}prop/{importance}") is not None
    ]
    assert [h.rsplit("/", 1)[-1] for h in with_importance] == ["Report.EML"]
    assert all(e["uid"] is None for e in resp.entries)  # repl-uid not selected, not sent


def test_updated_manifest_new_change_delete_and_the_empty_repl(peer: Peer) -> None:
    _, first = peer.manifest()
    hello_uid = by_name(first)["Hello.EML"]["uid"]
    peer.admin.post("create", path=INBOX + "New.EML", subject="New")
    peer.admin.post("modify", path=INBOX + "Report.EML", subject="Report v2")
    peer.admin.post("delete", path=HELLO)
    ans, resp = peer.manifest(collblob=first.token)
    assert resp.changes == {"new": 1, "change": 1, "delete": 1}
    kinds = [(e["type"], e["href"]) for e in resp.entries]
    assert kinds[0] == ("new", f"{peer.url}{INBOX}New.EML")  # in the order of the changes
    assert kinds[1] == ("change", f"{peer.url}{INBOX}Report.EML")
    assert kinds[2] == ("delete", "")  # empty href, keyed by repl-uid (§13.16)
    assert resp.entries[2]["uid"] == hello_uid
    assert resp.token and resp.token != first.token
    ans, again = peer.manifest(collblob=resp.token)
    assert again.no_changes and again.token is None and again.entries == []
    assert re.search(rb"<[a-z]+:repl/>", ans.body)


def test_resourcetaglist_folds_exact_current_tags(peer: Peer) -> None:
    _, first = peer.manifest()
    put = peer.request("PUT", HELLO, b"Subject: mine\r\n\r\n", {"Content-Type": "message/rfc822"})
    mine = bare(put.header("ResourceTag"))
    peer.admin.post("modify", path=INBOX + "Meeting.EML", subject="theirs")
    _, resp = peer.manifest(collblob=first.token, acks=(mine,))
    assert [e["href"].rsplit("/", 1)[1] for e in resp.entries] == ["Meeting.EML"]
    # A listed tag that is no longer current does not hide the newer change.
    peer.admin.post("modify", path=HELLO, subject="theirs too")
    _, resp2 = peer.manifest(collblob=resp.token, acks=(mine,))
    assert [e["href"].rsplit("/", 1)[1] for e in resp2.entries] == ["Hello.EML"]


def test_paging_with_newest_collblob_then_416(peer: Peer) -> None:
    ans, p1 = peer.manifest(rows="0-1")
    assert ans.status == 207 and ans.header("Content-Range") == "rows 0-1; total=5"
    assert len(p1.entries) == 2
    ans, p2 = peer.manifest(collblob=p1.token, rows="0-1")
    assert ans.header("Content-Range") == "rows 0-1; total=3"
    ans, p3 = peer.manifest(collblob=p2.token, rows="0-1")
    assert ans.header("Content-Range") == "rows 0-0; total=1" and len(p3.entries) == 1
    seen = [e["uid"] for p in (p1, p2, p3) for e in p.entries]
    assert len(set(seen)) == 5
    ans, p4 = peer.manifest(collblob=p1.token, rows="3-9")  # past the end of what remains
    assert ans.status == 416 and ans.header("Content-Range") == "rows */3"
    assert p4.invalid_token is False
    ans, none = peer.manifest(collblob=p3.token, rows="0-1")
    assert ans.status == 207 and none.no_changes


def test_page_cap_truncates_with_content_range(peer: Peer) -> None:
    peer.admin.post("settings", page_cap=2)
    ans, p1 = peer.manifest()  # no Range asked: the cap still applies, and says so
    assert len(p1.entries) == 2 and ans.header("Content-Range") == "rows 0-1; total=5"
    ans, p2 = peer.manifest(collblob=p1.token, rows="0-99")
    assert len(p2.entries) == 2 and ans.header("Content-Range") == "rows 0-1; total=3"
    peer.admin.post("settings", page_cap=None)
    ans, p3 = peer.manifest(collblob=p2.token)
    assert len(p3.entries) == 1 and ans.header("Content-Range") is None


def test_fast_forward_with_rows_minus_zero(peer: Peer) -> None:
    ans, resp = peer.manifest(rows="-0")
    assert ans.status == 207 and resp.entries == [] and resp.token
    assert ans.header("Content-Range") == "rows *; total=5"
    _, after = peer.manifest(collblob=resp.token)
    assert after.no_changes


@pytest.mark.parametrize(
    "form", ["<R:collblob/>", "<R:collblob></R:collblob>", "<R:collblob>  </R:collblob>", ""]
)
def test_every_empty_collblob_form_is_an_initial_sync(peer: Peer, form: str) -> None:
    body = (
        f'<D:searchrequest xmlns:D="DAV:" xmlns:R="{REPL}"><R:repl>{form}</R:repl>'
        f"<D:sql>{SQL.format(path=INBOX)}</D:sql></D:searchrequest>"
    ).encode()
    ans = peer.request("SEARCH", INBOX, body, {"Content-Type": "text/xml"})
    resp = decode(ans, "SEARCH", INBOX, {}, body)
    assert ans.status == 207 and resp.changes["new"] == 5 and resp.token


def test_collblob_only_search_reuses_its_query(peer: Peer) -> None:
    _, first = peer.manifest()
    peer.admin.post("modify", path=HELLO, subject="again")
    body = manifest_body(None, first.token)
    ans = peer.request("SEARCH", INBOX, body, {"Content-Type": "text/xml"})
    resp = decode(ans, "SEARCH", INBOX, {}, body)
    assert ans.status == 207 and [e["type"] for e in resp.entries] == ["change"]
    ans = peer.request("SEARCH", INBOX, manifest_body(None, None))
    assert ans.status == 400 and b"needs D:sql" in ans.body


def test_475_for_every_unusable_collblob(peer: Peer, tmp_path: Path) -> None:
    _, first = peer.manifest()
    token = first.token
    assert token
    cases = {
        "garbage": ("not-a-collblob", INBOX, None),
        "tampered": (
            token[:-6] + ("AAAA" if not token.endswith("AAAA==") else "BBBB") + "==",
            INBOX,
            None,
        ),
        "other collection": (token, "/exchange/alice/Contacts/", None),
        "other query": (token, INBOX, SQL.format(path=INBOX).replace("ishidden", "isreadonly")),
    }
    for name, (blob, path, sql) in cases.items():
        ans, resp = peer.manifest(path=path, collblob=blob, sql=sql)
        assert ans.status == 475, name
        assert ans.reason == "Invalid collblob" and resp.invalid_token, name
        assert b"Traceback" not in ans.body
    # Only the SELECT list may change (spec §8.2).
    other_select = SQL.format(path=INBOX).replace('"DAV:getcontentlength", ', "")
    assert peer.manifest(collblob=token, sql=other_select)[0].status == 207
    # A collblob from another server (another data directory) is foreign.
    other, thread = serve_in_thread(tmp_path / "other")
    try:
        foreign = Peer(other).manifest(collblob=token)[0]
        assert foreign.status == 475 and b"another server" in foreign.body
    finally:
        stop_server(other, thread)
    # The documented case: the collection deleted and re-created at the same URL.
    peer.admin.post("recreate", path=INBOX)
    ans, resp = peer.manifest(collblob=token)
    assert ans.status == 475 and b"re-created" in ans.body
    assert peer.manifest()[1].changes["new"] == 5  # a fresh initial sync works


def test_propfind_manifest(peer: Peer) -> None:
    body = (
        f'<D:propfind xmlns:D="DAV:" xmlns:R="{REPL}"><R:repl><R:collblob/></R:repl>'
        "<D:prop><D:displayname/><R:resourcetag/><R:repl-uid/></D:prop></D:propfind>"
    ).encode()
    ans = peer.request("PROPFIND", INBOX, body, {"Depth": "1"})
    resp = decode(ans, "PROPFIND", INBOX, {"Depth": "1"}, body)
    assert ans.status == 207 and resp.manifest and resp.token
    assert resp.changes["new"] == 6  # no WHERE: the Receipts folder is listed too
    ans2 = peer.request(
        "PROPFIND",
        INBOX,
        body.replace(b"<R:collblob/>", f"<R:collblob>{resp.token}</R:collblob>".encode()),
        {"Depth": "1"},
    )
    assert decode(ans2, "PROPFIND", INBOX, {}, b"<x/>").no_changes or b"repl/>" in ans2.body
    assert peer.request("PROPFIND", INBOX, body, {"Depth": "0"}).status == 400


def test_deep_traversal_manifest(peer: Peer) -> None:
    sql = (
        'SELECT "DAV:href", "DAV:isfolder", "http://schemas.microsoft.com/repl/repl-uid" '
        "FROM SCOPE('DEEP TRAVERSAL OF \"/exchange/alice/\"')"
    )
    _, resp = peer.manifest(path="/exchange/alice/", sql=sql)
    hrefs = [e["href"].removeprefix(peer.url) for e in resp.entries]
    assert "/exchange/alice/Inbox/Receipts/Receipt-1042.EML" in hrefs
    assert hrefs.index("/exchange/alice/Inbox/") < hrefs.index(HELLO)  # folders first


def test_plain_search_with_rows(peer: Peer) -> None:
    body = (
        b'<D:searchrequest xmlns:D="DAV:"><D:sql>SELECT "urn:schemas:contacts:fileas" '
        b"FROM SCOPE('SHALLOW TRAVERSAL OF \"/exchange/alice/Contacts/\"')</D:sql>"
        b"</D:searchrequest>"
    )
    ans = peer.request("SEARCH", "/exchange/alice/Contacts/", body, {"Range": "rows=1-5"})
    assert ans.status == 207 and ans.header("Content-Range") == "rows 1-2; total=3"
    assert b"Carol Smith" in ans.body and b"Bob Jones" not in ans.body
    assert b"repl" not in ans.body.split(b">", 2)[2][:200] or b"collblob" not in ans.body
    assert (
        peer.request("SEARCH", "/exchange/alice/Contacts/", body, {"Range": "rows=7-9"}).status
        == 416
    )


# ------------------------------------------------------------------------------ methods


def test_get_and_head(peer: Peer) -> None:
    ans = peer.request("GET", HELLO)
    assert ans.status == 200 and ans.header("Content-Type") == "message/rfc822"
    tag, uid = tags(ans)
    assert tag and uid is None and b"Subject: Hello\r\n" in ans.body
    assert peer.request("GET", HELLO, headers={"If": f"({tag})"}).status == 200
    assert peer.request("GET", HELLO, headers={"If": "(<rt:00>)"}).status == 412
    assert peer.request("GET", HELLO, headers={"If": "(Not <rt:00>)"}).status == 200
    assert peer.request("GET", HELLO, headers={"If": "(<rt:00>) (" + tag + ")"}).status == 200
    head = peer.request("HEAD", HELLO)
    assert (
        head.status == 200
        and head.body == b""
        and head.header("Content-Length") == str(len(ans.body))
    )
    assert peer.request("GET", INBOX + "nope.EML").status == 404


def test_put_create_replace_and_conditions(peer: Peer) -> None:
    path = INBOX + "Put.EML"
    ans = peer.request("PUT", path, b"Subject: p\r\n\r\n", {"If-None-Match": "*"})
    tag, uid = tags(ans)
    assert ans.status == 201 and tag and uid and ans.header("Location") == peer.url + path
    assert peer.request("PUT", path, b"x", {"If-None-Match": "*"}).status == 412
    again = peer.request("PUT", path, b"Subject: p2\r\n\r\n", {"If": f"({tag})"})
    tag2, uid2 = tags(again)
    assert again.status == 204 and tag2 != tag and uid2 == uid
    stale = peer.request("PUT", path, b"x", {"If": f"({tag})"})
    assert stale.status == 412 and b"does not match" in stale.body
    assert peer.request("PUT", path, b"x", {"If": f"({uid})"}).status == 204  # rid: holds
    assert peer.request("PUT", INBOX, b"x").status == 405
    assert peer.request("PUT", "/no/such/folder/x.EML", b"x").status == 409


def test_put_transformation_answers_210(peer: Peer) -> None:
    peer.admin.post("settings", transform="crlf")
    ans = peer.request(
        "PUT", INBOX + "Lf.EML", b"Subject: lf\n\nline\n", {"Content-Type": "message/rfc822"}
    )
    assert ans.status == 210 and ans.reason == "Content Different"
    assert b"CRLF" in ans.body and all(tags(ans))
    assert peer.request("GET", INBOX + "Lf.EML").body == b"Subject: lf\r\n\r\nline\r\n"
    ok = peer.request(
        "PUT", INBOX + "Crlf.EML", b"Subject: ok\r\n\r\n", {"Content-Type": "message/rfc822"}
    )
    assert ok.status == 201  # nothing to change, no 210


def test_post_lets_the_server_name_the_item_and_ignores_if(peer: Peer) -> None:
    ans = peer.request(
        "POST",
        INBOX,
        b"Subject: Posted note\r\n\r\nhi\r\n",
        {"Content-Type": "message/rfc822", "If": "(<rt:nonsense>)"},
    )
    assert ans.status == 201 and all(tags(ans))
    assert ans.header("Location") == f"{peer.url}{INBOX}Posted%20note.EML"
    second = peer.request("POST", INBOX, b"Subject: Posted note\r\n\r\n")
    assert second.header(
        "Location",
    ).endswith("Posted%20note-2.EML")  # type: ignore[union-attr]
    assert peer.request("POST", HELLO, b"x").status == 405


def test_propfind_and_proppatch(peer: Peer) -> None:
    get_tag = peer.request("GET", HELLO).header("ResourceTag")
    body = (
        f'<D:propfind xmlns:D="DAV:" xmlns:R="{REPL}"><D:prop><R:resourcetag/><R:repl-uid/>'
        '<H:subject xmlns:H="urn:schemas:httpmail:"/><D:nothere/></D:prop></D:propfind>'
    ).encode()
    ans = peer.request("PROPFIND", HELLO, body, {"Depth": "0", "If": f"({get_tag})"})
    assert ans.status == 207 and ans.header("ResourceTag") is None
    assert b">Hello<" in ans.body and b"404" in ans.body
    assert peer.request("PROPFIND", HELLO, body, {"If": "(<rt:old>)"}).status == 412
    allprop = peer.request("PROPFIND", INBOX, b"", {"Depth": "1"})
    assert allprop.status == 207 and allprop.body.count(b"resourcetag>rt:") == 7
    assert b"<a:collection/>" in allprop.body

    patch = (
        b'<D:propertyupdate xmlns:D="DAV:" xmlns:H="urn:schemas:httpmail:"><D:set><D:prop>'
        b"<H:importance>2</H:importance></D:prop></D:set></D:propertyupdate>"
    )
    ans = peer.request("PROPPATCH", HELLO, patch, {"If": f"({get_tag})"})
    new_tag, uid = tags(ans)
    assert ans.status == 207 and new_tag != get_tag and uid
    assert peer.request("PROPPATCH", HELLO, patch, {"If": f"({get_tag})"}).status == 412
    brief = peer.request("PROPPATCH", HELLO, patch, {"Brief": "t"})
    assert brief.status == 200 and brief.body == b""
    protected = patch.replace(b"H:importance>", b"D:getcontentlength>")
    ans = peer.request("PROPPATCH", HELLO, protected)
    assert ans.status == 207 and b"403" in ans.body and ans.header("ResourceTag") is None
    created = peer.request("PROPPATCH", INBOX + "ByPatch.EML", patch)
    assert created.status == 207 and all(tags(created))
    assert peer.request("PROPPATCH", HELLO, b"<nope").status == 400


def test_delete_move_copy_mkcol(peer: Peer) -> None:
    tag = peer.request("GET", HELLO).header("ResourceTag")
    assert peer.request("DELETE", HELLO, headers={"If": "(<rt:x>)"}).status == 412
    gone = peer.request("DELETE", HELLO, headers={"If": f"({tag})"})
    assert gone.status == 204 and gone.header(
        "ResourceTag",
    ).startswith("<rt:")  # type: ignore[union-attr]
    assert peer.request("GET", HELLO).status == 404

    meeting = INBOX + "Meeting.EML"
    mtag = peer.request("GET", meeting).header("ResourceTag")
    # A reverse proxy leaves the client's host in Destination: only the path counts.
    dest = "http://proxy.example:8080" + INBOX + "Moved.EML"
    assert (
        peer.request("MOVE", meeting, headers={"Destination": dest, "If": "(<rt:x>)"}).status == 412
    )
    moved = peer.request("MOVE", meeting, headers={"Destination": dest, "If": f"({mtag})"})
    assert moved.status == 201 and tags(moved) == (None, None)  # spec §9.8
    assert peer.request("GET", INBOX + "Moved.EML").header("ResourceTag") == mtag
    report = INBOX + "Report.EML"
    no = peer.request("MOVE", report, headers={"Destination": dest, "Overwrite": "F"})
    assert no.status == 412
    assert peer.request("MOVE", report).status == 400  # no Destination
    assert (
        peer.request("MOVE", report, headers={"Destination": dest, "Overwrite": "X"}).status == 400
    )
    over = peer.request("MOVE", report, headers={"Destination": dest, "Overwrite": "T"})
    assert over.status == 204

    copy = peer.request("COPY", INBOX + "Moved.EML", headers={"Destination": INBOX + "Copy.EML"})
    assert copy.status == 201 and copy.header("ResourceTag") is None
    a = peer.request("PROPFIND", INBOX + "Moved.EML", b"", {"Depth": "0"}).body
    b = peer.request("PROPFIND", INBOX + "Copy.EML", b"", {"Depth": "0"}).body
    uid_re = re.compile(rb"repl-uid>(rid:[0-9a-f]+)<")
    assert uid_re.search(a).group(1) != uid_re.search(b).group(1)  # type: ignore[union-attr]

    mk = peer.request("MKCOL", INBOX + "Sub/")
    assert mk.status == 201 and all(tags(mk))
    again = peer.request("MKCOL", INBOX + "Sub/")
    assert again.status == 409 and b"already exists" in again.body
    assert peer.request("MKCOL", "/nope/deeper/").status == 409
    assert peer.request("MKCOL", INBOX + "Body/", b"<x/>").status == 415
    assert peer.request("DELETE", INBOX + "Sub/").status == 204


def test_options(peer: Peer) -> None:
    ans = peer.request("OPTIONS", "/")
    assert ans.status == 200 and "SEARCH" in (ans.header("Allow") or "")
    assert ans.header("DAV") == "1, 2"


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "reason"),
    [
        ("SEARCH", INBOX, b"", {}, 400, b"needs a DAV:searchrequest"),
        ("SEARCH", INBOX, b"<D:searchrequest xmlns:D='DAV:'><D:sql>", {}, 400, b"cannot be read"),
        ("SEARCH", INBOX, b"<x/>", {}, 400, b"must be DAV:searchrequest"),
        ("SEARCH", INBOX, manifest_body("SELECT nonsense", None), {}, 400, b"SQL not understood"),
        (
            "SEARCH",
            INBOX,
            manifest_body(SQL.format(path=INBOX), None),
            {"Range": "rows=5-1"},
            400,
            b"ends before it starts",
        ),
        (
            "SEARCH",
            INBOX,
            manifest_body(SQL.format(path=INBOX), None),
            {"Range": "rows=0-1,3-4"},
            400,
            b"one row range",
        ),
        (
            "SEARCH",
            "/exchange/nobody/",
            manifest_body(SQL.format(path="/exchange/nobody/"), None),
            {},
            404,
            b"does not exist",
        ),
        ("GET", HELLO, b"", {"If": "(<rt:unterminated"}, 400, b"unterminated"),
        ("GET", "/exchange/../etc/passwd", b"", {}, 400, b"'..'"),
        ("PROPFIND", INBOX, b"", {"Depth": "2"}, 400, b"Depth"),
        (
            "PROPFIND",
            INBOX,
            b"<!DOCTYPE x [<!ENTITY a 'b'>]><D:propfind xmlns:D='DAV:'/>",
            {},
            400,
            b"DTD",
        ),
        ("BREW", "/", b"", {}, 501, b"Unsupported method"),
        ("GET", HELLO, b"", {"If": "<http://x/%ff> (<rt:1>)"}, 400, b"tagged URL"),
        ("MOVE", HELLO, b"", {"Destination": "http://x/a/%ff"}, 400, b"Destination"),
        ("GET", "/_admin/nope", b"", {}, 404, b"no admin endpoint"),
    ],
)
def test_bad_requests_get_a_reason_not_a_traceback(
    peer: Peer,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    reason: bytes,
) -> None:
    ans = peer.request(method, path, body, headers)
    assert ans.status == status
    assert reason in ans.body and b"Traceback" not in ans.body


def test_unparsable_request_lines_get_a_reason(peer: Peer) -> None:
    for line, reason in ((b"GARBAGE", b"400 Bad request syntax"), (b"GET / HTTP/9.9", b"505")):
        with socket.create_connection(("127.0.0.1", peer.port), timeout=5) as s:
            s.sendall(line + b"\r\n\r\n")
            got = s.recv(4096)
        assert reason in got and b"Traceback" not in got


def test_keep_alive_and_raw_errors(peer: Peer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    for _ in range(3):
        conn.request("GET", HELLO)
        r = conn.getresponse()
        assert r.status == 200 and r.read()
    conn.request("GET", INBOX + "missing")
    r = conn.getresponse()
    assert r.status == 404 and r.read().startswith(b"404 ")
    conn.close()
    # A malformed Content-Length is refused and the connection closed.
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    conn.putrequest("PUT", INBOX + "x.EML")
    conn.putheader("Content-Length", "abc")
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 400 and b"Content-Length" in r.read()
    conn.close()


def test_concurrent_conditional_writes_are_serialised(peer: Peer) -> None:
    """Six clients race to PUT the same item, each with the tag it read: no two succeed with
    the same tag (no update is lost silently), every unconditional create lands, and nothing
    crashes."""
    results: list[tuple[int, str | None, str | None]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(6):
            tag = peer.request("GET", HELLO).header("ResourceTag")
            ans = peer.request(
                "PUT", HELLO, f"Subject: {n}-{i}\r\n\r\n".encode(), {"If": f"({tag})"}
            )
            with lock:
                results.append((ans.status, tag, ans.header("ResourceTag")))
            peer.request("PUT", INBOX + f"w{n}-{i}.EML", b"Subject: x\r\n\r\n")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {status for status, _, _ in results} <= {204, 412}
    wins = [(cond, new) for status, cond, new in results if status == 204]
    assert wins and len({cond for cond, _ in wins}) == len(wins)
    final = peer.request("GET", HELLO).header("ResourceTag")
    assert final in {new for _, new in wins}
    _, resp = peer.manifest()
    assert len(resp.entries) == 5 + 36


# ------------------------------------------------------------------------------ the process


def _serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "repltap.cli", "serve", "--port", "0", "--quiet", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert p.stdout is not None
    first = p.stdout.readline()
    m = re.match(r"listening on (http://\S+)/", first)
    if not m:
        p.kill()
        raise AssertionError(first + p.stdout.read())
    return p, m.group(1)


def _rest(p: subprocess.Popen[str]) -> str:
    # Not communicate(): it reads the pipe's fd directly and would miss what readline() buffered.
    p.wait(10)
    assert p.stdout is not None
    return p.stdout.read()


def test_repltap_serve_persists_and_stops_cleanly(tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(
        "resources:\n"
        "  - path: /exchange/bob/Inbox/\n"
        "  - path: /exchange/bob/Inbox/Hi.EML\n"
        '    content: "Subject: Hi\\r\\n\\r\\nHello Bob\\r\\n"\n'
        '    props: {"urn:schemas:httpmail:importance": "2"}\n'
    )
    data = tmp_path / "data"
    p, url = _serve(tmp_path, "--data", str(data), "--seed", str(seed))
    try:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", "/exchange/bob/Inbox/Hi.EML")
        r = conn.getresponse()
        first_tag = r.getheader("ResourceTag")
        assert r.status == 200 and r.read() == b"Subject: Hi\r\n\r\nHello Bob\r\n"
        conn.request(
            "SEARCH",
            "/exchange/bob/Inbox/",
            manifest_body(SQL.format(path="/exchange/bob/Inbox/"), None),
        )
        first_manifest = conn.getresponse().read()
        conn.close()
    finally:
        p.send_signal(signal.SIGTERM)
        out = _rest(p)
    assert p.returncode == 0, out
    assert "Traceback" not in out
    p, url = _serve(tmp_path, "--data", str(data), "--seed", str(seed))
    try:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", "/exchange/bob/Inbox/Hi.EML")
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("ResourceTag") == first_tag
        r.read()
        conn.close()
        # A collblob issued before the restart is still good: same key, same incarnation.
        blob = re.search(rb"collblob>([^<]+)<", first_manifest)
        assert blob is not None
        body = manifest_body(SQL.format(path="/exchange/bob/Inbox/"), blob.group(1).decode())
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("SEARCH", "/exchange/bob/Inbox/", body)
        r = conn.getresponse()
        assert r.status == 207 and re.search(rb"<[a-z]+:repl/>", r.read())
        conn.close()
    finally:
        p.terminate()
        out = _rest(p)
    assert "--seed" in out and "ignored" in out  # existing data wins, and it says so


def test_repltap_serve_refuses_a_bad_seed(tmp_path: Path) -> None:
    seed = tmp_path / "bad.json"
    seed.write_text('[{"path": "no-slash"}]')
    cmd = [
        sys.executable,
        "-m",
        "repltap.cli",
        "serve",
        "--port",
        "0",
        "--data",
        str(tmp_path / "d"),
        "--seed",
        str(seed),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "does not start with '/'" in r.stderr
    assert "Traceback" not in r.stderr


def test_settings_object() -> None:
    assert Settings(3, "crlf").to_dict() == {"page_cap": 3, "transform": "crlf"}
