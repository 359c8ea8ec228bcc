"""Make the sample recordings again: ``.venv/bin/python recordings/generate.py [NAME ...]``.

NAME is exchange or radicale (both when none is given). Each session runs through a real
``mitmdump -s addons/repl.py --set repl_record=...`` in reverse mode, so the files are what a
user's recording would be: every flow with its decoded summary and events, credentials
redacted, and a sidecar ``.index.json``.

- ``exchange-reference.mitm``: the reference scenario of ``make demo`` (reference client and
  server): paged initial sync, server-side changes, client edits (one answered 210), a conflict,
  a move, deletions, the Inbox re-created (475, full resync), a quiet poll. The client sends Basic
  credentials the reference server ignores, so that the recording shows what redaction does.
- ``radicale-caldav.mitm``: python-caldav against Radicale (RFC 6578): initial sync, create,
  modify, a change by another client, a stale write (412), delete, an old token, an invalid token.

Needs the test extra (Radicale, python-caldav): ``.venv/bin/pip install -e '.[test]'``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "addons")]

from tests.harness.mitm import MitmProc, start_mitmdump  # noqa: E402

from repltap.sim import client as simclient  # noqa: E402
from repltap.sim.admin import AdminClient  # noqa: E402
from repltap.sim.server import Settings, serve_in_thread, stop_server  # noqa: E402

OUT = ROOT / "recordings"
SCRIPT = str(ROOT / "addons" / "repl.py")
INBOX = "/exchange/alice/Inbox/"
# alice:wonderland, sent by the Exchange sample's client so that the recording shows redaction.
BASIC = "Basic " + base64.b64encode(b"alice:wonderland").decode()


def _proxy(upstream: str, out: Path, confdir: Path) -> MitmProc:
    for p in (out, out.with_name(out.name + ".index.json")):
        p.unlink(missing_ok=True)
    return start_mitmdump(
        "--mode", f"reverse:{upstream}",
        "--set", "connection_strategy=lazy",
        "-s", SCRIPT,
        "--set", f"repl_record={out}",
        "--flow-detail", "0",
        confdir=confdir,
    )  # fmt: skip


def _stop(proxy: MitmProc) -> None:
    code = proxy.stop()
    out = proxy.output()
    if code != 0 or "Addon error" in out:
        raise SystemExit(f"mitmdump failed ({code}):\n{out}")


class _AuthHttp(simclient.Http):
    """The reference client's HTTP, sending credentials as a real client would."""

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> simclient.Reply:
        return super().request(method, path, {"Authorization": BASIC, **(headers or {})}, body)


def _sync(url: str, store: Path, page_size: int, say: Callable[[str], None]) -> None:
    s = simclient.Sync(url, store, page_size=page_size, out=say)
    s.http = _AuthHttp(s.url)
    s.run()


def exchange(tmp: Path) -> Path:
    """The reference scenario (the steps of ``make demo``)."""
    out = OUT / "exchange-reference.mitm"
    server, thread = serve_in_thread(tmp / "data", settings=Settings(transform="crlf"))
    proxy = _proxy(server.url, out, tmp / "conf")
    admin = AdminClient(server.url)  # straight to the server: admin calls stay off the record
    store = tmp / "store"
    url = f"http://127.0.0.1:{proxy.port}{INBOX}"

    def edit(name: str, old: bytes, new: bytes) -> None:
        p = store / name
        p.write_bytes(p.read_bytes().replace(old, new))

    steps: list[tuple[str, Callable[[], None]]] = [
        ("initial sync, paged", lambda: None),
        (
            "server-side changes",
            lambda: (
                admin.post("create", path=INBOX + "Invitation.EML", subject="Team lunch on Friday"),
                admin.post("modify", path=INBOX + "Hello.EML", subject="Hello (updated)"),
                admin.post("delete", path=INBOX + "Newsletter.EML"),
            ),
        ),
        (
            "client edits (210 for the LF line endings)",
            lambda: (
                edit("Meeting.EML", b"3. Any other business", b"3. Lunch\r\n4. Any other business"),
                (store / "Todo.EML").write_bytes(b"Subject: To do\n\n- reply to Carol\n"),
            ),
        ),
        (
            "a conflict",
            lambda: (
                admin.post("modify", path=INBOX + "Report.EML", subject="Quarterly report (v2)"),
                edit("Report.EML", b"Please review before Friday.", b"Reviewed by Alice: OK."),
            ),
        ),
        (
            "a move",
            lambda: (
                os.rename(store / "Meeting.EML", store / "Meeting notes.EML"),
                admin.post(
                    "move",
                    path=INBOX + "Lunch on Friday.EML",
                    destination="/exchange/alice/Archive/Lunch on Friday.EML",
                ),
            ),
        ),
        (
            "deletions",
            lambda: (
                (store / "Todo.EML").unlink(),
                admin.post("delete", path=INBOX + "Invitation.EML"),
            ),
        ),
        (
            "the Inbox is re-created (475, full resync)",
            lambda: (
                admin.post(
                    "recreate",
                    path=INBOX,
                    keep=[
                        "Hello.EML",
                        "Meeting notes.EML",
                        "Report.EML",
                        "Report (conflict 1).EML",
                    ],
                ),
                admin.post("create", path=INBOX + "Welcome back.EML", subject="Welcome back"),
            ),
        ),
        ("quiet again", lambda: None),
    ]
    try:
        for n, (title, act) in enumerate(steps, 1):
            print(f"exchange: {n}. {title}")
            act()
            _sync(url, store, 3, lambda line: print("    " + line))
    finally:
        _stop(proxy)
        stop_server(server, thread)
    return out


def radicale(tmp: Path) -> Path:
    """python-caldav against Radicale, the RFC 6578 scenario of tests/e2e/test_rfc6578_peers.py."""
    import caldav
    from caldav.lib import error as caldav_error
    from tests.harness.peers import RADICALE_CALENDAR, RADICALE_USER
    from tests.harness.peers import radicale as start_radicale

    out = OUT / "radicale-caldav.mitm"
    ical = (
        "BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//repltap//sample//EN\nBEGIN:VEVENT\n"
        "UID:repltap-sample\nDTSTAMP:20260101T000000Z\nDTSTART:20260105T100000Z\n"
        "DTEND:20260105T110000Z\nSUMMARY:{}\nEND:VEVENT\nEND:VCALENDAR\n"
    )
    with start_radicale(tmp / "radicale") as base:
        proxy = _proxy(base, out, tmp / "conf")
        url = f"http://127.0.0.1:{proxy.port}{RADICALE_CALENDAR}"
        # auth_type="basic": credentials on every request (Radicale, with auth none, would
        # never ask for them), so that the recording shows what redaction does.
        client = caldav.DAVClient(
            url=url, username=RADICALE_USER, password="wonderland", auth_type="basic"
        )
        try:
            cal = client.calendar(url=url)
            t0 = cal.get_objects_by_sync_token(None, disable_fallback=True).sync_token
            ev = cal.add_event(ical.format("one"))
            t1 = cal.get_objects_by_sync_token(t0, disable_fallback=True).sync_token
            ev.icalendar_component["SUMMARY"] = "two"
            ev.save()
            t2 = cal.get_objects_by_sync_token(t1, disable_fallback=True).sync_token
            # Another client changes the event behind the proxy's back.
            other = caldav.DAVClient(url=base + RADICALE_CALENDAR, username=RADICALE_USER)
            path = urllib.parse.urlsplit(str(ev.url)).path
            other.put(base + path, ical.format("three"), {"Content-Type": "text/calendar"})
            t3 = cal.get_objects_by_sync_token(t2, disable_fallback=True).sync_token
            ev.icalendar_component["SUMMARY"] = "four"
            with contextlib.suppress(caldav_error.DAVError):
                ev.save()  # stale: 412
            ev.delete()
            cal.get_objects_by_sync_token(t3, disable_fallback=True)
            cal.get_objects_by_sync_token(t1, disable_fallback=True)  # an old token
            with contextlib.suppress(caldav_error.DAVError):
                cal.get_objects_by_sync_token("http://example.invalid/never", disable_fallback=True)
        finally:
            client.close()
            _stop(proxy)
    return out


def main(argv: list[str]) -> int:
    which = argv or ["exchange", "radicale"]
    tmp = Path(tempfile.mkdtemp(prefix="repltap-recordings-"))
    try:
        for name in which:
            made = {"exchange": exchange, "radicale": radicale}[name](tmp / name)
            size = made.stat().st_size
            print(f"wrote {made.relative_to(ROOT)} ({size / 1024:.0f} KiB) and its index")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
