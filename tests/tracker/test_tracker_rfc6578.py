"""The tracker on RFC 6578 traffic: the same events with protocol "rfc6578", and the RFC 6578
checks, each with a scenario that triggers it and a close one that must not."""

from __future__ import annotations

from .build import dav_write, sync
from .test_tracker import FIELDS, Session

CAL = "/alice/cal/"
E1, E2, E3 = CAL + "e1.ics", CAL + "e2.ics", CAL + "e3.ics"


def test_events_and_tags_follow_etags() -> None:
    s = Session()
    s.feed(sync(CAL, None, "S1", [(E1, '"1"')]))
    s.feed(dav_write("PUT", E1, 204, if_match='"1"', etag='"2"'))
    s.feed(sync(CAL, "S1", "S2", [(E1, '"2"')]))
    s.feed(dav_write("PUT", E1, 412, if_match='"1"'))
    s.feed(sync(CAL, "S2", None, error_status=403))
    assert {e["protocol"] for e in s.events} == {"rfc6578"}
    for e in s.events:
        assert FIELDS[e["event"]] <= set(e)
    tags = [(e["from"], e["to"], e["via"]) for e in s.events if e["event"] == "tag"]
    assert tags == [(None, '"1"', "manifest"), ('"1"', '"2"', "PUT")]
    (c,) = [e for e in s.events if e["event"] == "conflict"]
    assert (c["sent"], c["current"]) == ('"1"', '"2"')
    (inv,) = [e for e in s.events if e["event"] == "invalid_token"]
    assert inv["status"] == 403
    assert "stale-condition" in s.codes()
    assert "unconditional-write" not in s.codes()


def test_unconditional_write_without_if_match() -> None:
    s = Session()
    s.feed(sync(CAL, None, "S1", [(E1, '"1"')]))
    s.feed(dav_write("PUT", E2, 201, etag='"9"'))  # a new member: nothing to lose
    assert s.codes() == []
    s.feed(dav_write("DELETE", E1, 204))
    assert s.codes() == ["unconditional-write"]


def test_truncated_without_507() -> None:
    s = Session()
    s.feed(sync(CAL, None, "S1", [(E1, '"1"'), (E2, '"1"')], limit=2, truncated=True))
    s.feed(sync(CAL, "S1", "S2", [(E3, '"1"')], limit=2))  # fewer than the limit: complete
    assert s.codes() == []
    s.feed(sync(CAL, "S2", "S3", [(E1, '"2"'), (E2, '"2"')], limit=2))
    assert s.codes() == ["truncated-without-507"]


def test_silent_reset() -> None:
    s = Session()
    s.feed(sync(CAL, None, "S1", [(E1, '"1"'), (E2, '"1"')]))
    s.feed(sync(CAL, "S1", "S2", [(E1, '"2"')]))  # an incremental answer
    assert s.codes() == []
    ev = s.feed(sync(CAL, "S2", "S9", [(E1, '"2"'), (E2, '"1"')]))  # everything, unchanged
    assert [e["code"] for e in ev if e["event"] == "anomaly"] == ["silent-reset"]
    (inv,) = [e for e in ev if e["event"] == "invalid_token"]
    assert inv["status"] == 207
    assert [e["kind"] for e in ev if e["event"] == "token"] == ["reset"]


def test_removed_in_initial_sync() -> None:
    s = Session()
    s.feed(sync(CAL, None, "S1", [(E1, '"1"')]))
    s.feed(sync(CAL, "S1", "S2", [(E1, None)]))  # a removal in an incremental sync is normal
    assert s.codes() == []
    s.feed(sync(CAL, None, "S3", [(E2, '"1"'), (E1, None)]), client="10.0.0.9 other")
    assert s.codes() == ["removed-in-initial-sync"]


def test_depth_not_zero() -> None:
    s = Session()
    s.feed(sync(CAL, None, "S1", [(E1, '"1"')], depth="0"))
    assert s.codes() == []
    s.feed(sync(CAL, "S1", "S2", [], depth="1"))
    assert s.codes() == ["depth-not-zero"]


def test_token_repeated_is_info_and_not_a_regression() -> None:
    s = Session()
    s.feed(sync(CAL, None, "S1", [(E1, '"1"')]))
    s.feed(sync(CAL, "S1", "S2", [(E2, '"1"')]))
    assert s.codes() == []
    s.feed(sync(CAL, "S2", "S1", [(E2, None)]))  # back to the earlier state: the same token
    assert s.codes() == ["token-repeated"]
    (a,) = [e for e in s.events if e["event"] == "anomaly"]
    assert a["severity"] == "info"
    s.feed(sync(CAL, "S1", "S1", []))  # the client now holds S1 again: no regression
    assert s.codes() == ["token-repeated"]
