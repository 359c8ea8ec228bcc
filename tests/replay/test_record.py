"""The recorder addon through mitmproxy's taddons: redaction, the flow file, the sidecar index."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow

from repltap.mitm.record import (
    RECORD_KEY,
    REDACTED,
    Record,
    index_of_flows,
    index_path,
    redact,
)

from .flows import INBOX, Chain, answer, item, read, request, search

BASIC = "Basic " + base64.b64encode(b"alice:s3cret").decode()
NTLM_CHALLENGE = "NTLM TlRMTVNTUAACAAAADAAMADgAAAAFgomi"
SECRETS = ("s3cret", base64.b64encode(b"alice:s3cret").decode(), "TlRMTVNTUAACAAAA", "abc123")


def with_credentials() -> http.HTTPFlow:
    f = search(
        None,
        headers={
            "Authorization": BASIC,
            "Cookie": "sessionid=abc123; theme=dark",
            "Proxy-Authorization": "Negotiate YIIGhgYGKwYBBQUCoIIGejCC",
        },
    )
    f.response = answer("toCT-one")
    f.response.headers["WWW-Authenticate"] = NTLM_CHALLENGE
    f.response.headers.add("WWW-Authenticate", 'Basic realm="mail"')
    f.response.headers["Set-Cookie"] = "sessionid=abc123; Path=/; HttpOnly"
    return f


def test_redact_removes_credentials_and_keeps_what_explains_them() -> None:
    f = with_credentials()
    removed = redact(f)
    h, rh = f.request.headers, f.response.headers  # type: ignore[union-attr]
    assert h["Authorization"] == f"Basic {REDACTED}"
    assert h["Proxy-Authorization"] == f"Negotiate {REDACTED}"
    assert h["Cookie"] == f"sessionid={REDACTED}; theme={REDACTED}"
    assert rh.get_all("WWW-Authenticate") == [f"NTLM {REDACTED}", 'Basic realm="mail"']
    assert rh["Set-Cookie"] == f"sessionid={REDACTED}; Path=/; HttpOnly"
    assert removed == [
        "request authorization",
        "request proxy-authorization",
        "request cookie",
        "response www-authenticate",
        "response set-cookie",
    ]
    state = json.dumps(f.get_state(), default=repr)
    assert not any(s in state for s in SECRETS)
    # The body, the method, the path: what replay matches on is untouched.
    assert f.request.content == with_credentials().request.content


def test_redact_forms_and_queries() -> None:
    login = request(
        "POST",
        "/exchweb/bin/auth/owaauth.dll?access_token=abc123&x=1",
        b"destination=%2Fexchange&username=alice&password=s3cret",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    removed = redact(login)
    assert login.request.urlencoded_form["username"] == "alice"
    assert login.request.urlencoded_form["password"] == REDACTED
    assert login.request.query["access_token"] == REDACTED and login.request.query["x"] == "1"
    assert removed == ["request query parameters", "request form fields"]
    plain = request("GET", f"{INBOX}a.EML")
    assert redact(plain) == []


async def test_recording_redacts_copies_and_writes_an_index(tmp_path: Path) -> None:
    rec = tmp_path / "out" / "session.mitm"  # the folder is created
    with Chain(tmp_path) as chain:
        chain.configure(repl_record=str(rec))
        live = with_credentials()
        await chain.run(live, live.response)
        assert live.request.headers["Authorization"] == BASIC  # the live flow goes on as it was
        await chain.run(request("GET", f"{INBOX}a.EML"), item(b"a", "rt:a1"))
        await chain.run(search("toCT-one"), answer(None))
    raw = rec.read_bytes()
    assert not any(s.encode() in raw for s in SECRETS)
    flows = read(rec)
    assert flows[0].id == live.id  # same ids: the event log still points at them
    assert flows[0].metadata[RECORD_KEY] == {
        "v": 1,
        "redacted": True,
        "removed": [
            "request authorization",
            "request proxy-authorization",
            "request cookie",
            "response www-authenticate",
            "response set-cookie",
        ],
    }
    assert flows[1].metadata[RECORD_KEY] == {"v": 1, "redacted": True, "removed": []}
    assert "🔒 credentials redacted: request authorization" in flows[0].comment
    assert flows[0].metadata["repl"]["summary"].startswith("manifest /exchange/alice/Inbox/")
    assert [e["event"] for e in flows[0].metadata["repl"]["events"]] == ["manifest", "token"]
    index = json.loads(index_path(rec).read_text())
    assert index_path(rec).name == "session.mitm.index.json"
    assert index["redacted"] is True and index["flows"] == 3
    assert index["redaction"]["removed"]["request authorization"] == 1
    assert index["methods"] == {"GET": 1, "SEARCH": 2}
    assert index["upstreams"] == {"mail.example.com:80": 3}
    [c] = index["collections"]
    assert c["collection"] == INBOX and c["protocol"] == "exchange" and c["manifests"] == 2
    assert c["chains"] == [
        {"start": "initial", "tokens": ["toCT-one"], "manifests": 2, "last_flow": flows[2].id}
    ]
    assert index["time"]["start"] <= index["time"]["end"]
    assert index == index_of_flows(flows, "session.mitm")  # the same from the file alone


async def test_repl_redact_false_keeps_credentials_and_says_so(tmp_path: Path) -> None:
    rec = tmp_path / "raw.mitm"
    with Chain(tmp_path) as chain:
        chain.configure(repl_record=str(rec), repl_redact=False)
        f = with_credentials()
        await chain.run(f, f.response)
    [flow] = read(rec)
    assert flow.request.headers["Authorization"] == BASIC
    assert flow.metadata[RECORD_KEY]["redacted"] is False
    index = json.loads(index_path(rec).read_text())
    assert index["redacted"] is False and index["redaction"]["flows_not_redacted"] == 1


async def test_token_chains_initial_branch_resumed_rejected(tmp_path: Path) -> None:
    rec = tmp_path / "chains.mitm"
    steps = [
        (search(None), answer("t1")),
        (search("t1"), answer("t2")),
        (search("t2"), answer(None)),  # no changes: the chain stays at t2
        (search("t2"), answer("t3")),
        (search("t1"), answer("t2b")),  # back to t1: a branch
        (search("old"), answer("t9")),  # issued before the recording: resumed
        (search("t9"), http.Response.make(475, b"475 Invalid collblob\n")),
        (search(None), answer("u1")),
    ]
    with Chain(tmp_path) as chain:
        chain.configure(repl_record=str(rec))
        for f, r in steps:
            await chain.run(f, r)
    [c] = json.loads(index_path(rec).read_text())["collections"]
    chains = [{k: v for k, v in ch.items() if k != "last_flow"} for ch in c["chains"]]
    assert chains == [
        {"start": "initial", "tokens": ["t1", "t2", "t3"], "manifests": 4},
        {"start": "branch", "tokens": ["t1", "t2b"], "manifests": 1, "branch_of": 0},
        {
            "start": "resumed",
            "tokens": ["old", "t9"],
            "manifests": 2,
            "rejected": {"token": "t9", "status": 475},
        },
        {"start": "initial", "tokens": ["u1"], "manifests": 1},
    ]
    assert c["initial_syncs"] == 2 and c["rejected"] == 1 and c["manifests"] == 8


async def test_append_unfinished_flows_and_errors(tmp_path: Path) -> None:
    rec = tmp_path / "a.mitm"
    with Chain(tmp_path) as chain:
        chain.configure(repl_record=str(rec))
        await chain.run(search(None), answer("t1"))
    with Chain(tmp_path) as chain:
        chain.configure(repl_record=f"+{rec}")
        await chain.run(search("t1"), None)  # the server is down: written with its error
        pending = search("t1")
        chain.record.request(pending)  # still under way at shutdown: written by done()
        put = http.Request.make("PUT", "http://mail.example.com/c/a.EML", b"x", {"If": "(<rt:1>)"})
        under_way = tflow.tflow(req=put)
        chain.decode.request(under_way)  # a plain request: its summary waits for the answer
        chain.record.request(under_way)
    flows = read(rec)
    assert len(flows) == 4
    assert flows[1].error is not None and flows[2].response is None
    assert flows[3].metadata["repl"]["kind"] == "upload"  # written with the request's summary
    index = json.loads(index_path(rec).read_text())
    assert index["flows"] == 4 and index["errors"] == 1 and index["replication_flows"] == 3


async def test_a_flow_killed_after_its_answer_is_written_once(tmp_path: Path) -> None:
    """A fault killing the flow in the response hook: mitmproxy fires no error hook then."""
    rec = tmp_path / "k.mitm"
    with Chain(tmp_path) as chain:
        chain.configure(repl_record=str(rec))
        f = search(None)
        f.response = answer("t1")
        chain.record.request(f)
        f.kill()  # what an earlier addon did in its response hook
        chain.record.response(f)
        chain.record.error(f)  # were it ever to come as well
    [flow] = read(rec)
    assert flow.id == f.id and flow.response is not None and flow.error is not None


async def test_unusable_paths_are_refused(tmp_path: Path) -> None:
    r = Record()
    with taddons.context(r) as tctx:
        with pytest.raises(exceptions.OptionsError, match="cannot write"):
            tctx.configure(r, repl_record=str(tmp_path))  # a directory
        junk = tmp_path / "junk.mitm"
        junk.write_bytes(b"not flows")
        with pytest.raises(exceptions.OptionsError, match="not a flow file"):
            tctx.configure(r, repl_record=f"+{junk}")
        with pytest.raises(exceptions.CommandError, match="not recording"):
            r.show_index()
        tctx.configure(r, repl_record=str(tmp_path / "ok.mitm"))
        f = tflow.tflow(resp=True)
        r.response(f)
        assert json.loads(tctx.command(r.show_index))["flows"] == 1
        tctx.configure(r, repl_record=None)
        assert r.writer is None
