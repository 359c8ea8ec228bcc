"""The tracker and log addons through taddons: events to the JSON Lines file, marks and comments
on flows with anomalies or conflicts, the repl.state and repl.anomalies commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow

from repltap.mitm.decode import Decode
from repltap.mitm.log import MARK_ANOMALY, MARK_CONFLICT, Log
from repltap.mitm.track import Track, _user_agent
from tests.tracker.build import manifest_request, manifest_response

INBOX = "/exchange/alice/Inbox/"


def manifest_flow(sent: str | None, received: str | None, entries: list) -> http.HTTPFlow:
    h, body = manifest_request(INBOX, sent)
    f = tflow.tflow(req=http.Request.make("SEARCH", f"http://mail.example.com{INBOX}", body, h))
    f.response = http.Response.make(
        207, manifest_response(received, entries), {"Content-Type": "text/xml"}
    )
    return f


def put_flow(if_: str | None, status: int) -> http.HTTPFlow:
    h = {"If": if_} if if_ else {}
    f = tflow.tflow(req=http.Request.make("PUT", f"http://mail.example.com{INBOX}a.EML", b"x", h))
    f.response = http.Response.make(status, b"", {"ResourceTag": "<rt:2>"} if status < 300 else {})
    return f


async def run(tmp_path: Path, flows: list[http.HTTPFlow]) -> tuple[Track, list[dict]]:
    """Each flow through the decoder's hooks, then to the tracker, as the proxy does."""
    decode, log = Decode(), Log()
    track = Track(sinks=[log])
    path = tmp_path / "events.jsonl"
    with taddons.context(decode, track, log) as tctx:
        tctx.configure(log, repl_log=str(path))
        for f in flows:
            await tctx.cycle(decode, f)
            track.response(f)
        log.done()
    return track, [json.loads(line) for line in path.read_text().splitlines()]


async def test_events_reach_the_log_in_order(tmp_path: Path) -> None:
    flows = [
        manifest_flow(None, "T1", [("new", INBOX + "a.EML", "rt:1", "rid:1")]),
        put_flow("(<rt:1>)", 204),
    ]
    _track, events = await run(tmp_path, flows)
    assert [e["event"] for e in events] == ["manifest", "token", "tag", "tag"]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert events[0]["flow"] == flows[0].id and events[3]["flow"] == flows[1].id
    assert events[3]["via"] == "PUT" and events[3]["to"] == "rt:2"
    s = flows[0].metadata["repl"]
    assert [e["event"] for e in s["events"]] == ["manifest", "token"]
    assert s["tag_events"] == 1 and s["anomalies"] == []


async def test_anomaly_and_conflict_marks_and_comments(tmp_path: Path) -> None:
    unconditional = put_flow(None, 204)
    stale = put_flow("(<rt:1>)", 412)
    flows = [
        manifest_flow(None, "T1", [("new", INBOX + "a.EML", "rt:1", "rid:1")]),
        unconditional,
        stale,
    ]
    track, _events = await run(tmp_path, flows)
    assert unconditional.marked == MARK_ANOMALY
    assert "⚠ unconditional-write:" in unconditional.comment
    assert unconditional.comment.startswith("upload /exchange/alice/Inbox/a.EML")
    assert stale.marked in (MARK_ANOMALY, MARK_CONFLICT)
    assert "⚔ conflict: PUT with rt:1, current rt:2" in stale.comment
    assert unconditional.metadata["repl"]["anomalies"] == ["unconditional-write"]
    out = track.anomalies()
    assert "unconditional-write" in out and "lost update" in out


async def test_state_command(tmp_path: Path) -> None:
    flows = [
        manifest_flow(None, "T1", [("new", INBOX + "a.EML", "rt:1", "rid:1")]),
        manifest_flow("T1", "T2", []),
    ]
    track, _ = await run(tmp_path, flows)
    with taddons.context(track) as tctx:
        state = json.loads(tctx.command(track.state))
    (col,) = state["collections"].values()
    assert [r["token"] for r in col["chain"]] == ["T1", "T2"]
    (res,) = state["resources"].values()
    assert res["tag"] == "rt:1" and res["uid"] == "rid:1"
    with taddons.context(Track()) as tctx:
        assert tctx.command(Track().anomalies) == "no anomalies"


def test_log_option_refuses_an_unwritable_path(tmp_path: Path) -> None:
    log = Log()
    with taddons.context(log) as tctx, pytest.raises(exceptions.OptionsError, match="repl_log"):
        tctx.configure(log, repl_log=str(tmp_path / "no" / "such" / "dir" / "x.jsonl"))


async def test_log_appends_across_runs(tmp_path: Path) -> None:
    flows = [manifest_flow(None, "T1", [])]
    await run(tmp_path, flows)
    _, events = await run(tmp_path, [manifest_flow(None, "T1", [])])
    assert len(events) == 4  # two runs, two events each, none lost


async def test_anomalies_command_says_when_it_shows_only_the_latest(tmp_path: Path) -> None:
    from collections import deque

    listed = [("new", f"{INBOX}{i}.EML", f"rt:{i}", f"rid:{i}") for i in range(3)]
    flows = [manifest_flow(None, "T1", listed)]
    for i in range(3):
        f = put_flow(None, 204)
        f.request.path = f"{INBOX}{i}.EML"
        flows.append(f)
    track, _ = await run(tmp_path, flows)
    out = track.anomalies()
    assert not out.startswith("the latest") and "unconditional-write (3x):" in out
    kept = track.tracker.anomalies
    track.tracker.anomalies = deque(list(kept)[-2:], maxlen=2)  # as if 1,000 had gone by
    out = track.anomalies()
    assert out.startswith("the latest 2 of 3 anomalies (the log has all):")
    assert out.count("\n#") == 2 and "unconditional-write (3x):" in out


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [(b"User-Agent", b"python-caldav/2.0")],
        [(b"user-agent", b"a"), (b"Host", b"x"), (b"USER-AGENT", b"b")],
        [(b"User-Agent", b"caf\xc3\xa9 \xff")],  # UTF-8, then a byte that is not
        [(b"User-Agents", b"no"), (b"X-User-Agent", b"no")],
    ],
)
def test_the_client_user_agent_is_read_as_the_headers_mapping_reads_it(
    fields: list[tuple[bytes, bytes]],
) -> None:
    headers = http.Headers(fields)
    assert _user_agent(headers) == headers.get("user-agent")


async def test_a_manifests_new_resources_are_logged_as_their_events_would_be(
    tmp_path: Path,
) -> None:
    # New resources' tag events go to the log as rows (TagRun), not dicts: the bytes must be
    # those of the dicts, and the flow must count them.
    from repltap.mitm.decode import META_KEY
    from repltap.mitm.track import flow_context
    from repltap.tracker import Tracker, encode_event

    entries = [("new", f"{INBOX}{i}.EML", f"rt:{i}", f"rid:{i}") for i in range(5)]
    f = manifest_flow(None, "T1", [*entries, ("new", INBOX + 'ü "q".EML', 'rt:"\\', None)])
    _track, _events = await run(tmp_path, [f])
    s = f.metadata[META_KEY]
    ts, client = flow_context(f)
    want = Tracker().observe(
        {k: v for k, v in s.items() if k not in ("events", "tag_events", "anomalies")},
        flow=f.id,
        ts=ts,
        client=client,
    )
    assert (tmp_path / "events.jsonl").read_text(encoding="utf-8") == "".join(
        encode_event(e) + "\n" for e in want
    )
    assert s["tag_events"] == 6 == sum(e["event"] == "tag" for e in want)
    assert [e["event"] for e in s["events"]] == ["manifest", "token"]
