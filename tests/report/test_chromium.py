"""The report page in a real browser: headless Chromium (Debian's ``chromium`` package).

These tests fail, never skip, when chromium is missing: .ci/run installs it.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path

import pytest

from repltap.report import analyse, read_events, render_html

from . import browser, png
from .test_html import XSS, hostile_log

DATA = Path(__file__).parent / "data"


def need_chromium() -> None:
    """Fail, never skip, when chromium is missing."""
    if not browser.available():
        pytest.fail(browser.MISSING, pytrace=False)


def page_of(events: list[dict[str, object]], source: str, tmp_path: Path) -> Path:
    page = tmp_path / "report.html"
    page.write_text(render_html(analyse(events, source)), encoding="utf-8")
    return page


def test_page_loads_without_console_messages(tmp_path: Path) -> None:
    need_chromium()
    events, _ = read_events(DATA / "session.mitm")
    result = browser.dump_dom(page_of(events, "session.mitm", tmp_path), tmp_path / "profile")
    assert result.console == []
    dom = result.stdout
    assert "<h1>Replication report</h1>" in dom
    for path in (
        "/exchange/alice/Inbox/",
        "/exchange/alice/Calendar/",
        "/exchange/alice/Contacts/",
    ):
        assert f'<h3>mail.example.com:80{path} <span class="state' in dom
    assert dom.count('<g class="sync">') == 17
    assert "10.0.0.21 Evolution/3.46.4" in dom


def test_the_console_check_sees_errors(tmp_path: Path) -> None:
    """The check above would notice a broken page: a script error and a blocked fetch."""
    need_chromium()
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; script-src 'unsafe-inline'\"></head><body>"
        '<script>undefinedFunction()</script><img src="http://192.0.2.1/x.png"></body></html>'
    )
    console = browser.dump_dom(page, tmp_path / "profile").console
    assert any("undefinedFunction is not defined" in line for line in console)
    assert any("Content Security Policy" in line for line in console)


def test_hostile_strings_stay_text(tmp_path: Path) -> None:
    """Markup in tokens, paths and details is shown as text: nothing runs, nothing is blocked."""
    need_chromium()
    page = page_of(hostile_log().events, f"{XSS}.jsonl", tmp_path)
    result = browser.dump_dom(page, tmp_path / "profile")
    assert result.console == []
    assert "<script" not in result.stdout and "<img" not in result.stdout
    assert html.escape(XSS, quote=False) in result.stdout


def test_screenshot(tmp_path: Path) -> None:
    need_chromium()
    events, _ = read_events(DATA / "session.mitm")
    shot = tmp_path / "shot.png"
    result = browser.screenshot(
        page_of(events, "session.mitm", tmp_path), shot, tmp_path / "profile"
    )
    assert result.console == []
    img = png.read(shot.read_bytes())
    assert (img.width, img.height) == browser.SIZE
    pixels = Counter(px for row in img.rows[::4] for px in row[::4])
    _, n = pixels.most_common(1)[0]
    assert len(pixels) > 50, "hardly any colours: a blank page?"
    assert n < 0.8 * sum(pixels.values()), "one colour covers most of the page"
    # The page's own styles applied: the dark header band, and the red of an error somewhere.
    assert img.rows[20][20] == (0x1D, 0x25, 0x30)
    assert any(r > 180 and g < 80 and b < 80 for r, g, b in pixels)


def test_reference_screenshot_for_the_readme() -> None:
    """docs/report-screenshot.png exists (rewrite it with python -m tests.report.browser)."""
    img = png.read(browser.SCREENSHOT.read_bytes())
    assert (img.width, img.height) == browser.SIZE
