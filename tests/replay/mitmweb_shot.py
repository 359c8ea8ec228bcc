"""mitmweb showing a recording decoded, in headless Chromium.

``python -m tests.replay.mitmweb_shot`` rewrites the README's picture, docs/mitmweb-screenshot.png:
``mitmweb -r recordings/exchange-reference.mitm -s addons/repl.py`` with the manifest that
reports the server-side changes open on its Response tab (the "WebDAV Replication" view).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.harness.mitm import MitmWeb, start_mitmweb
from tests.report import browser

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "addons" / "repl.py")
RECORDING = ROOT / "recordings" / "exchange-reference.mitm"
SCREENSHOT = ROOT / "docs" / "mitmweb-screenshot.png"
SIZE = (1400, 900)


def start(recording: Path, confdir: str | os.PathLike[str]) -> MitmWeb:
    """A headless mitmweb with the recording loaded and repltap's addons."""
    return start_mitmweb("-r", str(recording), "-s", SCRIPT, confdir=confdir)


def showcase(flows: list[dict[str, Any]]) -> dict[str, Any]:
    """The flow to show: the first manifest that reports new, changed and deleted items."""
    for f in flows:
        first = (f.get("comment") or "").splitlines()[:1]
        if (
            first
            and first[0].startswith("manifest")
            and all(w in first[0] for w in ("new", "change", "delete"))
        ):
            return f
    return flows[0]


def screenshot(web: MitmWeb, flow_id: str, out: Path, profile: Path) -> None:
    """A PNG of mitmweb's UI with ``flow_id`` open on its Response tab.

    The token goes in the query (mitmweb sets its auth cookie from it); the flow in the
    fragment, which is the UI's own routing. ``--virtual-time-budget`` lets the page fetch the
    flows and render the contentview before the picture is taken.
    """
    url = f"http://127.0.0.1:{web.web_port}/?token={web.token}#/flows/{flow_id}/response"
    cmd = [
        browser.find(),
        *browser.FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={SIZE[0]},{SIZE[1]}",
        "--virtual-time-budget=8000",
        f"--screenshot={out}",
        url,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium exited {proc.returncode}: {err.decode(errors='replace')}")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        web = start(RECORDING, Path(tmp) / "conf")
        try:
            _, flows = web.api("GET", "/flows")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            screenshot(web, showcase(flows)["id"], SCREENSHOT, Path(tmp) / "profile")
        finally:
            web.stop()
    print(f"wrote {SCREENSHOT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
