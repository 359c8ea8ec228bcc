"""The terminal summary: figures per collection, worst first; anomalies explained; resources."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from repltap import cli
from repltap.report import analyse, render_text
from repltap.tracker import CATALOGUE

from .events import UP, Log

ROW = re.compile(
    r"^  (error|warning|conflict|reset|ok)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)  (.+)$"
)


def mixed_log() -> Log:
    """Six collections, one kind of trouble each, logged in no particular order."""
    log = Log()
    # A: all fine.
    log.manifest("/a/ok/", None, "a1", new=5)
    log.manifest("/a/ok/", "a1", "a2", change=2)
    log.manifest("/a/ok/", "a2", None)
    # B: three conflicts on its resources (one in a sub-folder), and two that are not its own.
    log.manifest("/b/conflict/", None, "b1", new=2)
    log.conflict("/b/conflict/x.EML")
    log.conflict("/b/conflict/x.EML")
    log.conflict("/b/conflict/sub/y.EML")
    log.conflict("/b/conflict-not/x.EML")  # a sibling whose name starts the same
    log.conflict("/b/conflict/x.EML", upstream="other.example.com:443")
    # C: one warning, attached to its sync through the flow.
    f = log.flow()
    log.anomaly("needless-resync", f, collection="/c/warn/")
    log.events[-1]["flow"] = f
    log.add(
        "manifest",
        f,
        collection="/c/warn/",
        upstream=UP,
        method="SEARCH",
        status=207,
        sent=None,
        received="c1",
        changes={"new": 1, "change": 0, "delete": 0},
    )
    # D: one error.
    log.manifest("/d/error/", None, "d1", new=1)
    f = log.manifest("/d/error/", "d1", "d2", change=1)
    log.anomaly("token-regressed", f, collection="/d/error/")
    # E: a 475 and the full resync it forces.
    log.manifest("/e/reset/", None, "e1", new=3)
    log.manifest("/e/reset/", "e1", None, status=475)
    log.manifest("/e/reset/", None, "e2", new=3, kind="reset")
    # F: two warnings, one on a resource inside it.
    f = log.manifest("/f/warn2/", None, "f1", new=1)
    log.anomaly("acknowledged-tag-echoed", f, collection="/f/warn2/")
    log.anomaly("unconditional-write", resource="/f/warn2/item.EML")
    return log


def rows(text: str) -> list[tuple[str, ...]]:
    return [m.groups() for line in text.splitlines() if (m := ROW.match(line))]


def test_collections_come_worst_first() -> None:
    text = render_text(analyse(mixed_log().events, "mixed.jsonl"))
    names = [r[-1] for r in rows(text)]
    assert names == [
        f"{UP}/d/error/",  # an error
        f"{UP}/f/warn2/",  # two warnings
        f"{UP}/c/warn/",  # one warning
        f"{UP}/b/conflict/",  # three conflicts
        f"{UP} (outside any synced collection)",  # one conflict each
        "other.example.com:443 (outside any synced collection)",
        f"{UP}/e/reset/",  # resets only
        f"{UP}/a/ok/",
    ]
    assert [r[0] for r in rows(text)] == [
        "error",
        "warning",
        "warning",
        "conflict",
        "conflict",
        "conflict",
        "reset",
        "ok",
    ]


def test_counts_per_collection() -> None:
    a = analyse(mixed_log().events, "mixed.jsonl")
    by = {c.name: c for c in a.collections}
    ok = by[f"{UP}/a/ok/"]
    assert (ok.syncs, ok.changes, ok.conflicts, ok.resets) == (
        3,
        {"new": 5, "change": 2, "delete": 0},
        0,
        0,
    )
    assert by[f"{UP}/b/conflict/"].conflicts == 3  # not the sibling's, not another upstream's
    assert by[f"{UP} (outside any synced collection)"].conflicts == 1
    assert by[f"{UP}/e/reset/"].resets == 2  # the 475 and the reset token; "rejected" not again
    assert by[f"{UP}/e/reset/"].syncs == 3
    assert dict(by[f"{UP}/f/warn2/"].anomalies) == {
        "acknowledged-tag-echoed": 1,
        "unconditional-write": 1,
    }
    # The sync of the flow that carried the anomaly shows it.
    [node] = by[f"{UP}/c/warn/"].nodes
    assert [e["code"] for e in node.anomalies] == ["needless-resync"]
    t = a.totals()
    assert (t["syncs"], t["new"], t["conflicts"], t["resets"], t["error"], t["warning"]) == (
        11,
        16,
        5,
        2,
        1,
        3,
    )
    text = render_text(a)
    row = next(r for r in rows(text) if r[-1] == f"{UP}/a/ok/")
    assert row[1:7] == ("3", "5", "2", "0", "0", "0")
    row = next(r for r in rows(text) if r[-1] == f"{UP}/e/reset/")
    assert row[1:7] == ("3", "6", "0", "0", "0", "2")
    assert f"  {len(mixed_log().events)} events, 2026-03-02 09:00:01 to 09:00:" in text


def test_anomalies_listed_under_their_collection_and_explained() -> None:
    text = render_text(analyse(mixed_log().events, "mixed.jsonl"), width=100)
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.endswith(f"{UP}/f/warn2/"))
    assert re.search(r"warning\s+1× acknowledged-tag-echoed", lines[i + 1])
    assert re.search(r"warning\s+1× unconditional-write", lines[i + 2])
    section = text.split("Anomalies: what they mean and what to do")[1]
    heads = re.findall(r"^  (error|warning|info)\s+(\S+) ×", section, re.M)
    assert heads[0] == ("error", "token-regressed")  # errors first
    assert {code for _, code in heads} == {
        "token-regressed",
        "needless-resync",
        "acknowledged-tag-echoed",
        "unconditional-write",
    }
    flat = " ".join(section.split())
    for code in ("token-regressed", "unconditional-write"):
        assert " ".join(CATALOGUE[code].meaning.split()) in flat
        assert " ".join(("What to do: " + CATALOGUE[code].advice).split()) in flat
        assert CATALOGUE[code].spec in flat


def test_unknown_anomaly_code_is_shown_not_fatal() -> None:
    log = Log()
    f = log.manifest("/x/", None, "t1")
    log.anomaly("from-the-future", f, collection="/x/", severity="error")
    text = render_text(analyse(log.events, "x.jsonl"))
    assert "from-the-future ×1  (not in this catalogue)" in text
    assert rows(text)[0][0] == "error"


def test_top_resources() -> None:
    log = Log()
    log.manifest("/c/", None, "t1", new=3)
    for name, tags, conflicts in (("calm", 5, 0), ("hot", 1, 2), ("busy", 3, 0), ("one", 1, 0)):
        for k in range(tags):
            log.tag(f"/c/{name}", f"rt:{k}", f"rt:{k + 1}", via="PUT")
        for _ in range(conflicts):
            log.conflict(f"/c/{name}")
    text = render_text(analyse(log.events, "r.jsonl"), top=3)
    section = text.split("Resources with the most conflicts and tag changes (top 3 of 4)")[1]
    listed = re.findall(
        rf"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s+{re.escape(UP)}(\S+)$", section, re.M
    )
    assert listed == [
        ("2", "0", "1", "PUT", "/c/hot"),
        ("0", "0", "5", "PUT", "/c/calm"),
        ("0", "0", "3", "PUT", "/c/busy"),
    ]


def test_scopes_are_separate_collections_shown_in_full() -> None:
    log = Log()
    long_where = " AND ".join(f'"urn:x:p{k}" = {k}' for k in range(12))
    log.manifest("/m/", None, "s1", new=1, scope=f"FROM SCOPE('SHALLOW') WHERE {long_where}")
    log.manifest("/m/", None, "s2", new=2, scope="FROM SCOPE('DEEP')")
    text = render_text(analyse(log.events, "s.jsonl"), width=90)
    assert len(rows(text)) == 2
    assert all(
        len(line) <= 90
        for line in text.splitlines()
        if "scope" in line or line.startswith(" " * 30)
    )
    words = " ".join(text.split())
    assert '"urn:x:p11" = 11' in words  # the end of a long scope is not cut off


def test_control_characters_never_reach_the_terminal() -> None:
    log = Log()
    evil = "/x/\x1b[2J\x1b]0;pwned\x07\u202eFDP.EML"
    f = log.manifest("/x/\x1b[31m/", None, "t1")
    log.anomaly("unconditional-write", f, resource=evil, detail="bad \x1b[2J detail")
    log.conflict(evil)
    text = render_text(analyse(log.events, "evil\x1b.jsonl"), color=False)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\u001b[2J" in text and "\\u202e" in text


def test_color_only_when_asked() -> None:
    a = analyse(mixed_log().events, "m.jsonl")
    assert "\x1b[" not in render_text(a)
    assert "\x1b[1;31merror" in render_text(a, color=True)


def test_runs_appended_to_one_log_are_noted(tmp_path: Path) -> None:
    first, second = Log(), Log()
    first.manifest("/a/", None, "t1", new=1)
    second.manifest("/a/", None, "t9", new=1)
    log = Log()
    log.events = first.events + second.events
    text = render_text(analyse(log.events, "two.jsonl"))
    assert "note: the log holds 2 runs appended one after another" in text


def test_empty_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert cli.main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0 events" in out and "No events: nothing replication-related was seen." in out


def test_command_prints_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    path = mixed_log().write(tmp_path / "mixed.jsonl")
    assert cli.main(["report", str(path), "--top", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out == render_text(analyse(mixed_log().events, str(path)), top=1)
    assert captured.err == ""
