"""A rename or a move within a collection, as an Exchange manifest reports it (spec §8.6): a
delete of the repl-uid and a change of it at its new href, in either order. The tracker follows
the item to its new href, closes the old one, and sees no identity change when another item
takes the old name."""

from __future__ import annotations

from typing import Any

import pytest

from repltap.tracker import Resource, Tracker

from .build import manifest

INBOX = "/exchange/alice/Inbox/"
A, B = INBOX + "a.EML", INBOX + "b.EML"


def run(
    *manifests: list[tuple[str, str | None, str | None, str | None]], tracker: Tracker | None = None
) -> list[dict[str, Any]]:
    t = tracker if tracker is not None else Tracker()
    events: list[dict[str, Any]] = []
    token = None
    for i, entries in enumerate(manifests):
        s = manifest(INBOX, token, f"T{i + 1}", entries)
        events += t.observe(s, flow=f"f{i}", ts=float(i), client="c")
        token = f"T{i + 1}"
    return events


def anomalies(events: list[dict[str, Any]]) -> list[str]:
    return [e["code"] for e in events if e["event"] == "anomaly"]


def tags(events: list[dict[str, Any]], flow: str) -> list[tuple[str, str | None, str | None]]:
    return [
        (e["resource"], e["uid"], e["to"])
        for e in events
        if e["event"] == "tag" and e["flow"] == flow
    ]


def state(t: Tracker, path: str) -> tuple[str | None, str | None, bool]:
    """(uid, tag, deleted) of a resource's record (a record or a first sighting)."""
    r = t.resources["mail.example.com:80"][path]
    return (r.uid, r.tag, r.deleted) if isinstance(r, Resource) else (r[0], r[1], False)


RENAME_ORDERS = {
    "delete first, with href": [("delete", A, None, "rid:x"), ("change", B, "rt:1", "rid:x")],
    "delete first, no href": [("delete", None, None, "rid:x"), ("change", B, "rt:1", "rid:x")],
    "change first, no href": [("change", B, "rt:1", "rid:x"), ("delete", None, None, "rid:x")],
    "change first, with href": [("change", B, "rt:1", "rid:x"), ("delete", A, None, "rid:x")],
}


@pytest.mark.parametrize("order", RENAME_ORDERS)
def test_a_rename_closes_the_old_href_and_follows_the_item(order: str) -> None:
    events = run(
        [("new", A, "rt:1", "rid:x")],
        RENAME_ORDERS[order],
        [("new", A, "rt:9", "rid:z")],  # a new item at the old name
        [("change", B, "rt:2", "rid:x")],
    )
    assert sorted(tags(events, "f1")) == [(A, "rid:x", None), (B, "rid:x", "rt:1")]
    assert tags(events, "f2") == [(A, "rid:z", "rt:9")]
    assert tags(events, "f3") == [(B, "rid:x", "rt:2")]
    assert anomalies(events) == []


def test_a_new_item_at_the_old_name_in_the_same_manifest_is_no_identity_change() -> None:
    events = run(
        [("new", A, "rt:1", "rid:x")],
        [
            ("new", A, "rt:9", "rid:z"),
            ("change", B, "rt:1", "rid:x"),
            ("delete", None, None, "rid:x"),
        ],
    )
    assert anomalies(events) == []
    assert tags(events, "f1") == [(A, "rid:x", None), (B, "rid:x", "rt:1"), (A, "rid:z", "rt:9")]


def test_two_items_swap_names() -> None:
    t = Tracker()
    events = run(
        [("new", A, "rt:1", "rid:x"), ("new", B, "rt:2", "rid:y")],
        [("change", A, "rt:2", "rid:y"), ("change", B, "rt:1", "rid:x")],
        tracker=t,
    )
    assert anomalies(events) == []
    assert (state(t, A), state(t, B)) == (("rid:y", "rt:2", False), ("rid:x", "rt:1", False))


def test_an_href_that_changes_identity_with_no_move_is_still_flagged() -> None:
    events = run([("new", A, "rt:1", "rid:x")], [("change", A, "rt:2", "rid:z")])
    assert anomalies(events) == ["identity-changed"]


def test_an_item_a_manifest_lists_and_deletes_lives_on_where_it_is_listed() -> None:
    """An item cannot be both: the delete is the old side of a rename whose old href the delete
    does not name."""
    events = run(
        [("new", A, "rt:1", "rid:x")],
        [("change", A, "rt:2", "rid:x"), ("delete", None, None, "rid:x")],
    )
    assert tags(events, "f1") == [(A, "rid:x", "rt:2")]


@pytest.mark.parametrize("order", RENAME_ORDERS)
def test_a_rename_seen_again_by_another_client_changes_nothing(order: str) -> None:
    """The same manifest reaches every client of the collection (and a client may retry)."""
    t = Tracker()
    first = manifest(INBOX, None, "T1", [("new", A, "rt:1", "rid:x")])
    t.observe(first, flow="f0", ts=0.0, client="c1")
    t.observe(first, flow="g0", ts=0.0, client="c2")
    rename = RENAME_ORDERS[order]
    t.observe(manifest(INBOX, "T1", "T2", rename), flow="f1", ts=1.0, client="c1")
    again = t.observe(manifest(INBOX, "T1", "T2", rename), flow="g1", ts=2.0, client="c2")
    assert [e for e in again if e["event"] in ("tag", "anomaly")] == []
    assert state(t, B) == ("rid:x", "rt:1", False)
    assert state(t, A) == ("rid:x", None, True)


def test_a_delete_that_names_another_items_href_closes_nothing() -> None:
    events = run(
        [("new", A, "rt:1", "rid:x"), ("new", B, "rt:2", "rid:y")],
        [("delete", B, None, "rid:x")],  # x is at A; B is y's
    )
    assert tags(events, "f1") == []
