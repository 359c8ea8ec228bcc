"""The tracker's retention limits: what it keeps stops growing under a long stream of traffic,
and every check that looks back still fires up to its horizon and, past it, does what the code
says it does (tracker.py, the MAX_* constants and the comments where each check looks back)."""

from __future__ import annotations

from typing import Any

import pytest

from repltap import tracker as tracker_module
from repltap.tracker import (
    MAX_FAILED,
    MAX_HISTORY,
    MAX_KEPT_ANOMALIES,
    MAX_REJECTED,
    MAX_TOKENS,
    MAX_TOMBSTONES,
    Resource,
    Tracker,
)

from .build import UPSTREAM, manifest, sync, write
from .stream import rounds
from .test_tracker import CLIENT, INBOX, OTHER, Session, item

CAL = "/alice/cal/"


def sizes(t: Tracker) -> dict[str, int]:
    """How many of each thing the tracker holds."""
    cols = list(t.collections.values())
    everything = [r for known in t.resources.values() for r in known.values()]
    res = [r for r in everything if isinstance(r, Resource)]  # the rest are one-entry Sightings
    return {
        "collections": len(cols),
        "chain": sum(len(c.chain) for c in cols),
        "issued": sum(len(v) for c in cols for v in c.issued.values()),
        "children": sum(len(v) for c in cols for v in c.children.values()),
        "fingerprints": sum(len(c.older) for c in cols),
        "rejected": sum(len(v) for c in cols for v in c.rejected.values()),
        "holding": sum(len(c.holding) for c in cols),
        "items": sum(len(c.items) for c in cols),
        "limbo": sum(len(c.limbo) for c in cols),
        "token_home": len(t.token_home),
        "resources": len(everything),
        "history": sum(len(r.history) for r in res) + len(everything) - len(res),
        "failed": sum(len(r.failed or ()) for r in res),
        "tombstones": len(t._dead),
        "anomalies": len(t.anomalies),
        "anomaly_codes": len(t.anomaly_counts),
    }


def test_a_long_stream_stops_growing() -> None:
    """2,400 soak-like rounds (12,000 flows) pass every limit more than twice; what is held at
    the end is what was held two thirds in (give or take the items of one round)."""
    t = Tracker()
    n = 2_400
    at: list[dict[str, int]] = []
    for k, (s, client) in enumerate(rounds(n)):
        t.observe(s, flow=f"f{k}", ts=float(k), client=client)
        if k and k % 4_000 == 0:
            at.append(sizes(t))
    at.append(sizes(t))
    assert len(at) == 4
    for key, v in at[-1].items():
        assert v <= at[1][key] * 1.01 + 1, (key, [a[key] for a in at])
    end = at[-1]
    assert end["chain"] == 2 * MAX_TOKENS  # the Inbox and the calendar
    assert end["tombstones"] == MAX_TOMBSTONES
    assert end["anomalies"] == MAX_KEPT_ANOMALIES
    assert end["resources"] < MAX_TOMBSTONES + 100  # the live ones and the latest deleted
    assert end["failed"] == MAX_FAILED  # the one item every round writes to, stale or not
    st = t.state()["retention"]
    assert st["token_records_dropped"] == 2 * (n - MAX_TOKENS)
    assert st["deleted_resources_forgotten"] > 0 and st["history_entries_dropped"] > 0
    assert st["anomalies_seen"]["depth-not-zero"] == n  # all counted, the latest kept


# ----------------------------------------------------------------- token records and lineage


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits small enough to walk across in a test (the code reads them at each use)."""
    monkeypatch.setattr(tracker_module, "MAX_TOKENS", 4)
    monkeypatch.setattr(tracker_module, "MAX_FINGERPRINTS", 6)


def advanced(n: int) -> Session:
    """CLIENT synced from nothing to T1, then T1 -> T2 -> ... -> Tn; it holds Tn."""
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", "rt:1", "rid:1")]))
    for k in range(2, n + 1):
        s.feed(manifest(INBOX, f"T{k - 1}", f"T{k}"))
    return s


def regressed(s: Session, k: int) -> list[str]:
    ev = s.feed(manifest(INBOX, f"T{k}", "Tx"))
    return [e["detail"] for e in ev if e.get("code") == "token-regressed"]


@pytest.mark.usefixtures("small")
def test_token_regressed_across_the_horizons() -> None:
    """With 4 records kept and 6 fingerprints, after T1..T12 (8 records dropped): a return to
    T8..T11 names the newer token (T8's successor is still kept); to T6 or T7 it is told by
    fingerprints; T5 and older are unknown, like tokens from before watching."""
    n = 12
    expect: dict[int, str | None] = {}
    for k in range(1, n):
        details = regressed(advanced(n), k)
        if not details:
            expect[k] = None
        else:
            (d,) = details
            expect[k] = "named" if f"'T{k + 1}'" in d else "fingerprint"
            assert ("further back than the 4 tokens kept" in d) == (expect[k] == "fingerprint")
    assert expect == {k: None for k in range(1, 6)} | {6: "fingerprint", 7: "fingerprint"} | {
        k: "named" for k in range(8, 12)
    }


@pytest.mark.usefixtures("small")
def test_no_regression_past_the_horizon_for_another_client_or_a_held_token() -> None:
    s = advanced(12)
    # OTHER never held T6: the fingerprint is of CLIENT giving it up
    ev = s.feed(manifest(INBOX, "T6", "Ty"), client=OTHER)
    assert [e for e in ev if e["event"] == "anomaly"] == []
    s2 = advanced(12)
    ev = s2.feed(manifest(INBOX, "T12", "T12"))  # the token it holds: no regression
    assert [e for e in ev if e["event"] == "anomaly"] == []
    # a ranged request with an old token is a page, not a regression
    ev = s2.feed(manifest(INBOX, "T7", "Tz", rng="rows=0-9", content_range="rows 0-9; total=20"))
    assert [e for e in ev if e["event"] == "anomaly"] == []


@pytest.mark.usefixtures("small")
def test_chain_issues_and_lineage_are_pruned_together() -> None:
    s = advanced(12)
    (c,) = s.t.collections.values()
    assert [r.token for r in c.chain] == ["T9", "T10", "T11", "T12"]
    assert set(c.issued) == {"T9", "T10", "T11", "T12"}
    assert set(c.children) == {"T8", "T9", "T10", "T11"}
    assert {k[2] for k in s.t.token_home} == {"T9", "T10", "T11", "T12"}
    assert len(c.older) == 6
    col = s.t.state()["collections"][c.key]
    assert col["trimmed"] == 8 and [r["token"] for r in col["chain"]] == ["T9", "T10", "T11", "T12"]


@pytest.mark.usefixtures("small")
def test_a_held_token_keeps_its_collection_past_the_horizon() -> None:
    """A SEARCH without SQL is bound to its token's query (spec §8.10): a client that held its
    token while others moved the chain on still lands in the collection with the scope."""
    s = Session()
    s.feed(manifest(INBOX, None, "A1", [item("a.EML", "rt:1", "rid:1")]), client=OTHER)
    s.feed(manifest(INBOX, None, "B1", [item("a.EML", "rt:1", "rid:1")]))
    for k in range(2, 10):
        s.feed(manifest(INBOX, f"B{k - 1}", f"B{k}"))

    def bare(sent: str) -> dict[str, Any]:
        m = manifest(INBOX, sent, sent)
        del m["request"]["query"]  # no SQL: the scope comes from the token
        return m

    (ev,) = [e for e in s.feed(bare("A1"), client=OTHER) if e["event"] == "manifest"]
    assert ev.get("scope", "").startswith("FROM SCOPE")
    # B2 is neither kept nor held by anyone: its query is forgotten
    (ev,) = [e for e in s.feed(bare("B2"), client=OTHER) if e["event"] == "manifest"]
    assert "scope" not in ev


def test_needless_resync_sees_a_token_held_from_long_ago() -> None:
    """needless-resync asks what the client holds, which is kept per client, not per record."""
    s = Session()
    s.feed(manifest(INBOX, None, "A1", [item("a.EML", "rt:1", "rid:1")]), client=OTHER)
    s.feed(manifest(INBOX, None, "B1", [item("a.EML", "rt:1", "rid:1")]))
    for k in range(2, MAX_TOKENS + 20):
        s.feed(manifest(INBOX, f"B{k - 1}", f"B{k}"))
    assert s.codes() == []
    s.feed(manifest(INBOX, None, "A2", [item("a.EML", "rt:1", "rid:1")]), client=OTHER)
    assert s.codes() == ["needless-resync"]
    s.feed(manifest(INBOX, "A2", None, status=475), client=OTHER)
    s.feed(manifest(INBOX, None, "A3", [item("a.EML", "rt:1", "rid:1")]), client=OTHER)
    assert s.codes() == ["needless-resync"]  # after a 475 the resync is needed


@pytest.mark.usefixtures("small")
def test_token_repeated_within_the_kept_tokens_only() -> None:
    def repeat_after(steps: int) -> list[str]:
        s = Session()
        s.feed(sync(CAL, None, "S1", [(CAL + "e.ics", '"1"')]))
        for k in range(2, steps + 2):
            s.feed(sync(CAL, f"S{k - 1}", f"S{k}", [(CAL + "e.ics", f'"{k}"')]))
        s.feed(sync(CAL, f"S{steps + 1}", "S1", [(CAL + "e.ics", '"1"')]))
        return s.codes()

    assert repeat_after(3) == ["token-repeated"]  # S1's record is among the 4 kept
    assert repeat_after(4) == []  # it just dropped out: a repeat is not reported


def test_rejected_token_reused_for_the_latest_refusals() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", "rt:1", "rid:1")]))
    for k in range(1, MAX_REJECTED + 2):  # a client that never starts over
        s.feed(manifest(INBOX, f"X{k}", None, status=475))
    assert s.codes() == []
    (c,) = s.t.collections.values()
    assert len(c.rejected[CLIENT]) == MAX_REJECTED
    s.feed(manifest(INBOX, "X1", None, status=475))  # refused longest ago: forgotten
    assert s.codes() == []
    s.feed(manifest(INBOX, "X3", None, status=475))  # the oldest still remembered
    assert s.codes() == ["rejected-token-reused"]


# ----------------------------------------------------------------- resources


def test_history_keeps_the_latest_entries_and_stale_condition_sees_them() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", "rt:0", "rid:1")]))
    n = MAX_HISTORY + 5
    for v in range(1, n):
        s.feed(write("PUT", INBOX + "a.EML", 204, if_=f"(<rt:{v - 1}>)", tag=f"rt:{v}"))
    res = s.t.state()["resources"][UPSTREAM + INBOX + "a.EML"]
    assert len(res["history"]) == MAX_HISTORY and res["trimmed"] == n - MAX_HISTORY
    oldest_kept = n - MAX_HISTORY
    assert res["history"][0]["tag"] == f"rt:{oldest_kept}"
    assert s.codes() == []
    s.feed(write("PUT", INBOX + "a.EML", 412, if_=f"(<rt:{oldest_kept}>)"))
    assert s.codes() == ["stale-condition"]
    s.feed(write("PUT", INBOX + "a.EML", 412, if_=f"(<rt:{oldest_kept - 1}>)"))
    assert s.codes() == ["stale-condition"]  # past the horizon: an unknown tag


def test_retry_without_refresh_for_the_latest_failed_tags() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", "rt:now", "rid:1")]))
    for k in range(MAX_FAILED + 1):
        s.feed(write("PUT", INBOX + "a.EML", 412, if_=f"(<rt:mine{k}>)"))
    assert s.codes() == []
    s.feed(write("PUT", INBOX + "a.EML", 412, if_="(<rt:mine0>)"))  # failed longest ago
    assert s.codes() == []
    s.feed(write("PUT", INBOX + "a.EML", 412, if_="(<rt:mine2>)"))  # the oldest still kept
    assert s.codes() == ["retry-without-refresh"]


def test_deleted_resources_beyond_the_latest_are_forgotten() -> None:
    s = Session()
    names = [f"d{k}.EML" for k in range(MAX_TOMBSTONES + 1)]
    s.feed(manifest(INBOX, None, "T1", [item(n, f"rt:{n}", f"rid:{n}") for n in names]))
    s.feed(manifest(INBOX, "T1", "T2", [("delete", None, None, f"rid:{n}") for n in names]))
    st = s.t.state()
    assert st["retention"]["deleted_resources_forgotten"] == 1
    assert UPSTREAM + INBOX + names[0] not in st["resources"]
    assert st["resources"][UPSTREAM + INBOX + names[1]]["deleted"] is True
    # a removal reported again closes nothing, kept or forgotten
    again = s.feed(sync(INBOX, "S0", "S", [(INBOX + names[0], None), (INBOX + names[1], None)]))
    assert [e for e in again if e["event"] == "tag"] == []
    # one comes back without a uid on the wire: a kept record lends the old one, a new does not
    ev0 = s.feed(write("GET", INBOX + names[0], 200, tag="rt:back"))
    ev1 = s.feed(write("GET", INBOX + names[1], 200, tag="rt:back"))
    (t0,) = [e for e in ev0 if e["event"] == "tag"]
    (t1,) = [e for e in ev1 if e["event"] == "tag"]
    assert (t0["from"], t0["uid"]) == (None, None)
    assert (t1["from"], t1["uid"]) == (None, f"rid:{names[1]}")
    assert s.codes() == []


def test_items_a_re_created_collection_never_lists_again_are_buried() -> None:
    s = Session()
    s.feed(
        manifest(
            INBOX, None, "T1", [item("a.EML", "rt:a", "rid:1"), item("b.EML", "rt:b", "rid:2")]
        )
    )
    s.feed(manifest(INBOX, "T1", None, status=475))
    (c,) = s.t.collections.values()
    assert len(c.limbo) == 2 and s.t._dead == {}
    # the resync lists a.EML again (a new repl-uid: no identity change); b.EML is gone
    s.feed(manifest(INBOX, None, "T2", [item("a.EML", "rt:a2", "rid:3")]))
    assert s.codes() == []
    s.feed(manifest(INBOX, "T2", None, status=475))
    buried = [r.path for r in s.t._dead.values()]
    assert buried == [INBOX + "b.EML"]
    assert [r.path for r in c.limbo] == [INBOX + "a.EML"]


def test_anomalies_keep_the_latest_and_count_all() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", "rt:1", "rid:1")]))
    for _ in range(MAX_KEPT_ANOMALIES + 10):
        s.feed(write("DELETE", INBOX + "a.EML", 412))  # unconditional, every time
    assert len(s.t.anomalies) == MAX_KEPT_ANOMALIES
    assert s.t.anomalies[0]["seq"] > s.events[0]["seq"]
    assert s.t.state()["retention"]["anomalies_seen"] == {
        "unconditional-write": MAX_KEPT_ANOMALIES + 10
    }


def test_silent_reset_still_seen_after_much_churn() -> None:
    """silent-reset compares with the live items, which are never dropped."""
    s = Session()
    s.feed(sync(CAL, None, "S1", [(CAL + "keep1.ics", '"1"'), (CAL + "keep2.ics", '"1"')]))
    token = "S1"
    for k in range(MAX_TOMBSTONES + 50):
        s.feed(sync(CAL, token, f"S{k}a", [(CAL + f"tmp{k}.ics", '"1"')]))
        s.feed(sync(CAL, f"S{k}a", f"S{k}b", [(CAL + f"tmp{k}.ics", None)]))
        token = f"S{k}b"
    assert s.codes() == [] and s.t.forgotten == 50
    s.feed(sync(CAL, token, "Sx", [(CAL + "keep1.ics", '"1"'), (CAL + "keep2.ics", '"1"')]))
    assert s.codes() == ["silent-reset"]
