"""``repltap replay-client``: translation tables, the comparison, and what reaches the server
(against the canned upstream of tests/harness)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from mitmproxy import http

from repltap import cli, protocol
from repltap.mitm.record import redact
from repltap.replayclient import PathMap, Sender, Translation, differences, replay
from tests.harness.canned import CannedServer, RawResponse

from .flows import INBOX, answer, item, request, search, search_body, write_flows


def decoded(f: http.HTTPFlow) -> tuple[protocol.Request, protocol.Response]:
    req = protocol.decode_request(
        f.request.method, f.request.path, f.request.headers, f.request.content
    )
    assert f.response is not None
    resp = protocol.decode_response(
        req, f.response.status_code, f.response.headers, f.response.content
    )
    return req, resp


def with_answer(f: http.HTTPFlow, r: http.Response) -> http.HTTPFlow:
    f.response = r
    return f


def test_learning_and_rewriting() -> None:
    tr = Translation()
    rec = with_answer(search(None), answer("rec-1", [("new", f"{INBOX}a.EML", "rt:A", "rid:a")]))
    live = with_answer(search(None), answer("live-1", [("new", f"{INBOX}a.EML", "rt:X", "rid:x")]))
    rq, rr = decoded(rec)
    _, lr = decoded(live)
    tr.learn(rr, lr, rq, PathMap())
    assert (tr.tokens, tr.tags, tr.uids) == (
        {"rec-1": "live-1"},
        {"rt:A": "rt:X"},
        {"rid:a": "rid:x"},
    )
    notes: list[str] = []
    nxt = search("rec-1", ("rt:A",))
    req = protocol.decode_request("SEARCH", INBOX, nxt.request.headers, nxt.request.content)
    body = tr.rewrite_body(nxt.request.content or b"", req, notes)
    assert body == search_body("live-1", ("rt:X",))
    assert notes == ["rewrote 2 token(s)/tag(s) in the body"]
    assert tr.rewrite_header("If", "(<rt:A>) (<rid:a>)", notes) == "(<rt:X>) (<rid:x>)"
    # A token from before the recording has no counterpart: sent as it is, and said so.
    old = search("older")
    req = protocol.decode_request("SEARCH", INBOX, old.request.headers, old.request.content)
    notes = []
    assert tr.rewrite_body(old.request.content or b"", req, notes) == old.request.content
    assert notes == ["token older has no live counterpart"]
    # Deletes are paired by repl-uid.
    rec = with_answer(search("rec-1"), answer("rec-2", [("delete", None, None, "rid:a")]))
    live = with_answer(search("live-1"), answer("live-2", [("delete", None, None, "rid:x")]))
    rq, rr = decoded(rec)
    _, lr = decoded(live)
    assert differences(rq, rr, lr, None, None, PathMap(), tr) == []


def test_differences_in_replication_terms() -> None:
    tr = Translation()
    f = with_answer(search("t"), answer("t2", [("new", f"{INBOX}a.EML", "rt:A", "rid:a")]))
    rq, rr = decoded(f)
    _, quiet = decoded(with_answer(search("t"), answer(None)))
    assert differences(rq, rr, quiet, None, None, PathMap(), tr) == [
        "token: recorded a new one, live none",
        f"changes: recorded 1 new, live no changes; only recorded: new {INBOX}a.EML",
    ]
    _, rejected = decoded(with_answer(search("t"), http.Response.make(475, b"475 Invalid\n")))
    [status] = differences(rq, rr, rejected, None, None, PathMap(), tr)
    assert status.startswith("status: recorded 207, live 475")
    g = with_answer(request("GET", f"{INBOX}a.EML"), item(b"one", "rt:A"))
    grq, grr = decoded(g)
    _, glr = decoded(with_answer(request("GET", f"{INBOX}a.EML"), item(b"two", "rt:B")))
    assert differences(grq, grr, glr, b"one", b"two", PathMap(), tr) == [
        "content: the live body differs from the recorded one"
    ]
    assert differences(grq, grr, glr, b"one", b"one", PathMap(), tr) == []
    assert PathMap([("/exchange/alice/", "/exchange/bob/")]).apply(f"{INBOX}a") == (
        "/exchange/bob/Inbox/a"
    )


def test_what_reaches_the_server(tmp_path: Path) -> None:
    """Paths mapped, redacted credentials dropped and --user sent, Destination pointed at the
    target, tags in If rewritten, and the run stops at the first divergence."""
    creds = "Basic " + base64.b64encode(b"bob:pw").decode()
    flows = [
        with_answer(
            search(None, headers={"Authorization": "Basic c2VjcmV0"}),
            answer("r1", [("new", f"{INBOX}a.EML", "rt:A", "rid:a")]),
        ),
        with_answer(
            request(
                "MOVE",
                f"{INBOX}a.EML",
                headers={
                    "If": "(<rt:A>)",
                    "Destination": f"http://mail.example.com{INBOX}b.EML",
                },
            ),
            http.Response.make(201),
        ),
        with_answer(search("r1"), answer(None)),
        with_answer(search("r1"), answer(None)),
    ]
    for f in flows:
        redact(f)
    rec = write_flows(tmp_path / "r.mitm", flows)
    bob = "/exchange/bob/Inbox/"
    manifest = (
        '<D:multistatus xmlns:D="DAV:" xmlns:R="http://schemas.microsoft.com/repl/">'
        "<R:repl><R:collblob>L1</R:collblob></R:repl><D:response>"
        f"<D:href>http://live{bob}a.EML</D:href><D:propstat><D:status>HTTP/1.1 200 OK"
        "</D:status><D:prop><R:resourcetag>rt:Z</R:resourcetag><R:repl-uid>rid:z</R:repl-uid>"
        "</D:prop></D:propstat><R:changetype>new</R:changetype></D:response></D:multistatus>"
    ).encode()
    xml = [("Content-Type", "text/xml")]
    with CannedServer() as up:
        up.route(
            "SEARCH",
            bob,
            RawResponse(207, "Multi-Status", xml, manifest),
            RawResponse(207, "Multi-Status", xml, b"<x/>"),  # not a manifest: diverges
        )
        up.route("MOVE", f"{bob}a.EML", RawResponse(201, "Created", [], b""))
        rc = cli.main(
            [
                "replay-client",
                str(rec),
                "--target",
                up.url,
                "--user",
                "bob:pw",
                "--path-map",
                "/exchange/alice/=/exchange/bob/",
            ]
        )
        got = up.requests
    assert rc == 1
    assert [(r.method, r.target) for r in got] == [
        ("SEARCH", bob),
        ("MOVE", f"{bob}a.EML"),
        ("SEARCH", bob),
    ]  # stopped after the divergence: the fourth was not sent
    assert all(r.header("Authorization") == creds for r in got)
    assert got[1].header("Destination") == f"{up.url}{bob}b.EML"
    assert got[1].header("If") == "(<rt:Z>)"
    assert b"<R:collblob>L1</R:collblob>" in got[2].body


def test_command_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = write_flows(tmp_path / "r.mitm", [])
    for args, why in (
        (["--header", "no colon"], "expected 'Name: value'"),
        (["--path-map", "relative=x"], "expected /old/prefix/=/new/prefix/"),
    ):
        assert cli.main(["replay-client", str(rec), "--target", "http://h", *args]) == 2
        assert why in capsys.readouterr().err
    assert cli.main(["replay-client", str(rec), "--target", "ftp://h"]) == 2
    assert "is not an http:// or https:// URL" in capsys.readouterr().err
    assert cli.main(["replay-client", str(tmp_path / "nope"), "--target", "http://h"]) == 2
    assert "cannot read" in capsys.readouterr().err
    junk = tmp_path / "junk"
    junk.write_bytes(b"junk")
    assert cli.main(["replay-client", str(junk), "--target", "http://h"]) == 2
    assert "not a flow file" in capsys.readouterr().err


def test_reads_only_skips_writes(tmp_path: Path) -> None:
    flows = [
        with_answer(
            request("PUT", f"{INBOX}a.EML", b"x", {"If": "(<rt:A>)"}), http.Response.make(204)
        ),
        with_answer(request("GET", f"{INBOX}a.EML"), item(b"x", "rt:A")),
    ]
    with CannedServer() as up:
        up.route("GET", f"{INBOX}a.EML", RawResponse(200, "OK", [("ResourceTag", "<rt:A>")], b"x"))
        steps, _ = replay(
            flows, Sender(up.url, None), paths=PathMap(), extra_headers=[], reads_only=True
        )
        assert [r.method for r in up.requests] == ["GET"]
    assert steps[0].skipped == "a write (--reads-only)" and steps[1].differences == []
