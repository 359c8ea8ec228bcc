"""What the fault injector keeps between flows is bounded by what it costs, whatever the traffic:
split answers within a byte budget (and what a client whose pages were let go meets), the
answers kept for stale_token, the token counts of after_token, the servers' own rejections."""

from __future__ import annotations

from pathlib import Path

import pytest

from repltap.mitm import faults as faultsmod
from tests.faults.flows import CAL, INBOX, entries, get, lab, manifest, put, sync_report

from .test_addon import one


async def split(lb: object, collection: str, token: str, rows: int = 4) -> str:
    """A manifest of ``collection`` answered with ``rows`` entries and split; page 1's token."""
    f, answer = manifest("T0", token, entries(rows))
    f.request.path = collection
    await lb.run(f, answer)  # type: ignore[attr-defined]
    got = f.metadata["repl"]["response"]["token"]
    assert got.startswith("repltap-page-1-of-")
    return str(got)


async def follow(lb: object, collection: str, token: str) -> object:
    """The client comes back with a page token; the flow it sent."""
    g, never = manifest(token, "NEVER", entries(1))
    g.request.path = collection
    res = await lb.run(g, never)  # type: ignore[attr-defined]
    assert not res.asked_server  # page or rejection: the server never sees a minted token
    return g


def boxes(n: int) -> list[str]:
    return [f"/exchange/user{i}/Inbox/" for i in range(n)]


async def test_split_answers_are_kept_within_a_byte_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with lab(tmp_path, one("pages", "{type: paginate, rows: 2}")) as lb:
        first = await split(lb, INBOX, "T1", rows=6)
        (one_split,) = lb.faults.splits.values()
        # Room for three answers like that one: the fourth lets the least recently used go.
        monkeypatch.setattr(faultsmod, "_KEEP_BYTES", 3 * one_split.size + 100)
        tokens = {c: await split(lb, c, f"T-{c}", rows=6) for c in boxes(2)}
        page2 = await follow(lb, INBOX, first)  # the first one is used again: kept longest
        assert page2.metadata["repl"]["response"]["token"].startswith("repltap-page-2-of-3-")
        await split(lb, "/exchange/user9/Inbox/", "T9", rows=6)
        assert len(lb.faults.splits) == 3 and lb.faults.split_bytes <= faultsmod._KEEP_BYTES
        assert lb.faults.split_bytes == sum(s.size for s in lb.faults.splits.values())
        # The client of the answer let go comes back: rejected as an expired collblob.
        c0 = boxes(1)[0]
        g = await follow(lb, c0, tokens[c0])
        assert g.response.status_code == 475
        assert g.metadata["repl"]["response"]["invalid_token"] is True
        assert g.metadata["repl.synthetic"] == "faults"  # the cache never keeps it
        (rec,) = lb.faults_of(g)
        assert rec["rule"] == "pages" and rec["action"] == "paginate" and rec["evicted"] is True
        assert (rec["page"], rec["pages"], rec["status"]) == (2, 3, 475)
        assert "no longer kept" in rec["detail"] and "64 MiB" not in rec["detail"]
        events = [(e["event"], e.get("kind")) for e in lb.events() if e["flow"] == g.id]
        assert events[0] == ("fault", None) and ("invalid_token", None) in events
        # Still served: the one used again.
        c1 = boxes(2)[1]
        assert (await follow(lb, c1, tokens[c1])).response.status_code == 207


async def test_the_newest_split_answer_stays_even_alone_over_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faultsmod, "_KEEP_BYTES", 10)
    with lab(tmp_path, one("pages", "{type: paginate, rows: 2}")) as lb:
        old = await split(lb, boxes(1)[0], "T1")
        new = await split(lb, INBOX, "T2")
        assert len(lb.faults.splits) == 1  # never none: the client just handed page 1 goes on
        assert (await follow(lb, INBOX, new)).response.status_code == 207
        assert (await follow(lb, boxes(1)[0], old)).response.status_code == 475


async def test_split_answers_are_bounded_in_number_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faultsmod, "_MAX_SPLITS", 2)
    monkeypatch.setattr(faultsmod, "_MAX_GONE", 3)
    with lab(tmp_path, one("pages", "{type: paginate, rows: 2}")) as lb:
        tokens = {c: await split(lb, c, f"T-{c}") for c in boxes(7)}
        assert len(lb.faults.splits) == 2 and len(lb.faults.gone) == 3
        g = await follow(lb, boxes(7)[2], tokens[boxes(7)[2]])  # let go, still known as ours
        assert "more than 2 split answers" in lb.faults_of(g)[0]["detail"]
        # Long forgotten: the token goes to the server, which rejects what it never issued.
        h, answer = manifest(tokens[boxes(1)[0]], "X", [])
        h.request.path = boxes(1)[0]
        answer.status_code = 475
        res = await lb.run(h, answer)
        assert res.asked_server and lb.faults_of(h) == []


async def test_answers_served_to_their_last_page_are_kept_for_a_retry_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faultsmod, "_MAX_DONE", 1)
    with lab(tmp_path, one("pages", "{type: paginate, rows: 2}")) as lb:
        walks = {c: await split(lb, c, f"T-{c}") for c in boxes(3)}
        a, b, c = boxes(3)
        for box in (a, b):
            assert (await follow(lb, box, walks[box])).response.status_code == 207  # the last
        assert len(lb.faults.splits) == 2 and len(lb.faults.served_out) == 1  # c's walk goes on
        again = await follow(lb, b, walks[b])  # the last page again: still there
        assert again.metadata["repl"]["response"]["token"] == f"T-{b}"
        g = await follow(lb, a, walks[a])
        assert g.response.status_code == 475
        assert "served to its last page" in lb.faults_of(g)[0]["detail"]
        assert (await follow(lb, c, walks[c])).response.status_code == 207


async def test_an_rfc6578_page_let_go_is_refused_in_the_servers_style(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faultsmod, "_KEEP_BYTES", 10)
    with lab(tmp_path, one("pages", "{type: paginate, rows: 1}")) as lb:
        members = [(CAL + "a.ics", '"1"'), (CAL + "b.ics", '"2"')]
        f, answer = sync_report("S1", "S2", members)
        await lb.run(f, answer)
        token = f.metadata["repl"]["response"]["token"]
        other, answer = sync_report("S1", "S3", members)
        other.request.path = "/alice/other/"
        await lb.run(other, answer)  # lets the calendar's go
        g, never = sync_report(token, "NEVER", [])
        res = await lb.run(g, never)
        assert not res.asked_server and g.response is not None
        assert g.response.status_code == 403 and g.response.headers["Server"] == "WSGIServer/0.2"
        assert b"<valid-sync-token/>" in g.response.content  # in the server's default namespace
        assert g.metadata["repl"]["response"]["invalid_token"] is True
        assert lb.faults_of(g)[0]["evicted"] is True


async def test_after_a_reload_the_old_pages_are_refused_not_sent_to_the_server(
    tmp_path: Path,
) -> None:
    with lab(tmp_path, one("pages", "{type: paginate, rows: 2}")) as lb:
        token = await split(lb, INBOX, "T1")
        (tmp_path / "scenario.yaml").write_text(one("other", "{type: delay, ms: 0}"))
        lb.tctx.command(lb.faults.reload)
        assert not lb.faults.splits and lb.faults.split_bytes == 0
        g = await follow(lb, INBOX, token)
        assert g.response.status_code == 475
        rec = next(r for r in lb.faults_of(g) if r["action"] == "paginate")
        assert rec["rule"] == "pages" and "scenario was changed" in rec["detail"]


async def test_two_answers_ending_in_one_token_are_split_apart(tmp_path: Path) -> None:
    """Two clients at the same collblob (other acks, other entries) get the same next token: each
    walks its own answer's pages."""
    with lab(tmp_path, one("pages", "{type: paginate, rows: 2}")) as lb:
        a = await split(lb, INBOX, "T1", rows=4)
        f, answer = manifest("T0", "T1", entries(4, first=10))
        await lb.run(f, answer)
        b = f.metadata["repl"]["response"]["token"]
        assert a != b
        got = [
            [e["uid"] for e in (await follow(lb, INBOX, t)).metadata["repl"]["response"]["entries"]]
            for t in (a, b)
        ]
        assert got == [["rid:3", "rid:4"], ["rid:12", "rid:13"]]


# ------------------------------------------------------------------------ stale_token's answers


async def test_answers_kept_for_stale_token_are_within_a_byte_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with lab(tmp_path, one("stale", "{type: stale_token, back: 2}", "{nth: 1000}")) as lb:
        f, answer = manifest("T0", "T1", entries(3))
        await lb.run(f, answer)
        size = lb.faults.history_bytes
        monkeypatch.setattr(faultsmod, "_KEEP_BYTES", 4 * size)
        for i, c in enumerate(boxes(6)):
            for n in range(3):
                f, answer = manifest(f"T{n}", f"T{n + 1}", entries(3, first=10 * i + n))
                f.request.path = c
                await lb.run(f, answer)
        kept = [len(q) for q in lb.faults.history.values()]
        assert sum(kept) <= 4 and kept[-1] == 3  # back: 2 needs three; older collections went
        assert lb.faults.history_bytes == sum(
            s for q in lb.faults.history.values() for _, _, s in q
        )
        assert lb.faults.history_bytes <= faultsmod._KEEP_BYTES


# ------------------------------------------------------------------------ after_token


async def test_after_token_counts_only_as_far_as_the_scenario_asks(tmp_path: Path) -> None:
    with lab(tmp_path, one("late", "{type: status, code: 500}", "{after_token: 3}")) as lb:
        key = "mail.example.com:80" + INBOX
        for sent, got in (("T0", "T1"), ("T1", "T1"), ("T1", "T2")):
            await lb.run(*manifest(sent, got, []))
        assert lb.faults.coll_tokens[key].n == 2  # T1 handed out twice counts once
        f, answer = manifest("T2", "T3", [])
        await lb.run(f, answer)
        assert lb.faults_of(f) == []
        assert lb.faults.coll_tokens[key].n == 3 and not lb.faults.coll_tokens[key].recent
        f, answer = manifest("T3", "T4", [])
        await lb.run(f, answer)
        assert lb.faults_of(f)[0]["status"] == 500
        assert lb.faults.coll_tokens[key].n == 3  # counted far enough: nothing more is kept
        assert lb.faults.tokens_seen == set()  # no rule waits for a token by its value


async def test_nothing_is_counted_or_watched_when_no_rule_asks(tmp_path: Path) -> None:
    with lab(tmp_path, one("slow", "{type: delay, ms: 0}")) as lb:
        for n in range(20):
            await lb.run(*manifest(f"T{n}", f"T{n + 1}", []))
        assert not lb.faults.coll_tokens and not lb.faults.tokens_seen


async def test_after_a_token_only_that_token_is_watched_for(tmp_path: Path) -> None:
    with lab(tmp_path, one("late", "{type: status, code: 500}", "{after_token: T7}")) as lb:
        for n in range(10):
            f, answer = manifest(f"T{n}", f"T{n + 1}", [])
            await lb.run(f, answer)
            assert bool(lb.faults_of(f)) is (n >= 7)  # T7 came back with the 7th answer
        assert lb.faults.tokens_seen == {"T7"}


def test_a_collections_count_tells_apart_its_latest_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faultsmod, "_COUNT_RECENT", 3)
    c = faultsmod._Count()
    for t in ("a", "b", "a", "c", "d", "c", "e"):
        c.add(t, 100)
    assert c.n == 5 and len(c.recent) == 3


# ------------------------------------------------------------------------ the rest


async def test_a_servers_own_rejection_is_copied_only_when_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faultsmod, "_MAX_STYLE_BODY", 100)
    with lab(tmp_path, one("reset", "invalid_token", "{nth: 1000}")) as lb:
        for pad in (0, 200):
            f, answer = sync_report("old", "x", [])
            answer.status_code = 409
            answer.content = b'<D:error xmlns:D="DAV:"><D:valid-sync-token/></D:error>' + (
                b" " * pad
            )
            await lb.run(f, answer)
            assert (len(answer.content) <= 100) is bool(lb.faults.styles)
            lb.faults.styles.clear()


async def test_nothing_of_a_flow_outlives_it(tmp_path: Path) -> None:
    text = (
        one("cut", "{type: truncate, bytes: 3}", "{method: GET}")
        + "  - name: gone\n    match: {method: PUT}\n    action: drop\n"
        + "  - name: busy\n    match: {method: SEARCH, nth: 2}\n"
        + "    action: {type: status, code: 503}\n"
        + "  - name: pages\n    match: {kind: manifest}\n    action: {type: paginate, rows: 1}\n"
    )
    with lab(tmp_path, text) as lb:
        for f, answer in (get(), put("(<rt:1>)"), manifest("T0", "T1", entries(2))):
            await lb.run(f, answer)
        f, answer = manifest("T1", "T2", entries(2))
        await lb.run(f, answer)
        fl = lb.faults
        assert not (fl.records or fl.ended or fl.ours or fl.cutters)
