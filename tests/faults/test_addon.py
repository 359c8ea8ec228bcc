"""The fault injector inside mitmproxy's taddons, between the real Decode and Track addons:
each action on a flow, what the client receives, what the summary and the event log say, the
commands, and the option's validation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.connection import ConnectionState

from repltap.mitm.faults import MARK
from tests.faults.flows import (
    CAL,
    INBOX,
    entries,
    get,
    lab,
    manifest,
    put,
    sync_report,
)
from tests.harness.mitm import call_hook


def one(name: str, action: str, match: str = "{}", extra: str = "") -> str:
    return f"rules:\n  - name: {name}\n    match: {match}\n    action: {action}\n{extra}"


# ------------------------------------------------------------------------ doing nothing


@pytest.mark.parametrize(
    "scenario", [None, one("idle", "drop", extra="    enabled: false\n")], ids=["none", "off"]
)
async def test_no_scenario_or_every_rule_off_changes_nothing(
    tmp_path: Path, scenario: str | None
) -> None:
    with lab(tmp_path, scenario) as lb:
        f, answer = manifest("T1", "T2", entries(2))
        body = answer.content
        res = await lb.run(f, answer)
        assert res.asked_server and res.client_got == body and not res.killed
        assert f.response is answer and f.response.stream is False
        assert "fault" not in f.metadata["repl"] and not f.marked
        assert [e["event"] for e in lb.events()][:2] == ["manifest", "token"]


# ------------------------------------------------------------------------ transport


async def test_delay_holds_only_its_own_flow(tmp_path: Path) -> None:
    text = one("slow", "{type: delay, ms: 300, jitter_ms: 50}", "{method: SEARCH}")
    with lab(tmp_path, text) as lb:
        slow, slow_answer = manifest("T1", "T2", entries(1))
        quick, quick_answer = get()
        done: list[str] = []

        async def go(f: object, a: object, name: str) -> None:
            await lb.run(f, a)  # type: ignore[arg-type]
            done.append(name)

        t0 = time.monotonic()
        await asyncio.gather(go(slow, slow_answer, "slow"), go(quick, quick_answer, "quick"))
        assert done == ["quick", "slow"]  # the GET did not wait for the delayed SEARCH
        assert 0.25 <= time.monotonic() - t0 < 1.0
        (rec,) = lb.faults_of(slow)
        assert rec["action"] == "delay" and 250 <= rec["delay_ms"] <= 350
        assert lb.faults_of(quick) == []


@pytest.mark.parametrize("phase", ["request", "response"])
async def test_drop(tmp_path: Path, phase: str) -> None:
    with lab(tmp_path, one("gone", f"{{type: drop, phase: {phase}}}", "{method: PUT}")) as lb:
        f, answer = put("(<rt:1>)")
        res = await lb.run(f, answer)
        assert res.killed and res.client_got is None
        assert res.asked_server is (phase == "response")  # the write happened, or it did not
        assert f.error is not None and f.error.msg == "Connection killed."
        assert lb.faults_of(f)[0]["detail"] == "closed the client connection without a byte"


async def test_reset_without_a_socket_falls_back_to_a_close(tmp_path: Path) -> None:
    # A real TCP RST needs mitmproxy's proxy server (tests/e2e checks it); here there is none.
    with lab(tmp_path, one("rst", "reset")) as lb:
        f, answer = get()
        res = await lb.run(f, answer)
        assert res.killed and not res.asked_server
        (rec,) = lb.faults_of(f)
        assert rec["rst"] is False and "not possible" in rec["detail"]


@pytest.mark.parametrize(
    ("action", "passed"),
    [("{type: truncate, bytes: 40}", 40), ("{type: truncate, fraction: 0.25}", 25)],
)
async def test_truncate(tmp_path: Path, action: str, passed: int) -> None:
    with lab(tmp_path, one("cut", action)) as lb:
        f, answer = get(body=b"y" * 100)
        res = await lb.run(f, answer)
        assert res.killed and res.client_got == b"y" * passed
        assert f.response is not None and f.response.raw_content == b"y" * passed
        assert f.response.headers["content-length"] == "100"  # the server's promise stays
        (rec,) = lb.faults_of(f)
        assert (rec["bytes"], rec["of"], rec["rst"]) == (passed, 100, False)


async def test_a_truncated_manifest_is_summarised_as_truncated(tmp_path: Path) -> None:
    with lab(tmp_path, one("cut", "{type: truncate, fraction: 0.5}")) as lb:
        f, answer = manifest("T1", "T2", entries(3))
        await lb.run(f, answer)
        s = f.metadata["repl"]
        assert s["response"]["undecodable"]["reason"] == "truncated"
        assert s["fault"][0]["action"] == "truncate"


async def test_hang_until_the_client_gives_up_or_the_cap(tmp_path: Path) -> None:
    with lab(tmp_path, one("stuck", "hang", "{method: GET}")) as lb:
        f, answer = get()

        async def give_up() -> None:
            await asyncio.sleep(0.2)
            f.client_conn.state = ConnectionState.CLOSED

        t0 = time.monotonic()
        res, _ = await asyncio.gather(lb.run(f, answer), give_up())
        assert 0.15 < time.monotonic() - t0 < 1.0
        assert res.killed and not res.asked_server
        (rec,) = lb.faults_of(f)
        assert rec["ended"] == "the client gave up" and rec["held_s"] >= 0.15
    with lab(tmp_path, one("capped", "{type: hang, seconds: 0.1, phase: response}")) as lb:
        f, answer = get()
        res = await lb.run(f, answer)
        assert res.asked_server and res.killed
        assert lb.faults_of(f)[0]["ended"] == "closed after the 0.1 s cap"


# ------------------------------------------------------------------------ HTTP


async def test_status_instead_of_the_server(tmp_path: Path) -> None:
    text = one("busy", "{type: status, code: 503, retry_after: 30}", "{kind: manifest}")
    with lab(tmp_path, text) as lb:
        f, answer = manifest("T1", "T2", entries(1))
        res = await lb.run(f, answer)
        assert not res.asked_server
        assert f.response is not None and f.response.status_code == 503
        assert f.response.headers["Retry-After"] == "30"
        assert f.metadata["repl"]["response"]["status"] == 503  # decoded like any answer
        assert lb.faults_of(f)[0]["status"] == 503
        assert f.metadata["repl.synthetic"] == "faults"  # the cache will not store it


@pytest.mark.parametrize("code", [500, 507, 401, 440])
async def test_status_after_the_server_did_the_work(tmp_path: Path, code: int) -> None:
    text = one("late", f"{{type: status, code: {code}, phase: response}}", "{method: PUT}")
    with lab(tmp_path, text) as lb:
        f, answer = put("(<rt:1>)")
        res = await lb.run(f, answer)
        assert res.asked_server and f.response is not None and f.response.status_code == code
        assert "resourcetag" not in f.response.headers
        assert f.metadata["repl"]["response"]["status"] == code
        assert "repl.synthetic" not in f.metadata  # the server did answer (the cache decides)


async def test_slow_first_byte(tmp_path: Path) -> None:
    with lab(tmp_path, one("slow", "{type: slow_first_byte, ms: 150}")) as lb:
        f, answer = get()
        t0 = time.monotonic()
        res = await lb.run(f, answer)
        assert time.monotonic() - t0 >= 0.14 and res.asked_server and not res.killed


# ------------------------------------------------------------------------ replication


async def test_invalid_token_exchange(tmp_path: Path) -> None:
    with lab(tmp_path, one("reset", "invalid_token", "{kind: manifest}")) as lb:
        f0, a0 = manifest(None, "T1", entries(1))
        await lb.run(f0, a0)
        assert lb.faults_of(f0) == []  # an initial sync has no token to reject
        f, answer = manifest("T1", "T2", entries(1))
        await lb.run(f, answer)
        assert f.response is not None and (f.response.status_code, f.response.reason) == (
            475,
            "Invalid collblob",
        )
        assert f.metadata["repl"]["response"]["invalid_token"] is True
        kinds = [(e["event"], e.get("kind")) for e in lb.events() if e["flow"] == f.id]
        assert kinds[0] == ("fault", None)  # the fault comes before what it caused
        assert ("invalid_token", None) in kinds and ("token", "rejected") in kinds


@pytest.mark.parametrize(
    ("token", "status", "described"),
    [
        ("http://radicale.org/ns/sync/0f1e", 403, False),
        ("3f2a6c1d9b8e7f6a5d4c3b2a1f0e9d8c7b6a5f4e", 412, True),  # a Xandikos git tree id
    ],
)
async def test_invalid_token_rfc6578_in_the_servers_style(
    tmp_path: Path, token: str, status: int, described: bool
) -> None:
    with lab(tmp_path, one("reset", "invalid_token")) as lb:
        f, answer = sync_report(token, "NEXT", [(CAL + "a.ics", '"1"')])
        await lb.run(f, answer)
        assert f.response is not None and f.response.status_code == status
        assert f.response.headers["Server"] == "WSGIServer/0.2"  # the server's own headers
        assert b"<valid-sync-token/>" in f.response.content  # its default namespace, too
        assert (b"responsedescription" in f.response.content) is described
        assert f.metadata["repl"]["response"]["invalid_token"] is True


async def test_invalid_token_replays_the_servers_own_rejection_once_seen(tmp_path: Path) -> None:
    with lab(tmp_path, one("reset", "invalid_token", "{nth: 1}")) as lb:
        f0, a0 = sync_report("old", "x", [])
        a0.status_code = 409
        a0.content = b'<D:error xmlns:D="DAV:"><D:valid-sync-token/><D:x/></D:error>'
        await lb.run(f0, a0)  # the server rejected a token by itself: this is its style
        assert lb.faults_of(f0) == []
        f, answer = sync_report("T1", "T2", [(CAL + "a.ics", '"1"')])
        await lb.run(f, answer)
        assert f.response is not None and f.response.status_code == 409
        assert f.response.content == a0.content


async def test_conflict_answers_412_to_conditional_writes_only(tmp_path: Path) -> None:
    with lab(tmp_path, one("storm", "conflict")) as lb:
        blind, a1 = put(None)
        res = await lb.run(blind, a1)
        assert res.asked_server and lb.faults_of(blind) == []
        f, answer = put("(<rt:1>)")
        res = await lb.run(f, answer)
        assert not res.asked_server and f.response is not None
        assert f.response.status_code == 412
        assert [e["event"] for e in lb.events() if e["flow"] == f.id] == ["fault", "conflict"]
        assert lb.faults.counters()["storm"] == {
            "enabled": True,
            "matched": 1,  # the unconditional PUT was never a candidate
            "injected": 1,
            "skipped": 0,
            "limited": 0,
            "continued": 0,
        }


async def test_corrupt_and_swap_token(tmp_path: Path) -> None:
    text = (
        one("corrupt", "corrupt_token", "{path: '/exchange/alice/Inbox/', nth: 2}")
        + "  - name: swap\n    match: {path: '/exchange/alice/Inbox/', nth: 1}\n"
        "    action: swap_token\n"
    )
    with lab(tmp_path, text) as lb:
        await lb.run(*manifest(None, "toCTAAMAAAAB", entries(1)))
        f, answer = manifest("toCTAAMAAAAB", "toCTAAMAAAAC", entries(1, "change"))
        await lb.run(f, answer)
        assert f.metadata["repl"]["response"]["token"] == "toCTAANAAAAC"
        rec = lb.faults_of(f)[0]
        assert (rec["token_from"], rec["token_to"]) == ("toCTAAMAAAAC", "toCTAANAAAAC")
        # Another collection's token, then swapped into this one's answer.
        other, other_answer = manifest(None, "CONTACTS-TOKEN", entries(1))
        other.request.path = "/exchange/alice/Contacts/"
        await lb.run(other, other_answer)
        f, answer = manifest("toCTAANAAAAC", "toCTAAMAAAAD", [])
        await lb.run(f, answer)
        assert f.metadata["repl"]["response"]["token"] == "CONTACTS-TOKEN"
        assert lb.faults_of(f)[0]["from_collection"].endswith("/exchange/alice/Contacts/")


async def test_stale_token_hands_out_an_older_answer_again(tmp_path: Path) -> None:
    with lab(tmp_path, one("stale", "stale_token", "{nth: 1}")) as lb:
        first, a1 = manifest(None, "T1", entries(2))
        await lb.run(first, a1)
        second, a2 = manifest("T1", "T2", entries(1, "change"))
        await lb.run(second, a2)
        # Neither had an older answer of its own kind (an initial sync is never answered with
        # an incremental answer, which would read as "everything is gone", nor the reverse).
        assert lb.faults_of(first) == lb.faults_of(second) == []
        third, a3 = manifest("T2", "T3", entries(1, "delete", first=2))
        await lb.run(third, a3)
        s = third.metadata["repl"]["response"]
        assert s["token"] == "T2" and s["changes"] == {"new": 0, "change": 1, "delete": 0}
        rec = lb.faults_of(third)[0]
        assert (rec["token_from"], rec["token_to"]) == ("T3", "T2")
        codes = [e["code"] for e in lb.events() if e["event"] == "anomaly"]
        assert "token-unchanged-with-changes" in codes  # the tracker sees the lie


@pytest.mark.parametrize(
    ("action", "uids"),
    [
        ("{type: drop_entries, count: 2, which: first}", ["rid:3"]),
        ("{type: drop_entries, types: [change]}", ["rid:1", "rid:3"]),
        ("{type: duplicate_entries, which: last}", ["rid:1", "rid:2", "rid:3", "rid:3"]),
        ("{type: reorder_entries, order: reverse}", ["rid:3", "rid:2", "rid:1"]),
    ],
)
async def test_entries(tmp_path: Path, action: str, uids: list[str]) -> None:
    with lab(tmp_path, one("entries", action)) as lb:
        rows = [*entries(1), *entries(1, "change", 2), *entries(1, "delete", 3)]
        f, answer = manifest("T1", "T2", rows)
        await lb.run(f, answer)
        got = [e["uid"] for e in f.metadata["repl"]["response"]["entries"]]
        assert got == uids


async def test_shuffle_is_seeded(tmp_path: Path) -> None:
    orders = []
    for _ in range(2):
        with lab(tmp_path, "seed: 9\n" + one("mix", "reorder_entries")) as lb:
            f, answer = manifest("T1", "T2", entries(6))
            await lb.run(f, answer)
            orders.append([e["uid"] for e in f.metadata["repl"]["response"]["entries"]])
    assert orders[0] == orders[1] != sorted(orders[0])


async def test_paginate_exchange(tmp_path: Path) -> None:
    with lab(tmp_path, one("pages", "{type: paginate, rows: 2}")) as lb:
        f, answer = manifest("T1", "T9", entries(5))
        await lb.run(f, answer)
        assert f.response is not None and f.response.headers["Content-Range"] == (
            "rows 0-1; total=5"
        )
        seen = [e["uid"] for e in f.metadata["repl"]["response"]["entries"]]
        token = f.metadata["repl"]["response"]["token"]
        assert token.startswith("repltap-page-1-of-3-")
        for expect_range in ("rows 0-1; total=3", "rows 0-0; total=1"):
            g, unused = manifest(token, "NEVER", entries(1))
            res = await lb.run(g, unused)
            assert not res.asked_server  # the proxy answers follow-ups from the split answer
            assert g.response is not None and g.response.headers["Content-Range"] == expect_range
            seen += [e["uid"] for e in g.metadata["repl"]["response"]["entries"]]
            token = g.metadata["repl"]["response"]["token"]
        assert token == "T9" and seen == [f"rid:{i}" for i in range(1, 6)]
        assert lb.faults.counters()["pages"]["continued"] == 2
        assert "+2 pages" in lb.tctx.command(lb.faults.list_rules)
        tokens = [(e["from"], e["to"]) for e in lb.events() if e["event"] == "token"]
        assert tokens[-1][1] == "T9" and len(tokens) == 3  # one chain, through minted tokens


async def test_paginate_rfc6578_with_507(tmp_path: Path) -> None:
    with lab(tmp_path, one("pages", "{type: paginate, rows: 1}")) as lb:
        members = [(CAL + "a.ics", '"1"'), (CAL + "b.ics", None)]
        f, answer = sync_report("T1", "T9", members)
        await lb.run(f, answer)
        s = f.metadata["repl"]["response"]
        assert s["truncated"] is True and len(s["entries"]) == 1
        assert "content-range" not in f.response.headers  # type: ignore[union-attr]
        g, unused = sync_report(s["token"], "NEVER", [])
        res = await lb.run(g, unused)
        s = g.metadata["repl"]["response"]
        assert not res.asked_server and not s.get("truncated") and s["token"] == "T9"
        assert [e["type"] for e in s["entries"]] == ["delete"]


async def test_content_different(tmp_path: Path) -> None:
    with lab(tmp_path, one("changed", "content_different")) as lb:
        f, answer = put("(<rt:1>)", 204)
        res = await lb.run(f, answer)
        assert res.asked_server and f.response is not None
        assert (f.response.status_code, f.response.reason) == (210, "Content Different")
        assert f.response.headers["ResourceTag"] == "<rt:9>"  # the new tag stays
        assert f.metadata["repl"]["response"]["meaning"].startswith("content different")
        failed, a = put("(<rt:1>)", 412)
        await lb.run(failed, a)
        assert lb.faults_of(failed) == []  # only successful uploads


async def test_strip_tags(tmp_path: Path) -> None:
    with lab(tmp_path, one("untagged", "strip_tags")) as lb:
        f, answer = get()
        await lb.run(f, answer)
        assert f.response is not None and "ResourceTag" not in f.response.headers
        assert "ETag" not in f.response.headers
        assert lb.faults_of(f)[0]["headers"] == ["ResourceTag", "ETag"]


async def test_rewrite_changetype(tmp_path: Path) -> None:
    text = one("retype", "{type: rewrite_changetype, from: new, to: change, count: 1}")
    with lab(tmp_path, text) as lb:
        f, answer = manifest("T1", "T2", entries(2))
        await lb.run(f, answer)
        assert f.metadata["repl"]["response"]["changes"] == {"new": 1, "change": 1, "delete": 0}


# ------------------------------------------------------------------------ matching live


async def test_after_token_and_protocol_learned_from_the_upstream(tmp_path: Path) -> None:
    text = one("late", "{type: status, code: 500}", "{after_token: 2, kind: manifest}")
    text += "  - name: etag-writes\n    match: {protocol: rfc6578, kind: upload}\n"
    text += "    action: conflict\n"
    with lab(tmp_path, text) as lb:
        f1, a1 = manifest(None, "T1", entries(1))
        await lb.run(f1, a1)
        f2, a2 = manifest("T1", "T2", [])
        await lb.run(f2, a2)
        assert lb.faults_of(f2) == []  # one token handed out when it was asked
        f3, a3 = manifest("T2", "T3", [])
        await lb.run(f3, a3)
        assert lb.faults_of(f3)[0]["status"] == 500
        # An If-Match write to a CalDAV server is RFC 6578 from its request alone.
        w, aw = put(None)
        w.request.headers["If-Match"] = '"e1"'
        await lb.run(w, aw)
        assert lb.faults_of(w)[0]["action"] == "conflict"


# ------------------------------------------------------------------------ visibility, commands


async def test_a_fault_is_on_the_flow_in_the_log_and_in_the_comment(tmp_path: Path) -> None:
    with lab(tmp_path, one("dup", "duplicate_entries")) as lb:
        f, answer = manifest("T1", "T2", entries(2))
        await lb.run(f, answer)
        assert f.marked == MARK
        assert f.comment.splitlines()[0].startswith("manifest /exchange/alice/Inbox/")
        assert "⚡ fault dup: duplicated 1 of 2 entries" in f.comment
        (rec,) = f.metadata["repl"]["fault"]
        assert rec["rule"] == "dup" and rec["occurrence"] == 1 and rec["target"] == INBOX
        events = lb.events()
        fault = next(e for e in events if e["event"] == "fault")
        assert {k: fault[k] for k in ("v", "flow", "protocol", "rule", "action", "phase")} == {
            "v": 1,
            "flow": f.id,
            "protocol": "exchange",
            "rule": "dup",
            "action": "duplicate_entries",
            "phase": "response",
        }
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def test_commands(tmp_path: Path) -> None:
    text = one("a", "drop", "{method: PUT}", "    times: 2\n") + "  - name: b\n    action: reset\n"
    text += "    enabled: false\n"
    with lab(tmp_path, text) as lb:
        listing = lb.tctx.command(lb.faults.list_rules)
        assert listing.splitlines()[0].startswith("scenario ")
        assert "times 2 (2 left)" in listing and " off " in listing
        assert lb.tctx.command(lb.faults.enable, "b") == "fault rule b enabled"
        f, answer = get()
        await lb.run(f, answer)
        assert lb.faults_of(f)[0]["rule"] == "b"
        lb.tctx.command(lb.faults.disable, "b")
        lb.tctx.command(lb.faults.disable, "a")
        f, answer = put("(<rt:1>)")
        res = await lb.run(f, answer)
        assert res.asked_server and lb.faults_of(f) == []
        with pytest.raises(exceptions.CommandError, match="no fault rule 'c'; rules: a, b"):
            lb.tctx.command(lb.faults.enable, "c")
        assert lb.tctx.command(lb.faults.reload).endswith("2 rules")
        assert lb.faults.counters()["b"]["injected"] == 0  # counters start over
        assert lb.faults.counters()["a"]["enabled"] is True  # as the file says
        (tmp_path / "scenario.yaml").write_text("rules:\n  - name: x\n    action: {type: nope}\n")
        with pytest.raises(exceptions.CommandError, match=r"scenario\.yaml:3: .*the old"):
            lb.tctx.command(lb.faults.reload)
        assert set(lb.faults.counters()) == {"a", "b"}


def test_the_option_is_validated_with_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    action: {type: delay, ms: -1}\n")
    with lab(tmp_path, None) as lb:
        with pytest.raises(exceptions.OptionsError) as e:
            lb.tctx.configure(lb.faults, repl_faults=str(bad))
        assert str(e.value) == (
            f"repl_faults: {bad}:3: rules[0] (x).action.ms: must be at least 0, got -1"
        )
        assert lb.faults.scenario is None
        assert lb.tctx.command(lb.faults.list_rules).startswith("no fault scenario loaded")
        with pytest.raises(exceptions.CommandError, match="set repl_faults first"):
            lb.tctx.command(lb.faults.reload)


async def test_what_other_addons_put_in_the_summary_survives_a_rewrite(tmp_path: Path) -> None:
    with lab(tmp_path, one("dup", "duplicate_entries")) as lb:
        f, answer = manifest("T1", "T2", entries(2))
        await lb._hook("requestheaders", f)
        await lb._hook("request", f)
        f.response = answer
        await lb._hook("responseheaders", f)
        await call_hook(lb.decode.response, f)
        # The cache addon sits between Decode and Faults, and records its part here.
        f.metadata["repl"]["cache"] = {"kind": "miss"}
        await call_hook(lb.faults.response, f)
        assert f.metadata["repl"]["cache"] == {"kind": "miss"}
        assert f.metadata["repl"]["fault"][0]["action"] == "duplicate_entries"
        assert len(f.metadata["repl"]["response"]["entries"]) == 3


async def test_faults_of_a_recorded_flow_are_logged_again_offline(tmp_path: Path) -> None:
    """``mitmdump -nr recording -s addons/repl.py`` (no scenario): the faults recorded with a
    flow go to the log again, in the same place among the tracker's events."""
    with lab(tmp_path, one("retype", "{type: rewrite_changetype, to: delete, count: 1}")) as lb:
        f, answer = manifest("T1", "T2", entries(2))
        await lb.run(f, answer)
        live = [e for e in lb.events() if e["flow"] == f.id]
    recorded = f.copy()
    recorded.id = f.id
    recorded.live = False
    (tmp_path / "offline").mkdir()
    with lab(tmp_path / "offline", None) as lb:
        for hook in ("requestheaders", "request", "responseheaders", "response"):
            await lb._hook(hook, recorded)
        replayed = [e for e in lb.events() if e["flow"] == f.id]
    strip = [{k: v for k, v in e.items() if k not in ("ts", "seq")} for e in live]
    assert [{k: v for k, v in e.items() if k not in ("ts", "seq")} for e in replayed] == strip
    assert replayed[0]["event"] == "fault" and replayed[0]["rule"] == "retype"


async def test_truncate_a_chunked_answer_by_fraction(tmp_path: Path) -> None:
    """Without a Content-Length the length is only known at the end: the cutter holds the body
    and passes its first part when the server is done."""
    with lab(tmp_path, one("cut", "{type: truncate, fraction: 0.3}")) as lb:
        f, answer = get(body=b"z" * 70)
        del answer.headers["content-length"]
        answer.headers["Transfer-Encoding"] = "chunked"
        res = await lb.run(f, answer)
        assert res.killed and res.client_got == b"z" * 21
        assert lb.faults_of(f)[0]["of"] == 70
