"""Headless Chromium (Debian's ``chromium`` package) for the report page's tests.

``python -m tests.report.browser`` rewrites the README's screenshot, docs/report-screenshot.png,
from the sample session recording.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "report-screenshot.png"
SIZE = (1400, 1000)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Console messages (errors, CSP violations, failed loads) are written to stderr as
    # "...:INFO:CONSOLE:<line>] "<message>", source: <url> (<line>)", whatever their level.
    "--enable-logging=stderr",
    "--v=0",
]
_CONSOLE = re.compile(r":CONSOLE(?::\d+|\(\d+\))\]")
MISSING = (
    "chromium not found: the report's page is tested in headless Chromium; install Debian's "
    "chromium package (apt-get install chromium), as .ci/run does"
)


class ChromiumMissing(Exception):
    """No chromium binary on this machine."""


def find() -> str:
    """The chromium binary."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    raise ChromiumMissing(MISSING)


def available() -> bool:
    """Whether a chromium binary is installed."""
    try:
        find()
    except ChromiumMissing:
        return False
    return True


@dataclass
class Run:
    """What one headless Chromium run printed."""

    stdout: str
    stderr: str

    @property
    def console(self) -> list[str]:
        """The page's console messages."""
        return [line for line in self.stderr.splitlines() if _CONSOLE.search(line)]


def run(page: Path, profile: Path, *args: str, timeout: float = 120) -> Run:
    """Open a local page once in headless Chromium with a private profile."""
    cmd = [find(), *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    # A session of its own, so that a hung run can be stopped with all its helper processes.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {err.decode(errors='replace')}")
    return Run(out.decode("utf-8", errors="replace"), err.decode("utf-8", errors="replace"))


def dump_dom(page: Path, profile: Path) -> Run:
    """Load the page; stdout is its DOM after load."""
    return run(page, profile, "--dump-dom")


def screenshot(page: Path, out: Path, profile: Path, size: tuple[int, int] = SIZE) -> Run:
    """A PNG of the page's first screen."""
    return run(page, profile, f"--screenshot={out}", f"--window-size={size[0]},{size[1]}")


def main() -> int:
    from repltap.report import analyse, read_events, render_html

    with tempfile.TemporaryDirectory() as tmp:
        events, notes = read_events(ROOT / "tests" / "report" / "data" / "session.mitm")
        page = Path(tmp) / "report.html"
        page.write_text(render_html(analyse(events, "session.mitm", notes)), encoding="utf-8")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        screenshot(page, SCREENSHOT, Path(tmp) / "profile")
    print(f"wrote {SCREENSHOT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
