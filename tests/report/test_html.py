"""The HTML page: self-contained, every string from the log escaped, usable on big logs."""

from __future__ import annotations

import html
import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from repltap import cli, report
from repltap.report import analyse, read_events, render_html

from .events import Log

DATA = Path(__file__).parent / "data"
XSS = "<script>alert(1)</script>"


def hostile_log() -> Log:
    """Every string a server, a client or a hand-edited log controls, made of markup."""
    log = Log()
    coll = f'/x/{XSS}"><img src=x onerror=alert(2)>/'
    f = log.manifest(
        coll,
        None,
        XSS,
        new=1,
        upstream=f"{XSS}:80",
        scope=f"WHERE '{XSS}'",
        client=f"10.0.0.1 {XSS}",
    )
    log.manifest(
        coll,
        XSS,
        f"</title>{XSS}",
        change=1,
        upstream=f"{XSS}:80",
        scope=f"WHERE '{XSS}'",
        client=f"10.0.0.1 {XSS}",
    )
    log.anomaly(
        "token-regressed",
        f,
        collection=coll,
        upstream=f"{XSS}:80",
        scope=f"WHERE '{XSS}'",
        detail=f"the client sent {XSS!r}",
    )
    log.anomaly(
        f"code-{XSS}", resource=coll + "a", upstream=f"{XSS}:80", severity="error", detail=XSS
    )
    log.tag(coll + "a", XSS, f"rt:{XSS}", via=f"PUT{XSS}", upstream=f"{XSS}:80")
    log.add(
        "conflict",
        resource=coll + "a",
        upstream=f"{XSS}:80",
        method=XSS,
        sent=XSS,
        current=XSS,
        status=412,
        client=XSS,
    )
    return log


class Structure(HTMLParser):
    """Tags and attributes of a page, to check what it would load or run."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Structure:
    s = Structure()
    s.feed(page)
    s.close()
    return s


def test_every_string_from_the_log_is_escaped() -> None:
    page = render_html(analyse(hostile_log().events, f"{XSS}.jsonl"))
    assert XSS not in page
    assert "<img" not in page and "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")
    assert html.escape(XSS) in page
    s = parse(page)
    assert "script" not in s.tags and "img" not in s.tags
    assert not [a for a in s.attrs if a[1].startswith("on")]  # no event handler attributes
    # The strings are all there, as text.
    text = "".join(s.text)
    assert text.count(XSS) >= 10
    assert f"code-{XSS}" in text and f"10.0.0.1 {XSS}" in text


def test_the_page_loads_nothing_and_runs_nothing() -> None:
    page = render_html(analyse(read_events(DATA / "session.jsonl")[0], "session.jsonl"))
    s = parse(page)
    assert "script" not in s.tags and "link" not in s.tags and "iframe" not in s.tags
    assert "img" not in s.tags and "object" not in s.tags and "embed" not in s.tags
    for tag, name, value in s.attrs:
        assert name not in ("src", "srcset", "action", "background"), (tag, name)
        if name in ("href", "xlink:href"):
            assert value is not None and value.startswith("#"), (tag, name, value)
    assert "url(" not in page.replace("url(#arr", "") and "@import" not in page
    assert re.search(
        r"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src "
        r"'none'; style-src 'unsafe-inline'\">",
        page,
    )


def test_collections_timelines_and_histories() -> None:
    """The sample session: three collections, a lane per client, its conflicts and resets."""
    events, _ = read_events(DATA / "session.mitm")
    page = render_html(analyse(events, "session.mitm"))
    for path in (
        "/exchange/alice/Inbox/",
        "/exchange/alice/Calendar/",
        "/exchange/alice/Contacts/",
    ):
        assert f"<h3>mail.example.com:80{path} " in page
    assert page.count('<g class="sync">') == 17  # every sync, once
    assert page.count('<g class="conflict">') == 2
    assert "10.0.0.21 Evolution/3.46.4" in page and "10.0.0.35 DavMail/6.2.2" in page
    assert "✖ 475 token rejected" in page
    assert page.count('class="edge regressed"') == 1  # Evolution's restored collblob
    # One arrow into every sync that sent a token (all but the 6 that started from scratch).
    assert page.count('class="edge"') == 17 - 6 - 1
    # The tag history of the message both clients wrote.
    row = page.split('<span class="up">mail.example.com:80</span>/exchange/alice/Inbox/Hello.EML')
    row = row[1].split("</tr>")[0]
    assert row.count("412 conflict") == 2 and "retry-without-r" in row
    # Anomalies explained, worst first.
    order = re.findall(r'<div class="anom (\w+)"><h3>([\w-]+) ', page)
    assert order[0] == ("error", "delete-without-uid")
    assert [sev for sev, _ in order] == sorted(
        (sev for sev, _ in order), key=["error", "warning", "info"].index
    )


def test_without_client_names_lanes_follow_token_chains() -> None:
    events, _ = read_events(DATA / "session.jsonl")
    for e in events:  # a log written before manifest events named their client
        e.pop("client", None)
    page = render_html(analyse(events, "session.jsonl"))
    assert "chain 1 · initial sync" in page and "chain 2 · initial sync" in page
    assert "chain 2 · full resync" in page  # the Calendar after its 475
    assert "Lanes are token chains" in page


def test_command_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    assert cli.main(["report", str(DATA / "session.jsonl"), "--html", str(out)]) == 0
    assert capsys.readouterr().err == f"repltap report: wrote {out}\n"
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def big_log(syncs: int, resources: int) -> Log:
    log = Log()
    for c in range(3):
        coll = f"/exchange/user{c}/Inbox/"
        prev = None
        for k in range(syncs):
            token = f"t{c}-{k}"
            f = log.manifest(
                coll, prev, token, new=1 if k == 0 else 0, change=2, client=f"10.0.0.{k % 3}"
            )
            if k % 500 == 7:
                log.anomaly("needless-resync", f, collection=coll)
            prev = token
            r = (k * 7) % resources
            log.tag(f"{coll}m{r}.EML", f"rt:{k}", f"rt:{k + 1}", via="PUT")
            if k % 50 == 0:
                log.conflict(f"{coll}m{r}.EML")
    return log


def test_a_big_log_stays_usable(tmp_path: Path) -> None:
    """Over 50,000 events: caps keep the page small, and the page says what it left out."""
    log = big_log(syncs=6000, resources=2000)
    path = log.write(tmp_path / "big.jsonl")
    t0 = time.perf_counter()
    events, _ = read_events(path)
    page = render_html(analyse(events, str(path)))
    elapsed = time.perf_counter() - t0
    assert len(events) > 50_000
    assert page.count('<g class="sync">') == 3 * report.MAX_NODES
    assert page.count('<tr><td class="path">') == report.MAX_RESOURCES
    assert "6,000 syncs: the 200 drawn are the latest, and every sync with a reset" in page
    assert f"The {report.MAX_RESOURCES} of 6,000 resources with the most conflicts" in page
    assert len(page) < 3_000_000
    print(f"{len(events):,} events read and drawn in {elapsed:.2f} s; page {len(page):,} bytes")


def test_troubled_syncs_are_kept_when_syncs_are_capped() -> None:
    log = big_log(syncs=1000, resources=10)
    a = analyse(log.events, "big.jsonl")
    c = a.collections[0]
    shown = report._pick_nodes(c.nodes)
    assert len(shown) == report.MAX_NODES
    assert {n.order for n in c.nodes if n.anomalies} <= {n.order for n in shown}
    assert shown[-1] is c.nodes[-1]


def test_the_sample_session_is_what_the_tracker_says_today() -> None:
    """The committed log and recording come from scenario.py; rebuild them if this fails."""
    from . import scenario

    fresh = [json.loads(json.dumps(e)) for e in scenario.events()]
    committed, _ = read_events(DATA / "session.jsonl")
    assert fresh == committed, "run: .venv/bin/python -m tests.report.scenario"
