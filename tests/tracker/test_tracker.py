"""The tracker: the event contract, token chains, tag histories, and every anomaly code with a
scenario that must trigger it and a close one that must not."""

from __future__ import annotations

from typing import Any

import pytest

from repltap.tracker import CATALOGUE, Tracker

from .build import manifest, write

INBOX = "/exchange/alice/Inbox/"
A = "rt:aaaa"
A2 = "rt:aaab"
B = "rt:bbbb"
CLIENT = "10.0.0.1 client/1"
OTHER = "10.0.0.2 client/1"

COMMON = {"v", "ts", "seq", "flow", "event", "protocol"}
FIELDS = {
    "manifest": {
        "collection",
        "method",
        "status",
        "sent",
        "received",
        "changes",
        "acknowledged",
        "range",
        "content_range",
        "limit",
        "truncated",
    },
    "token": {"collection", "from", "to", "kind"},
    "tag": {"resource", "uid", "from", "to", "via", "status"},
    "conflict": {"resource", "method", "sent", "current", "status"},
    "invalid_token": {"collection", "sent", "status"},
    "anomaly": {"code", "severity", "detail"},
}


class Session:
    def __init__(self) -> None:
        self.t = Tracker()
        self.events: list[dict[str, Any]] = []
        self.n = 0

    def feed(self, s: dict[str, Any], client: str = CLIENT) -> list[dict[str, Any]]:
        self.n += 1
        ev = self.t.observe(s, flow=f"flow-{self.n}", ts=1000.0 + self.n, client=client)
        self.events += ev
        return ev

    def codes(self) -> list[str]:
        return [e["code"] for e in self.events if e["event"] == "anomaly"]


def item(name: str, tag: str, uid: str, kind: str = "new") -> tuple[str, str, str, str]:
    return (kind, INBOX + name, tag, uid)


def test_events_follow_the_contract() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(write("PUT", INBOX + "a.EML", 412, if_=f"(<{B}>)"))
    s.feed(manifest(INBOX, "T1", None, status=475))
    kinds = {e["event"] for e in s.events}
    assert kinds == {"manifest", "token", "tag", "conflict", "invalid_token"}
    seqs = [e["seq"] for e in s.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for e in s.events:
        assert set(e) >= COMMON, e
        assert FIELDS[e["event"]] <= set(e), e
        assert e["v"] == 1 and e["protocol"] == "exchange"
        assert e.get("upstream") == "mail.example.com:80"


def test_token_chain_kinds() -> None:
    s = Session()
    kinds = []
    for summary in (
        manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]),
        manifest(INBOX, "T1", "T2", [item("a.EML", A2, "rid:1", "change")]),
        manifest(INBOX, "T2", None),  # the empty <R:repl/>: no changes
        manifest(INBOX, "T2", None, status=475),
        manifest(INBOX, None, "T3", [item("a.EML", A2, "rid:1")]),
    ):
        kinds += [(e["from"], e["to"], e["kind"]) for e in s.feed(summary) if e["event"] == "token"]
    assert kinds == [
        (None, "T1", "initial"),
        ("T1", "T2", "advance"),
        ("T2", "T2", "unchanged"),
        ("T2", None, "rejected"),
        (None, "T3", "reset"),
    ]
    assert s.codes() == []
    chain = s.t.state()["collections"]
    (col,) = chain.values()
    assert [r["token"] for r in col["chain"]] == ["T1", "T2", "T3"]
    assert col["chain"][1]["rejected"] is True


def test_tag_history_across_manifests_and_writes() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(write("PUT", INBOX + "a.EML", 204, if_=f"(<{A}>)", tag=A2, uid="rid:1"))
    s.feed(manifest(INBOX, "T1", "T2", [("delete", None, None, "rid:1")]))
    tags = [(e["from"], e["to"], e["via"]) for e in s.events if e["event"] == "tag"]
    assert tags == [(None, A, "manifest"), (A, A2, "PUT"), (A2, None, "manifest")]
    hist = s.t.state()["resources"]["mail.example.com:80" + INBOX + "a.EML"]["history"]
    assert [h["via"] for h in hist] == ["manifest", "PUT", "manifest"]


def test_conflict_event_names_the_current_tag() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A2, "rid:1")]))
    (c,) = [
        e
        for e in s.feed(write("PUT", INBOX + "a.EML", 412, if_=f"(<{A}>)"))
        if e["event"] == "conflict"
    ]
    assert (c["method"], c["sent"], c["current"], c["status"]) == ("PUT", A, A2, 412)


# ----------------------------------------------------------------- anomalies, one by one


def test_token_regressed() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(manifest(INBOX, "T1", "T2", [item("b.EML", B, "rid:2")]))
    s.feed(manifest(INBOX, "T2", "T3", [item("a.EML", A2, "rid:1", "change")]))
    assert s.codes() == []
    s.feed(manifest(INBOX, "T2", "T4", [item("a.EML", A2, "rid:1", "change")]))
    assert s.codes() == ["token-regressed"]


def test_token_regressed_not_for_another_client_or_a_page() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(manifest(INBOX, "T1", "T2", [item("b.EML", B, "rid:2")]))
    # a second client restored from a copy of the first one's store: not this client's regression
    s.feed(manifest(INBOX, "T1", "T2", [item("b.EML", B, "rid:2")]), client=OTHER)
    # paging with the same token and absolute rows is allowed (spec §13.11)
    s.feed(manifest(INBOX, "T2", "T3", [], rng="rows=0-1", content_range="rows 0-1; total=4"))
    s.feed(manifest(INBOX, "T2", "T3b", [], rng="rows=2-3", content_range="rows 2-3; total=4"))
    assert s.codes() == []


def test_needless_resync() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(manifest(INBOX, None, "T1b", [item("a.EML", A, "rid:1")]))
    assert s.codes() == ["needless-resync"]


def test_resync_after_475_or_from_another_client_is_needed() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(manifest(INBOX, None, "T9", [item("a.EML", A, "rid:1")]), client=OTHER)
    s.feed(manifest(INBOX, "T1", None, status=475))
    s.feed(manifest(INBOX, None, "T2", [item("a.EML", A, "rid:1")]))
    assert s.codes() == []


def test_token_unchanged_with_changes() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(manifest(INBOX, "T1", "T1"))  # same token, nothing reported: fine
    assert s.codes() == []
    s.feed(manifest(INBOX, "T1", "T1", [item("a.EML", A2, "rid:1", "change")]))
    assert s.codes() == ["token-unchanged-with-changes"]


def test_empty_repl_with_entries() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(manifest(INBOX, "T1", None))
    assert s.codes() == []
    s.feed(manifest(INBOX, "T1", None, [item("a.EML", A2, "rid:1", "change")]))
    assert s.codes() == ["empty-repl-with-entries"]


def test_unconditional_write() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(write("PUT", INBOX + "new.EML", 201, tag=B, uid="rid:2"))  # unknown yet: a create
    s.feed(write("PUT", INBOX + "a.EML", 204, if_=f"(<{A}>)", tag=A2))
    assert s.codes() == []
    s.feed(write("DELETE", INBOX + "a.EML", 204))
    assert s.codes() == ["unconditional-write"]


def test_stale_condition() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(manifest(INBOX, "T1", "T2", [item("a.EML", A2, "rid:1", "change")]))
    s.feed(write("PUT", INBOX + "a.EML", 204, if_=f"(<{A2}>)", tag="rt:aaac"))
    s.feed(write("PUT", INBOX + "b.EML", 412, if_="(<rt:never-seen>)"))
    assert s.codes() == []
    s.feed(write("PUT", INBOX + "a.EML", 412, if_=f"(<{A}>)"))
    assert s.codes() == ["stale-condition"]


def test_retry_without_refresh() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A2, "rid:1")]))
    s.feed(write("PUT", INBOX + "a.EML", 412, if_="(<rt:mine>)"))
    s.feed(write("PUT", INBOX + "a.EML", 204, if_=f"(<{A2}>)", tag="rt:aaac"))  # refreshed
    assert s.codes() == []
    s.feed(write("PUT", INBOX + "a.EML", 412, if_="(<rt:mine>)"))
    assert "retry-without-refresh" in s.codes()


def test_delete_without_uid() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(manifest(INBOX, "T1", "T2", [("delete", None, None, "rid:1")]))
    assert s.codes() == []
    s.feed(manifest(INBOX, "T2", "T3", [("delete", INBOX + "b.EML", None, None)]))
    assert s.codes() == ["delete-without-uid"]


def test_acknowledged_tag_echoed() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(manifest(INBOX, "T1", "T2", [item("b.EML", B, "rid:2")], ack=(A2,)))
    assert s.codes() == []
    s.feed(manifest(INBOX, "T2", "T3", [item("a.EML", A2, "rid:1", "change")], ack=(A2,)))
    assert s.codes() == ["acknowledged-tag-echoed"]


@pytest.mark.parametrize(
    ("second", "code"),
    [
        ("rows 150-199; total=300", "range-gap"),
        ("rows 50-149; total=300", "range-overlap"),
        ("rows 100-199; total=300", None),
    ],
)
def test_range_gap_and_overlap_with_one_token(second: str, code: str | None) -> None:
    s = Session()
    s.feed(manifest(INBOX, "T0", "T1", [], rng="rows=0-99", content_range="rows 0-99; total=300"))
    s.feed(manifest(INBOX, "T0", "T2", [], rng="rows=100-199", content_range=second))
    assert s.codes() == ([code] if code else [])


def test_range_pages_carried_across_tokens() -> None:
    s = Session()
    s.feed(manifest(INBOX, "T0", "T1", [], rng="rows=0-99", content_range="rows 0-99; total=300"))
    s.feed(
        manifest(INBOX, "T1", "T2", [], rng="rows=0-99", content_range="rows 120-219; total=300")
    )
    assert s.codes() == ["range-gap"]
    # restarting at 0 with the newest token (spec §13.11's reading) is not compared
    s2 = Session()
    s2.feed(manifest(INBOX, "T0", "T1", [], rng="rows=0-99", content_range="rows 0-99; total=300"))
    s2.feed(manifest(INBOX, "T1", "T2", [], rng="rows=0-99", content_range="rows 0-99; total=200"))
    assert s2.codes() == []


def test_nonstandard_namespace() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    assert s.codes() == []
    s.feed(manifest(INBOX, "T1", "T2", [], ns="https://schemas.microsoft.com/repl/"))
    assert s.codes() == ["nonstandard-namespace"]


def test_identity_changed() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(manifest(INBOX, "T1", "T2", [("delete", None, None, "rid:1")]))
    s.feed(manifest(INBOX, "T2", "T3", [item("a.EML", B, "rid:2")]))  # re-created after delete
    assert s.codes() == []
    s.feed(manifest(INBOX, "T3", "T4", [item("a.EML", A2, "rid:3", "change")]))
    assert s.codes() == ["identity-changed"]


def test_catalogue_is_complete_and_documented() -> None:
    required = {
        "token-regressed",
        "needless-resync",
        "token-unchanged-with-changes",
        "empty-repl-with-entries",
        "unconditional-write",
        "stale-condition",
        "retry-without-refresh",
        "delete-without-uid",
        "acknowledged-tag-echoed",
        "range-gap",
        "range-overlap",
        "nonstandard-namespace",
        "identity-changed",
    }
    assert required <= set(CATALOGUE)
    for code, a in CATALOGUE.items():
        assert a.code == code and a.severity in ("info", "warning", "error")
        assert a.meaning.endswith(".") and a.advice and a.spec


def test_anomaly_events_carry_catalogue_severity() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [("delete", None, None, None)]))
    (a,) = [e for e in s.events if e["event"] == "anomaly"]
    assert a["severity"] == CATALOGUE["delete-without-uid"].severity
    assert a["collection"] == INBOX


def test_readme_documents_every_anomaly_code() -> None:
    from pathlib import Path

    from repltap.tracker import anomaly_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("<!-- anomalies:start")
    body = readme[readme.index("\n", start) + 1 : readme.index("<!-- anomalies:end -->")]
    assert body.strip() == anomaly_table(), "regenerate the README's anomaly table"


def test_undecodable_answer_and_request() -> None:
    from repltap import protocol
    from repltap.summary import summarise

    from .build import UPSTREAM, manifest_request

    s = Session()
    h, body = manifest_request(INBOX, None)
    req = protocol.decode_request("SEARCH", INBOX, h, body)
    ok = protocol.decode_response(req, 207, {}, b'<D:multistatus xmlns:D="DAV:"/>')
    s.feed(summarise(req, ok, upstream=UPSTREAM))
    assert s.codes() == []
    bad = protocol.decode_response(req, 207, {}, b"<html>oops</b>")
    s.feed(summarise(req, bad, upstream=UPSTREAM))
    assert s.codes() == ["undecodable"]
    assert "answer body was not decoded (malformed-xml)" in s.t.anomalies[-1]["detail"]
    req2 = protocol.decode_request("SEARCH", INBOX, {}, b"not xml at all")
    s.feed(summarise(req2, protocol.decode_response(req2, 400, {}, b""), upstream=UPSTREAM))
    assert s.codes() == ["undecodable", "undecodable"]
    assert "request body was not decoded (not-xml)" in s.t.anomalies[-1]["detail"]


def test_malformed_header() -> None:
    s = Session()
    s.feed(write("PUT", INBOX + "a.EML", 201, if_="(<rt:1>)", tag=A))
    assert s.codes() == []
    s.feed(write("PUT", INBOX + "a.EML", 400, if_="(<rt:1>"))
    assert s.codes() == ["malformed-header"]
    assert "If header not read" in s.t.anomalies[-1]["detail"]


def test_an_answer_that_never_came() -> None:
    from repltap import protocol
    from repltap.summary import summarise

    from .build import UPSTREAM, manifest_request

    s = Session()
    h, body = manifest_request(INBOX, "T1")
    req = protocol.decode_request("SEARCH", INBOX, h, body)
    s.feed(summarise(req, None, upstream=UPSTREAM, error="peer closed connection"))
    assert s.codes() == ["undecodable"]
    assert s.t.anomalies[-1]["detail"] == "the answer never arrived whole: peer closed connection"


def test_rejected_token_reused() -> None:
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1")]))
    s.feed(manifest(INBOX, "T1", None, status=475))
    s.feed(manifest(INBOX, None, "T2", [item("a.EML", A, "rid:1")]))  # starts over: right
    s.feed(manifest(INBOX, "T2", "T3", []))
    assert s.codes() == []
    s.feed(manifest(INBOX, "T3", None, status=475))
    s.feed(manifest(INBOX, "T3", None, status=475))  # the naive client insists
    assert s.codes() == ["rejected-token-reused"]


def test_a_resource_listed_once_then_more() -> None:
    """A resource only listed once is held in a lighter form (tracker.Sighting) until anything
    else happens to it; its events and state are the same either way, and a new resource's tag
    event has the same keys, in the same order, as any other tag event."""
    s = Session()
    s.feed(manifest(INBOX, None, "T1", [item("a.EML", A, "rid:1"), item("b.EML", B, "rid:2")]))
    again = s.feed(manifest(INBOX, "T1", "T2", [item("a.EML", A, "rid:1", "change")]))
    assert [e for e in again if e["event"] == "tag"] == []  # listed again unchanged: nothing
    res = s.t.state()["resources"]
    assert res["mail.example.com:80" + INBOX + "b.EML"] == {
        "uid": "rid:2",
        "tag": B,
        "deleted": False,
        "history": [{"tag": B, "uid": "rid:2", "via": "manifest", "seq": 4}],
    }
    s.feed(manifest(INBOX, "T2", "T3", [item("a.EML", A2, "rid:1", "change")]))
    s.feed(write("PUT", INBOX + "b.EML", 412, if_="(<rt:old>)"))
    s.feed(manifest(INBOX, "T3", "T4", [("delete", None, None, "rid:2")]))
    tags = [e for e in s.events if e["event"] == "tag"]
    assert [(e["resource"], e["from"], e["to"]) for e in tags] == [
        (INBOX + "a.EML", None, A),
        (INBOX + "b.EML", None, B),
        (INBOX + "a.EML", A, A2),
        (INBOX + "b.EML", B, None),
    ]
    assert len({tuple(e) for e in tags}) == 1  # one key order for all
    (c,) = [e for e in s.events if e["event"] == "conflict"]
    assert c["current"] == B
    res = s.t.state()["resources"]
    assert [h["via"] for h in res["mail.example.com:80" + INBOX + "b.EML"]["history"]] == [
        "manifest",
        "manifest",
    ]
