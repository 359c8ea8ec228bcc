"""The cache addon with mitmproxy's taddons and tflow, inside the whole chain (Decode, Cache,
Track, Log): options, the three modes, marks on served flows, ``cache`` events, the commands,
and many flows at once."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from repltap.mitm.cache import Cache
from tests.cache.flows import (
    CAL,
    INBOX,
    Chain,
    closed_port,
    manifest_answer,
    report,
    search,
    sync_answer,
    write,
)

ENTRY_A = ("new", INBOX + "a.EML", "rt:a1", "rid:a")


@pytest.fixture
def listening() -> Iterator[int]:
    """A loopback port that accepts connections (an upstream that is up)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"repl_cache_mode": "sometimes"}, "repl_cache_mode must be one of observe, serve, off"),
        ({"repl_cache_ttl": 0}, "repl_cache_ttl must be a positive number of seconds, not 0"),
        ({"repl_cache_ttl": -5}, "not -5"),
        ({"repl_cache": None, "repl_cache_mode": "serve"}, "serve needs a database: set repl_"),
        ({"repl_cache": "/nonexistent-dir/x.db"}, "repl_cache: the directory /nonexistent-dir"),
    ],
)
def test_bad_options_are_refused_with_a_sentence(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    cache = Cache()
    with taddons.context(cache) as tctx:
        opts = {"repl_cache": str(tmp_path / "c.db"), **options}
        with pytest.raises(exceptions.OptionsError, match=message.replace("(", r"\(")):
            tctx.configure(cache, **opts)
        assert cache.db is None  # nothing half-open is left behind
        cache.done()


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"x" * 4096)
    cache = Cache()
    with taddons.context(cache) as tctx:
        with pytest.raises(exceptions.OptionsError, match="is not a usable SQLite database"):
            tctx.configure(cache, repl_cache=str(junk))
        tctx.configure(cache, repl_cache=str(tmp_path / "ok.db"), repl_cache_mode="offline")
        assert cache.db is not None and cache.mode == "offline"
        tctx.configure(cache, repl_cache=None, repl_cache_mode="observe")
        assert cache.db is None


def test_reverse_mode_with_eager_connections_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = Cache()
    with taddons.context(Proxyserver(), cache) as tctx:
        tctx.options.update(mode=["reverse:http://127.0.0.1:1"], connection_strategy="eager")
        tctx.configure(cache, repl_cache=str(tmp_path / "c.db"), repl_cache_mode="serve")
        assert "add --set connection_strategy=lazy" in caplog.text
        caplog.clear()
        tctx.options.update(connection_strategy="lazy")
        assert "connection_strategy" not in caplog.text
        cache.done()


# ----------------------------------------------------------------------------- observe


async def test_observe_stores_and_never_answers(tmp_path: Path) -> None:
    with Chain(tmp_path) as c:
        for _ in range(2):
            f = await c.run(search("T1"), manifest_answer("T2", [ENTRY_A]))
            assert f.metadata["repl"]["cache"]["kind"] == "store"
        assert c.upstream_calls == 2
        assert c.kinds() == ["store", "store"]
        assert "⛁" not in (f.comment or "")  # only served flows get a cache line


# ----------------------------------------------------------------------------- serve


async def test_serve_hit_answers_the_stored_bytes_without_the_upstream(tmp_path: Path) -> None:
    with Chain(tmp_path, repl_cache_mode="serve") as c:
        upstream = manifest_answer("T2", [ENTRY_A], headers={"X-Server": "exchange"})
        first = await c.run(search("T1"), upstream)
        hit = await c.run(search("T1"), None)  # None: the upstream would fail if asked
        assert c.upstream_calls == 1
        assert hit.response is not None and hit.error is None
        assert first.response is not None and hit.response.content == first.response.content
        assert hit.response.headers["X-Server"] == "exchange"
        assert hit.response.headers["Age"] == "0"
        assert hit.metadata["repl.synthetic"] == "cache"  # not the upstream's: others can tell
        mark = hit.metadata["repl"]["cache"]
        assert (mark["kind"], mark["from_flow"], mark["received"]) == ("hit", first.id, "T2")
        assert "⛁ cache hit: the upstream was not asked; answered from the cache" in hit.comment
        assert hit.comment.startswith("manifest /exchange/alice/Inbox/: collblob T1 → T2")
        assert c.kinds() == ["miss", "store", "hit"]
        miss, store, hit_ev = c.events()
        assert (miss["flow"], store["flow"], hit_ev["flow"]) == (first.id, first.id, hit.id)
        assert hit_ev["sent"] == "T1" and hit_ev["received"] == "T2"
        assert hit_ev["collection"] == INBOX and hit_ev["upstream"] == "mail.example.com:80"
        assert hit_ev["seq"] > store["seq"]
        # The tracker saw what the client got, numbered in the same sequence.
        manifests = c.events("manifest")
        assert [m["flow"] for m in manifests] == [first.id, hit.id]
        assert manifests[1]["seq"] > hit_ev["seq"]


async def test_a_compressed_answer_is_served_decoded(tmp_path: Path) -> None:
    with Chain(tmp_path, repl_cache_mode="serve") as c:
        upstream = manifest_answer("T2", [ENTRY_A], headers={"Set-Cookie": "session=secret"})
        upstream.encode("gzip")  # Content-Encoding: gzip, as many servers send it
        first = await c.run(search("T1"), upstream)
        hit = await c.run(search("T1"), None)
        assert hit.response is not None and first.response is not None
        assert "content-encoding" not in hit.response.headers  # every client accepts identity
        assert "set-cookie" not in hit.response.headers  # never stored, never replayed
        assert hit.response.raw_content == first.response.content
        assert hit.metadata["repl"]["response"]["token"] == "T2"


async def test_serve_is_for_the_identical_request_only(tmp_path: Path) -> None:
    with Chain(tmp_path, repl_cache_mode="serve") as c:
        await c.run(search("T1"), manifest_answer("T2"))
        variants = [
            search("T2"),
            search(None),
            search("T1", rng="rows=0-9"),
            search("T1", ack=("rt:a1",)),
            search("T1", path="/exchange/alice/Sent/"),
            search("T1", port=8080),
            search("T1", headers={"Authorization": "Basic Ym9iOng="}),
            search("T1", headers={"Cache-Control": "no-cache"}),
        ]
        for f in variants:
            await c.run(f, manifest_answer(None))
            assert f.metadata["repl"]["cache"]["kind"] == "store", f.request.headers
        assert c.upstream_calls == 1 + len(variants)
        reasons = [e["reason"] for e in c.events() if e["kind"] == "miss"]
        # T1 was seen: with another range, other acknowledged tags or by another user, it is
        # "this way"; a token, collection or upstream never seen is "before".
        assert reasons.count("never asked before") == 5
        assert reasons.count("never asked this way") == 3
        assert "the client asked for no-cache" in reasons


async def test_serve_respects_the_ttl(tmp_path: Path) -> None:
    with Chain(tmp_path, repl_cache_mode="serve", repl_cache_ttl=60) as c:
        await c.run(search("T1"), manifest_answer("T2"))
        with sqlite3.connect(c.db) as db:
            db.execute("UPDATE answers SET stored = stored - 61")
        late = await c.run(search("T1"), manifest_answer("T3"))
        assert c.upstream_calls == 2
        assert "older than repl_cache_ttl (60 s)" in late.metadata["repl"]["cache"]["miss"]
        again = await c.run(search("T1"), None)
        assert again.metadata["repl"]["cache"]["received"] == "T3"  # the newer answer


async def test_serve_stops_after_a_write_to_the_collection(tmp_path: Path) -> None:
    with Chain(tmp_path, repl_cache_mode="serve") as c:
        await c.run(search("T1"), manifest_answer("T2", [ENTRY_A]))
        assert (await c.run(search("T1"), None)).metadata["repl"]["cache"]["kind"] == "hit"
        put = write("PUT", INBOX + "a.EML", headers={"If": "(<rt:a1>)"})
        await c.run(put, http.Response.make(204, b"", {"ResourceTag": "<rt:a2>"}))
        after = await c.run(search("T1"), manifest_answer("T3"))
        assert "a write to the collection went through the proxy" in after.metadata["repl"][
            "cache"
        ].get("miss", "")
        replica = {i["key"]: i["tag"] for i in c.call("replica", "mail.example.com:80", INBOX)}
        assert replica == {"rid:a": "rt:a2"}


@pytest.mark.parametrize("status", [404, 409, 416, 475, 500, 503])
async def test_errors_are_never_stored(tmp_path: Path, status: int) -> None:
    with Chain(tmp_path, repl_cache_mode="serve") as c:
        f = await c.run(search("T1"), manifest_answer(None, status=status))
        assert f.metadata["repl"]["cache"]["kind"] == ("drop" if status == 475 else "miss")
        assert f"status {status}" in f.metadata["repl"]["cache"]["not_stored"]
        await c.run(search("T1"), manifest_answer(None, status=status))
        assert c.upstream_calls == 2 and "store" not in c.kinds()


async def test_a_475_drops_the_collections_answers(tmp_path: Path) -> None:
    with Chain(tmp_path, repl_cache_mode="serve") as c:
        await c.run(search(None), manifest_answer("T1", [ENTRY_A]))
        await c.run(search("T1"), manifest_answer("T2"))
        await c.run(search("T1", path="/exchange/alice/Sent/"), manifest_answer("S2"))
        bad = await c.run(search("T0"), manifest_answer(None, status=475))
        assert bad.metadata["repl"]["cache"] == {**bad.metadata["repl"]["cache"], "kind": "drop"}
        [drop] = [e for e in c.events() if e["kind"] == "drop"]
        assert (drop["dropped"], drop["status"], drop["sent"]) == (2, 475, "T0")
        await c.run(search("T1"), manifest_answer("T2"))  # asked upstream again
        assert c.upstream_calls == 5
        sent = await c.run(search("T1", path="/exchange/alice/Sent/"), None)  # still there
        assert sent.metadata["repl"]["cache"]["kind"] == "hit"


async def test_rfc6578_hit_and_invalid_token(tmp_path: Path) -> None:
    with Chain(tmp_path, repl_cache_mode="serve") as c:
        members = [(CAL + "x.ics", '"x1"')]
        await c.run(report("t1"), sync_answer("t2", members))
        hit = await c.run(report("t1"), None)
        assert hit.metadata["repl"]["cache"]["kind"] == "hit"
        assert hit.metadata["repl"]["protocol"] == "rfc6578"
        limited = await c.run(report("t1", limit=1), sync_answer("t2", members, truncated=True))
        assert "truncated" in limited.metadata["repl"]["cache"]["not_stored"]
        await c.run(report("zz"), sync_answer(None, invalid=403))
        again = await c.run(report("t1"), sync_answer("t3"))
        assert again.metadata["repl"]["cache"]["kind"] == "store"


async def test_answers_from_a_server_replay_or_a_recording_are_not_stored(tmp_path: Path) -> None:
    with Chain(tmp_path) as c:
        replayed = search("T1")
        replayed.is_replay = "response"
        await c.run(replayed, manifest_answer("T2"))
        recorded = search("T1")
        recorded.live = False
        await c.run(recorded, manifest_answer("T2"))
        assert c.kinds() == [] and c.call("answer_keys") == set()


async def test_an_answer_another_addon_made_up_is_never_stored_nor_replaced(
    tmp_path: Path, listening: int
) -> None:
    class Answers:  # like the fault injector answering a page itself, after the cache
        def __init__(self, response: http.Response) -> None:
            self.response_ = response

        def request(self, flow: http.HTTPFlow) -> None:
            flow.response = self.response_
            flow.metadata["repl.synthetic"] = "answers"

    with Chain(tmp_path, repl_cache_mode="offline") as c:
        await c.run(search("T1", host="127.0.0.1", port=listening), manifest_answer("T2"))
        made_up = Answers(manifest_answer("MINTED"))
        c.tctx.master.addons.add(made_up)
        f = await c.run(search("M1", host="127.0.0.1", port=listening), None)
        assert f.metadata["repl"]["response"]["token"] == "MINTED"
        made_up.response_ = manifest_answer(None, status=503)  # an injected "server error"
        g = await c.run(search("T1", host="127.0.0.1", port=listening), None)
        assert g.response is not None and g.response.status_code == 503  # left as injected
        assert c.kinds() == ["store"] and len(c.call("answer_keys")) == 1
        assert "cache" not in f.metadata["repl"] and "cache" not in g.metadata["repl"]


async def test_an_answer_killed_after_it_was_stored_is_forgotten(tmp_path: Path) -> None:
    class Killer:
        def response(self, flow: http.HTTPFlow) -> None:
            flow.kill()

    with Chain(tmp_path) as c:
        c.tctx.master.addons.add(Killer())  # after the cache, like a fault injector
        f = search("T1")
        await c.run(f, manifest_answer("T2"))
        assert f.error is not None
        from mitmproxy.proxy.layers.http import HttpErrorHook

        await c.tctx.master.addons.handle_lifecycle(HttpErrorHook(f))
        assert c.call("answer_keys") == set()
        assert f.metadata["repl"]["cache"]["kind"] == "not-stored"


# ----------------------------------------------------------------------------- offline


async def test_offline_forwards_while_the_upstream_is_up(tmp_path: Path, listening: int) -> None:
    with Chain(tmp_path, repl_cache_mode="offline") as c:
        f = await c.run(search("T1", host="127.0.0.1", port=listening), manifest_answer("T2"))
        g = await c.run(search("T1", host="127.0.0.1", port=listening), manifest_answer("T3"))
        assert c.upstream_calls == 2 and c.kinds() == ["store", "store"]
        assert g.metadata["repl"]["response"]["token"] == "T3" and f.id != g.id


async def test_offline_serves_when_the_upstream_is_down(tmp_path: Path) -> None:
    port = closed_port()
    with Chain(tmp_path, repl_cache_mode="offline") as c:
        c.cache.mode = "observe"  # fill the cache while "up"
        first = await c.run(search("T1", host="127.0.0.1", port=port), manifest_answer("T2"))
        c.cache.mode = "offline"
        f = await c.run(search("T1", host="127.0.0.1", port=port), None)
        assert c.upstream_calls == 1 and f.error is None and f.response is not None
        assert f.response.status_code == 207
        mark = f.metadata["repl"]["cache"]
        assert mark["kind"] == "offline-serve" and mark["from_flow"] == first.id
        assert "refused" in mark["cause"].lower()
        assert "⛁ cache offline-serve: the upstream cannot be reached" in f.comment
        [ev] = [e for e in c.events() if e["kind"] == "offline-serve"]
        assert ev["flow"] == f.id and "refused" in ev["cause"].lower()


async def test_offline_probes_the_upstream_proxy_in_upstream_mode(
    tmp_path: Path, listening: int
) -> None:
    # In upstream-proxy mode mitmproxy connects to the next proxy, not to the origin.
    down = closed_port()
    with Chain(tmp_path, repl_cache_mode="offline") as c:
        c.cache.mode = "observe"
        await c.run(search("T1", host="127.0.0.1", port=listening), manifest_answer("T2"))
        c.cache.mode = "offline"
        f = search("T1", host="127.0.0.1", port=listening)
        f.server_conn.via = ("http", ("127.0.0.1", down))
        await c.run(f, None)
        assert f.metadata["repl"]["cache"]["kind"] == "offline-serve"
        assert f.metadata["repl"]["cache"]["cause"] == f"Connection refused: 127.0.0.1:{down}"


async def test_offline_never_makes_up_a_manifest(tmp_path: Path) -> None:
    port = closed_port()
    with Chain(tmp_path, repl_cache_mode="offline") as c:
        c.cache.mode = "observe"
        await c.run(search("T1", host="127.0.0.1", port=port), manifest_answer("T2"))
        c.cache.mode = "offline"
        unseen = await c.run(search("T9", host="127.0.0.1", port=port), None)
        other = await c.run(search("T1", host="127.0.0.1", port=port, rng="rows=0-9"), None)
        assert c.upstream_calls == 1
        for f, why in (
            (unseen, "the cache never saw this collblob"),
            (other, "the cache saw this collblob but never this exact request"),
        ):
            assert f.response is not None and f.response.status_code == 503
            body = f.response.get_text()
            assert why in body and "cannot be reached" in body and "made-up manifest" in body
            assert f.metadata["repl"]["cache"]["kind"] == "miss"
            assert f.metadata["repl"]["response"]["status"] == 503
            assert "⛁ cache miss (offline)" in f.comment
        assert [e.get("status") for e in c.events() if e["kind"] == "miss"] == [503, 503]


async def test_offline_serves_instead_of_a_5xx(tmp_path: Path, listening: int) -> None:
    with Chain(tmp_path, repl_cache_mode="offline") as c:
        await c.run(search("T1", host="127.0.0.1", port=listening), manifest_answer("T2"))
        f = await c.run(
            search("T1", host="127.0.0.1", port=listening), manifest_answer(None, status=503)
        )
        assert f.response is not None and f.response.status_code == 207
        s = f.metadata["repl"]
        assert s["response"]["status"] == 207 and s["response"]["token"] == "T2"  # re-decoded
        assert s["cache"]["kind"] == "offline-serve" and s["cache"]["cause"] == (
            "the upstream answered 503"
        )
        assert [m["status"] for m in c.events("manifest")] == [207, 207]  # tracked as sent
        # Nothing stored for this one: the server's own 5xx goes through untouched.
        g = await c.run(
            search("T5", host="127.0.0.1", port=listening), manifest_answer(None, status=500)
        )
        assert g.response is not None and g.response.status_code == 500
        assert g.metadata["repl"]["cache"]["kind"] == "miss"


# ----------------------------------------------------------------------------- commands


async def test_commands_show_export_clear(tmp_path: Path) -> None:
    with Chain(tmp_path) as c:
        entries = [ENTRY_A, ("new", INBOX + "b%20c.EML", "rt:b1", "rid:b")]
        await c.run(search(None), manifest_answer("T1", entries))
        shown = c.tctx.command(c.cache.show, INBOX)
        lines = shown.splitlines()
        assert lines[0] == (
            "mail.example.com:80/exchange/alice/Inbox/ (exchange): 2 items, 1 stored answers, "
            "newest token T1"
        )
        assert lines[1].split() == ["key", "href", "tag", "via"]
        assert lines[3].split() == ["rid:a", INBOX + "a.EML", "rt:a1", "manifest"]
        assert lines[4].split() == ["rid:b", INBOX + "b%20c.EML", "rt:b1", "manifest"]
        assert c.tctx.command(c.cache.show, "mail.example.com:80/exchange/alice/Inbox") == shown
        assert c.tctx.command(c.cache.show, "http://mail.example.com:80" + INBOX) == shown
        with pytest.raises(exceptions.CommandError, match=r"no collection ./nope/.*known: mail"):
            c.tctx.command(c.cache.show, "/nope/")
        out = tmp_path / "inbox.json"
        msg = c.tctx.command(c.cache.export, INBOX, str(out))
        assert msg.startswith("exported 2 items of mail.example.com:80/exchange/alice/Inbox/")
        doc = json.loads(out.read_text())
        assert [i["key"] for i in doc["items"]] == ["rid:a", "rid:b"]
        assert (
            doc["stored_answers"][0]["received"] == "T1" and "body" not in doc["stored_answers"][0]
        )
        assert (
            c.tctx.command(c.cache.clear) == "cleared 1 stored answers and 2 items of 1 collections"
        )
        with pytest.raises(exceptions.CommandError, match="known: none yet"):
            c.tctx.command(c.cache.show, INBOX)


def test_commands_without_a_database_say_so() -> None:
    cache = Cache()
    with taddons.context(cache) as tctx, pytest.raises(exceptions.CommandError, match="repl_cache"):
        tctx.command(cache.clear)


# ----------------------------------------------------------------------------- many at once


async def test_many_concurrent_flows(tmp_path: Path) -> None:
    """200 flows in flight together on one event loop: 100 stores, then 100 hits racing 100
    stores of other requests; every answer lands, every hit gets its own answer."""
    with Chain(tmp_path, repl_cache_mode="serve") as c:
        await asyncio.gather(
            *(c.run(search(f"A{i}"), manifest_answer(f"A{i}x")) for i in range(100))
        )
        flows = await asyncio.gather(
            *(c.run(search(f"A{i}"), None) for i in range(100)),
            *(c.run(search(f"B{i}"), manifest_answer(f"B{i}x")) for i in range(100)),
        )
        hits, stores = flows[:100], flows[100:]
        assert [f.metadata["repl"]["response"]["token"] for f in hits] == [
            f"A{i}x" for i in range(100)
        ]
        assert all(f.metadata["repl"]["cache"]["kind"] == "hit" for f in hits)
        assert all(f.metadata["repl"]["cache"]["kind"] == "store" for f in stores)
        assert len(c.call("answer_keys")) == 200
        seqs = [e["seq"] for e in c.events()]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
