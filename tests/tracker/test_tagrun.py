"""TagRun: a manifest's tag events for resources new to the tracker, kept as rows. What it gives
(the dicts, the log lines) must be exactly what the events as dicts would give."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from repltap.tracker import TagRun, Tracker, count_events, encode_event, expand

from .build import manifest

INBOX = "/exchange/alice/Inbox/"
HREF = "http://mail.example.com" + INBOX

text = st.text(max_size=30)  # any code point: quotes, backslashes, controls, NULs, surrogates
rows = st.lists(
    st.tuples(st.integers(0, 2**63), text, st.none() | text, st.none() | text), max_size=8
)


def _lines_of_dicts(run: TagRun) -> str:
    return "".join(encode_event(e) + "\n" for e in run.events())


@settings(max_examples=300, deadline=None)
@given(
    ts=st.floats(allow_nan=False, allow_infinity=False),
    flow=text,
    protocol=st.sampled_from(["exchange", "rfc6578"]) | text,
    upstream=text,
    status=st.integers(100, 599),
    rows=rows,
)
def test_log_lines_are_those_of_the_dicts(
    ts: float, flow: str, protocol: str, upstream: str, status: int, rows: list
) -> None:
    run = TagRun(ts, flow, protocol, upstream, status)
    run.rows += rows
    assert run.json_lines() == _lines_of_dicts(run)
    assert len(run) == len(rows) == count_events([run])


def test_a_fixed_field_holding_a_marker_takes_the_long_way() -> None:
    # The shortcut cuts a line at marker values; a fixed field with one in it must not fool it.
    for flow, upstream in (("f", "\x00r"), ("\x00s", "h:80"), ("f", "\x00t"), ("\x00u", "h\x00r")):
        run = TagRun(1.5, flow, "exchange", upstream, 207)
        run.rows += [(1, "/a\x00u", "\x00r", None), (2, "/b", None, "\x00t")]
        assert run.json_lines() == _lines_of_dicts(run)
        assert [json.loads(line)["upstream"] for line in run.json_lines().splitlines()] == [
            upstream,
            upstream,
        ]


def test_the_dicts_follow_the_contract() -> None:
    run = TagRun(12.25, "flow-1", "exchange", "mail.example.com:80", 207)
    run.rows.append((7, "/c/a.EML", "rid:1", "rt:1"))
    assert run.events() == [
        {
            "v": 1,
            "ts": 12.25,
            "seq": 7,
            "flow": "flow-1",
            "event": "tag",
            "protocol": "exchange",
            "resource": "/c/a.EML",
            "upstream": "mail.example.com:80",
            "uid": "rid:1",
            "from": None,
            "to": "rt:1",
            "via": "manifest",
            "status": 207,
        }
    ]
    assert TagRun(0.0, "f", "exchange", "h:80", 207).json_lines() == ""


def test_another_event_between_new_resources_splits_the_run_in_order() -> None:
    # b's tag was acknowledged by the client: its anomaly comes before b's own tag event.
    s = manifest(
        INBOX,
        None,
        "T1",
        [
            ("new", INBOX + "a.EML", "rt:a", "rid:a"),
            ("new", INBOX + "b.EML", "rt:b", "rid:b"),
            ("new", INBOX + "c.EML", "rt:c", "rid:c"),
        ],
        ack=("rt:b",),
    )
    compact = Tracker().observe_compact(s, flow="f", ts=1.0, client="c")
    shape = [f"run{len(e)}" if isinstance(e, TagRun) else e["event"] for e in compact]
    assert shape == ["manifest", "token", "run1", "anomaly", "run2"]
    events = Tracker().observe(s, flow="f", ts=1.0, client="c")
    assert expand(compact) == events
    assert [e["seq"] for e in events] == list(range(1, 7))
    assert [(e["event"], e.get("resource")) for e in events[2:]] == [
        ("tag", INBOX + "a.EML"),
        ("anomaly", None),
        ("tag", INBOX + "b.EML"),
        ("tag", INBOX + "c.EML"),
    ]
    assert count_events(compact) == 6


def test_known_resources_and_deletes_stay_events_of_their_own() -> None:
    t = Tracker()
    t.observe(
        manifest(
            INBOX,
            None,
            "T1",
            [("new", INBOX + "a.EML", "rt:1", "rid:a"), ("new", INBOX + "b.EML", "rt:b", "rid:b")],
        ),
        flow="1",
        ts=1.0,
        client="c",
    )
    s = manifest(
        INBOX,
        "T1",
        "T2",
        [
            ("change", INBOX + "a.EML", "rt:2", "rid:a"),
            ("new", INBOX + "n.EML", "rt:n", "rid:n"),
            ("delete", None, None, "rid:b"),
        ],
    )
    compact = t.observe_compact(s, flow="2", ts=2.0, client="c")
    tags = [e for e in compact if isinstance(e, TagRun) or e["event"] == "tag"]
    assert [type(e).__name__ for e in tags] == ["dict", "TagRun", "dict"]
    assert [e["to"] for e in expand(tags)] == ["rt:2", "rt:n", None]
