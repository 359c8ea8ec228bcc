"""The replay addon through mitmproxy's taddons: matching by meaning, scenario semantics, strict
and forward misses, the upstream veto, option checks and commands."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from repltap.mitm.replay import REPLAY_KEY, Replay
from repltap.mitm.track import Track

from .flows import (
    CAL,
    INBOX,
    Chain,
    answer,
    item,
    report,
    request,
    search,
    sync_answer,
    write_flows,
)

A, B = f"{INBOX}a.EML", f"{INBOX}b.EML"
T1, T2 = "toCTAAMAAAAA-one=", "toCTAAMAAAAA-two="


def session() -> list[tuple[http.HTTPFlow, http.Response]]:
    """A recorded session: initial sync, a quiet poll, a change, an upload, the acknowledging
    manifest (requests and the answers the server gave)."""
    return [
        (
            search(None, rng="rows=0-99"),
            answer(T1, [("new", A, "rt:a1", "rid:a"), ("new", B, "rt:b1", "rid:b")]),
        ),
        (request("GET", A), item(b"a version 1", "rt:a1")),
        (request("GET", B), item(b"b version 1", "rt:b1")),
        (search(T1, rng="rows=0-99"), answer(None)),  # quiet
        (search(T1, rng="rows=0-99"), answer(T2, [("change", A, "rt:a2", "rid:a")])),
        (request("GET", A), item(b"a version 2", "rt:a2")),
        (
            request("PUT", B, b"b edited", {"If": "(<rt:b1>)"}),
            http.Response.make(204, b"", {"ResourceTag": "<rt:b2>"}),
        ),
        (search(T2, ("rt:b2",), rng="rows=0-99"), answer(None)),
    ]


async def record(tmp_path: Path) -> Path:
    """The session through the chain with repl_record on, as a live proxy would write it."""
    rec = tmp_path / "rec.mitm"
    with Chain(tmp_path / "live") as chain:
        chain.configure(repl_record=str(rec))
        for f, resp in session():
            await chain.run(f, resp)
    return rec


@pytest.fixture
async def rec(tmp_path: Path) -> Path:
    (tmp_path / "live").mkdir()
    return await record(tmp_path)


def replayer(tmp_path: Path, rec: Path, **options: str) -> Chain:
    chain = Chain(tmp_path)
    chain.__enter__()
    chain.configure(repl_replay=[str(rec)], connection_strategy="lazy", **options)
    return chain


async def ask(chain: Chain, f: http.HTTPFlow) -> http.HTTPFlow:
    return await chain.run(f, None)


def ua(name: str) -> dict[str, str]:
    return {"User-Agent": name}


async def test_a_client_rerunning_the_session_gets_every_recorded_answer(
    tmp_path: Path, rec: Path
) -> None:
    chain = replayer(tmp_path, rec)
    try:
        for f, recorded in session():
            got = await ask(chain, f)
            assert got.response is not None and got.error is None
            assert got.response.status_code == recorded.status_code
            assert got.response.content == recorded.content
            assert got.is_replay == "response"
            assert got.metadata[REPLAY_KEY]["kind"] == "hit"
            assert got.metadata["repl.synthetic"] == "replay"
        assert chain.upstream_calls == 0
        hits = chain.events()
        assert [e["kind"] for e in hits] == ["hit"] * 8
        assert all(e["mode"] == "strict" and e["recording"] == "rec.mitm" for e in hits)
        assert [e["number"] for e in hits] == list(range(1, 9))
        # The tracker saw the replayed answers like live ones: one token chain, no anomalies.
        tokens = [(e["from"], e["to"], e["kind"]) for e in chain.events("token")]
        assert tokens[0] == (None, T1, "initial") and (T1, T2, "advance") in tokens
        assert chain.events("anomaly") == []
    finally:
        chain.__exit__(None, None, None)


async def test_polling_more_often_moves_on_then_keeps_the_last_answer(
    tmp_path: Path, rec: Path
) -> None:
    chain = replayer(tmp_path, rec)
    try:
        await ask(chain, search(None, rng="rows=0-99"))
        polls = [await ask(chain, search(T1, rng="rows=0-99")) for _ in range(5)]
        s = [p.metadata["repl"]["response"] for p in polls]
        assert s[0]["no_changes"] is True  # the first recorded answer for T1
        assert [x["token"] for x in s[1:]] == [T2] * 4  # then the next, and it stays
        assert [p.metadata[REPLAY_KEY]["repeat"] for p in polls] == [False, False, True, True, True]
        assert chain.upstream_calls == 0
    finally:
        chain.__exit__(None, None, None)


async def test_a_client_resuming_mid_chain_gets_the_state_of_that_point(
    tmp_path: Path, rec: Path
) -> None:
    """Resumed from T1, the download of a.EML is the version recorded after T1's manifest,
    not the first one recorded; resumed from T2, the latest one before it."""
    chain = replayer(tmp_path, rec)
    try:
        quiet = await ask(chain, search(T1, rng="rows=0-99", headers=ua("late")))
        assert quiet.metadata["repl"]["response"]["no_changes"] is True
        changed = await ask(chain, search(T1, rng="rows=0-99", headers=ua("late")))
        assert changed.metadata["repl"]["response"]["token"] == T2
        got = await ask(chain, request("GET", A, headers=ua("late")))
        assert got.response is not None and got.response.content == b"a version 2"

        last = await ask(chain, search(T2, ("rt:b2",), rng="rows=0-99", headers=ua("later")))
        assert last.metadata[REPLAY_KEY]["number"] == 8
        got = await ask(chain, request("GET", A, headers=ua("later")))
        assert got.response is not None and got.response.content == b"a version 2"
        # A client starting over gets the first answers again: nothing was used up.
        again = await ask(chain, request("GET", A, headers=ua("late")))
        assert again.response is not None and again.response.content == b"a version 2"
        await ask(chain, search(None, rng="rows=0-99", headers=ua("late")))
        first = await ask(chain, request("GET", A, headers=ua("late")))
        assert first.response is not None and first.response.content == b"a version 1"
    finally:
        chain.__exit__(None, None, None)


async def test_the_same_meaning_in_other_bytes_matches(tmp_path: Path, rec: Path) -> None:
    """Other prefixes, a default namespace, whitespace, an XML declaration, an initial collblob
    written as whitespace, and the acknowledged tags in another order."""
    chain = replayer(tmp_path, rec)
    try:
        other = search(None, rng="rows=0-99", style="other")
        assert b"<x:collblob>" in other.request.content  # really other bytes
        got = await ask(chain, other)
        assert got.metadata[REPLAY_KEY]["number"] == 1
        acks = search(T2, ("rt:b2", "rt:zz"), rng="rows=0-99", style="other")
        recorded = search(T2, ("rt:zz", "rt:b2"), rng="rows=0-99")
        chain.replay.reset()
        a = (await ask(chain, acks)).metadata[REPLAY_KEY]
        b = (await ask(chain, recorded)).metadata[REPLAY_KEY]
        assert a["kind"] == b["kind"] == "miss"  # rt:zz was never acknowledged: not a match
        got = await ask(chain, search(T2, ("rt:b2",), rng="rows=0-99", style="other"))
        assert got.metadata[REPLAY_KEY]["number"] == 8
    finally:
        chain.__exit__(None, None, None)


async def test_strict_miss_names_the_closest_recorded_requests(
    tmp_path: Path, rec: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chain = replayer(tmp_path, rec)
    try:
        got = await ask(chain, search("never-issued", rng="rows=0-99"))
        assert chain.upstream_calls == 0
        assert got.response is not None and got.response.status_code == 500
        assert got.response.headers["Repltap-Replay"] == "miss"
        text = got.response.get_text() or ""
        first = text.splitlines()[0]
        assert first.startswith("repltap replay (strict): no recorded answer for SEARCH")
        assert "collblob never-issued" in first
        assert "[differs in: token]" in text
        assert f"{T1[:6]}" in text and "(a client may resume from any)" in text
        assert "repl_replay_mode=forward" in text
        [ev] = chain.events()
        assert ev["kind"] == "miss" and ev["status"] == 500 and ev["sent"] == "never-issued"
        assert ev["collection"] == INBOX and ev["protocol"] == "exchange"
        assert [c["differs"] for c in ev["closest"]] == [
            ["token"],
            ["token"],
            ["acknowledged", "token"],
        ]
        assert got.metadata[REPLAY_KEY]["kind"] == "miss"
        assert got.metadata["repl.synthetic"] == "replay"
        assert "replay miss (strict)" in got.comment
        # The tracker saw a manifest answered 500 (a server error), not a made-up manifest.
        [m] = chain.events("manifest")
        assert m["status"] == 500 and m["received"] is None

        # Other fields than the token: each miss says which.
        got = await ask(chain, search(T1, rng="rows=0-9"))
        assert got.metadata[REPLAY_KEY]["closest"][0]["differs"] == ["range"]
        got = await ask(chain, request("PUT", B, b"b edited", {"If": "(<rt:b0>)"}))
        assert got.metadata[REPLAY_KEY]["closest"][0]["differs"] == ["condition"]
    finally:
        chain.__exit__(None, None, None)


async def test_forward_mode_sends_a_miss_upstream(tmp_path: Path, rec: Path) -> None:
    chain = replayer(tmp_path, rec, repl_replay_mode="forward")
    try:
        hit = await ask(chain, search(None, rng="rows=0-99"))
        assert hit.is_replay == "response" and chain.upstream_calls == 0
        live = await chain.run(search("fresh", rng="rows=0-99"), answer("fresh-2"))
        assert chain.upstream_calls == 1
        assert live.is_replay is None
        assert live.metadata["repl"]["response"]["token"] == "fresh-2"
        assert live.metadata[REPLAY_KEY]["kind"] == "forward"
        assert "repl.synthetic" not in live.metadata
        assert [e["kind"] for e in chain.events()] == ["hit", "forward"]
        assert "forwarded" in live.comment
    finally:
        chain.__exit__(None, None, None)


async def test_rfc6578_tokens_and_writes(tmp_path: Path) -> None:
    ev = f"{CAL}e.ics"
    flows = []
    for f, r in [
        (report(None), sync_answer("http://s/t0")),
        (
            request("PUT", ev, b"BEGIN:VCALENDAR", {"If-Match": '"e1"'}, "cal.example.com"),
            http.Response.make(204, b"", {"ETag": '"e2"'}),
        ),
        (report("http://s/t0"), sync_answer("http://s/t1", [(ev, '"e2"')])),
        (report("http://s/t1", limit=1), sync_answer("http://s/t2")),
    ]:
        f.response = r
        flows.append(f)
    rec = write_flows(tmp_path / "cal.mitm", flows)  # recorded without repltap: decoded on load
    chain = replayer(tmp_path, rec)
    try:
        got = await ask(chain, report("http://s/t0"))
        assert got.metadata["repl"]["response"]["token"] == "http://s/t1"
        miss = await ask(chain, report("http://s/t1"))  # the recorded one had a limit
        assert miss.metadata[REPLAY_KEY]["closest"][0]["differs"] == ["limit"]
        assert "sync-token" in (miss.response.get_text() or "")  # type: ignore[union-attr]
        put = request("PUT", ev, b"BEGIN:VCALENDAR", {"If-Match": '"e1"'}, "cal.example.com")
        assert (await ask(chain, put)).response.status_code == 204  # type: ignore[union-attr]
        stale = request("PUT", ev, b"BEGIN:VCALENDAR", {"If-Match": '"e0"'}, "cal.example.com")
        assert (await ask(chain, stale)).metadata[REPLAY_KEY]["kind"] == "miss"
    finally:
        chain.__exit__(None, None, None)


async def test_recordings_are_played_in_the_order_given(tmp_path: Path, rec: Path) -> None:
    later = []
    f = search(T2, ("rt:b2",), rng="rows=0-99")
    f.response = answer("toCT-three", [("delete", None, None, "rid:b")])
    later.append(f)
    second = write_flows(tmp_path / "later.mitm", later)
    chain = Chain(tmp_path)
    chain.__enter__()
    try:
        chain.configure(repl_replay=[str(rec), str(second)], connection_strategy="lazy")
        asked = search(T2, ("rt:b2",), rng="rows=0-99")
        first, then = (
            await ask(chain, asked),
            await ask(chain, search(T2, ("rt:b2",), rng="rows=0-99")),
        )
        assert first.metadata[REPLAY_KEY]["recording"] == "rec.mitm"
        assert then.metadata[REPLAY_KEY]["recording"] == "later.mitm"
        assert then.metadata["repl"]["response"]["token"] == "toCT-three"
        assert "2 recordings" not in chain.replay.status()
        assert "rec.mitm, later.mitm" in chain.replay.status()
    finally:
        chain.__exit__(None, None, None)


async def test_flows_that_cannot_answer_are_skipped(tmp_path: Path) -> None:
    unanswered = search(None)
    failed = search("x")
    failed.error = tflow.terr("connection refused")
    a_miss = search("y")
    a_miss.response = http.Response.make(500, b"repltap replay (strict): ...")
    a_miss.metadata[REPLAY_KEY] = {"kind": "miss"}
    ok = search("z")
    ok.response = answer(None)
    rec = write_flows(tmp_path / "r.mitm", [unanswered, failed, a_miss, ok])
    r = Replay()
    with taddons.context(Proxyserver(), r) as tctx:
        tctx.configure(r, repl_replay=[str(rec)])
        assert len(r.answers) == 1 and r.skipped == 3


async def test_options_are_checked(tmp_path: Path) -> None:
    r = Replay()
    with taddons.context(Proxyserver(), r) as tctx:
        with pytest.raises(exceptions.OptionsError, match="strict, forward"):
            tctx.configure(r, repl_replay_mode="kill")
        with pytest.raises(exceptions.OptionsError, match="cannot read"):
            tctx.configure(r, repl_replay=[str(tmp_path / "absent.mitm")])
        junk = tmp_path / "junk.mitm"
        junk.write_bytes(b"this is no flow file")
        with pytest.raises(exceptions.OptionsError, match="not a flow file"):
            tctx.configure(r, repl_replay=[str(junk)])


async def test_strict_reverse_mode_needs_the_lazy_strategy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = write_flows(tmp_path / "empty.mitm", [])
    r = Replay()
    with taddons.context(Proxyserver(), r) as tctx:
        with pytest.raises(exceptions.OptionsError, match="connection_strategy=lazy"):
            tctx.configure(r, repl_replay=[str(empty)], mode=["reverse:http://127.0.0.1:9"])
        tctx.configure(
            r,
            repl_replay=[str(empty)],
            mode=["reverse:http://127.0.0.1:9"],
            connection_strategy="lazy",
        )
        with pytest.raises(exceptions.OptionsError):  # and it stays so
            tctx.configure(r, connection_strategy="eager")
        tctx.configure(r, repl_replay_mode="forward", connection_strategy="eager")  # fine
    r2 = Replay()
    caplog.set_level(logging.WARNING)
    with taddons.context(Proxyserver(), r2) as tctx:
        tctx.configure(r2, repl_replay=[str(empty)])  # regular mode: a warning only
    assert "connection_strategy=lazy" in caplog.text


async def test_strict_mode_vetoes_every_upstream_connection(tmp_path: Path) -> None:
    empty = write_flows(tmp_path / "empty.mitm", [])
    r = Replay()
    with taddons.context(Proxyserver(), r) as tctx:
        tctx.configure(r, repl_replay=[str(empty)], connection_strategy="lazy")
        data = server_hooks.ServerConnectionHookData(
            server=tflow.tserver_conn(), client=tflow.tclient_conn()
        )
        data.server.error = None
        r.server_connect(data)
        assert data.server.error and "opens no upstream connection" in data.server.error
        assert r.counts["vetoed"] == 1
        tctx.configure(r, repl_replay_mode="forward")
        data.server.error = None
        r.server_connect(data)
        assert data.server.error is None
        tctx.configure(r, repl_replay=[])
        r.server_connect(data)
        assert data.server.error is None


async def test_without_the_decoder_or_tracker_it_still_matches(tmp_path: Path, rec: Path) -> None:
    """Loaded on its own (no Decode, no Track), the replayer decodes the request itself."""
    r = Replay()
    with taddons.context(Proxyserver(), r, Track()) as tctx:
        tctx.configure(r, repl_replay=[str(rec)], connection_strategy="lazy")
        f = search(T1, rng="rows=0-99", style="other")
        await tctx.cycle(r, f)
        assert f.response is not None and f.metadata[REPLAY_KEY]["number"] == 4
    r = Replay()
    with taddons.context(Proxyserver(), r) as tctx:
        tctx.configure(r, repl_replay=[str(rec)], connection_strategy="lazy")
        f = search("nope")
        await tctx.cycle(r, f)
        assert f.response is not None and f.response.status_code == 500


async def test_commands(tmp_path: Path, rec: Path) -> None:
    chain = replayer(tmp_path, rec)
    try:
        status = chain.tctx.command(chain.replay.status)
        assert "8 recorded answers for 6 distinct requests" in status
        assert "8 recorded answers never served" in status
        assert f"{INBOX}: ∅, {T1[:6]}" in status
        await ask(chain, search(None, rng="rows=0-99"))
        await ask(chain, search(None, rng="rows=0-99"))
        status = chain.tctx.command(chain.replay.status)
        assert "2 served (1 again), 0 misses" in status
        chain.tctx.command(chain.replay.reset)
        assert "0 served" in chain.tctx.command(chain.replay.status)
        assert chain.replay.cursor == {}
    finally:
        chain.__exit__(None, None, None)
    r = Replay()
    with taddons.context(Proxyserver(), r) as tctx:
        assert tctx.command(r.status).startswith("not replaying")


async def test_loaded_flows_are_never_answered(tmp_path: Path, rec: Path) -> None:
    """Flows read from a file (mitmweb -r) are not live: the replayer leaves them alone."""
    chain = replayer(tmp_path, rec)
    try:
        f = search(None, rng="rows=0-99")
        f.live = False
        f.response = answer("from the file")
        await chain.run(f)
        assert REPLAY_KEY not in f.metadata and chain.events() == []
    finally:
        chain.__exit__(None, None, None)
