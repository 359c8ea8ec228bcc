"""``make demo``: the whole loop on one screen.

Starts the reference server (``repltap serve``, example mailbox) and ``mitmdump -s addons/repl.py``
in reverse mode in front of it, then plays a scenario with the reference client through the
proxy: initial paged sync, server-side changes, client edits (one answered with 210), a
conflict, a move, deletions, and a re-created collection (475, then a full resync). After each
step it prints what the client did, what the proxy decoded (``flow.metadata["repl"]`` of the flows
in ``recordings/demo.mitm``), and checks that the client's store equals the server's collection.
Everything it starts is stopped on the way out, on failure and on Ctrl-C too.

Run: ``python -m repltap.sim.demo [--out recordings/demo.mitm] [--keep]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .admin import AdminClient
from .client import STATE_FILE, State, SyncError, sync

ROOT = Path(__file__).resolve().parents[3]
ADDON = ROOT / "addons" / "repl.py"
_PROXY_RE = re.compile(r"listening at (\S+):(\d+)\.$")
_SERVER_RE = re.compile(r"^listening on (http://\S+?)/?$")
INBOX = "/exchange/alice/Inbox/"
# (title, what happens): the steps of the scenario, in order.
SCENARIO = [
    (
        "Initial sync, paged",
        "The client has no collblob: it asks for the whole manifest, {page_size} rows at a time "
        "(Range: rows=0-N with the newest collblob), downloads every item, then asks for an "
        "updated manifest: nothing changed, so the server answers an empty <R:repl/>.",
    ),
    (
        "Server-side changes",
        "server: a new message, a modified one, a deleted one (through the admin API). The "
        "updated manifest reports new / change / delete (the delete keyed by repl-uid).",
    ),
    (
        "Client edits",
        "you: edit Meeting.EML, create Todo.EML (LF line endings). PUT with If: (<rt:…>) for the "
        "edit, If-None-Match: * for the new file; the server stores text with CRLF and answers "
        "210 Content Different, so the client downloads its version. The updated manifest "
        "acknowledges the new tags (resourcetaglist): nothing comes back.",
    ),
    (
        "A conflict",
        "server: Report.EML is changed; you: edit Report.EML too. PUT If: (<rt:old>) → 412: the "
        "client fetches the server's version and keeps yours as a new item next to it, so both "
        "survive.",
    ),
    (
        "A move",
        "you: rename Meeting.EML to 'Meeting notes.EML' → MOVE (If, Overwrite: F), then PROPFIND "
        "the destination with If: (<rid:…>) for its tag (MOVE returns none). server: Lunch on "
        "Friday.EML moves to Archive → a delete in the Inbox manifest.",
    ),
    (
        "Deletions",
        "you: delete Todo.EML → DELETE If: (<rt:…>); server: Invitation.EML is deleted.",
    ),
    (
        "The Inbox is re-created",
        "server: the Inbox is deleted and re-created, restored from a backup (same repl-uids and "
        "tags) without Lunch and Invitation, plus one new message. The old collblob is now "
        "invalid: 475, then a full resync reconciled by repl-uid (what the client already has "
        "is not downloaded again).",
    ),
    ("Quiet again", "Nothing changed anywhere: one manifest, an empty <R:repl/>."),
]


class DemoError(Exception):
    """Something the demo cannot go on without."""


class Child:
    """A child process whose output a thread keeps draining (a full pipe would stall it)."""

    def __init__(self, name: str, cmd: list[str], ready: re.Pattern[str], timeout: float) -> None:
        self.name = name
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.match: re.Match[str] | None = None
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # piped stdout is block-buffered otherwise
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop it cleanly
        )
        threading.Thread(target=self._drain, args=(ready,), daemon=True).start()
        try:
            with self._cond:
                self._cond.wait_for(
                    lambda: self.match is not None or self.proc.poll() is not None, timeout
                )
        except BaseException:  # Ctrl-C while it starts: it is not in anyone's list yet
            self.stop()
            raise
        if self.match is None:
            self.stop()
            raise DemoError(f"{name} did not start:\n  " + "\n  ".join(self.lines[-20:]))

    def _drain(self, ready: re.Pattern[str]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                if self.match is None and (m := ready.search(line.rstrip("\n"))):
                    self.match = m
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        """SIGTERM (mitmdump closes its -w file cleanly), SIGKILL if it does not exit."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def mitmdump_exe() -> str:
    """mitmdump next to this interpreter (the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / "mitmdump"
    if here.exists():
        return str(here)
    found = shutil.which("mitmdump")
    if not found:
        raise DemoError(f"mitmdump not found next to {sys.executable} nor on PATH")
    return found


def _tool(name: str) -> str:
    """How to call a mitmproxy tool from the repository: by name if it is on PATH, else the
    venv's copy (``make demo`` does not activate the venv)."""
    if shutil.which(name):
        return name
    exe = Path(sys.executable).parent / name
    return str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else str(exe)


class Recording:
    """Reads the flows mitmdump has written so far, remembering which were shown."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = 0

    def new_flows(self) -> list[Any]:
        from mitmproxy import io

        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            flows = list(io.FlowReader(f).stream())
        new, self.seen = flows[self.seen :], len(flows)
        return new


def flow_line(flow: Any) -> str:
    """One line per flow: method, status and what repltap decoded."""
    status = flow.response.status_code if flow.response is not None else "---"
    s = flow.metadata.get("repl")
    text = s["summary"] if isinstance(s, dict) and "summary" in s else flow.request.path
    anomalies = s.get("anomalies") if isinstance(s, dict) else None
    if anomalies:
        text += f"  [anomalies: {', '.join(anomalies)}]"
    return f"{flow.request.method:<9} {status}  {text}"


def compare(admin: AdminClient, store: Path) -> tuple[bool, str]:
    """Whether the store holds exactly the collection's items (names, bytes, tags)."""
    server = admin.export(INBOX)["items"]
    local = {
        p.name: p.read_bytes()
        for p in store.iterdir()
        if p.is_file() and not p.name.startswith(".")
    }
    state = State.load(store / STATE_FILE)
    tags = {i.name: i.tag for i in state.items.values()} if state else {}
    problems = []
    for name in sorted(set(server) | set(local)):
        if name not in local:
            problems.append(f"{name} missing in the store")
        elif name not in server:
            problems.append(f"{name} is not on the server")
        elif local[name] != server[name]["content"]:
            problems.append(f"{name} differs")
        elif tags.get(name) != server[name]["tag"]:
            problems.append(f"{name} has another tag")
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(server)} items, same names, bytes and tags"


def edit(path: Path, old: bytes, new: bytes) -> None:
    path.write_bytes(path.read_bytes().replace(old, new))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(out: Path, keep: bool, page_size: int) -> int:
    # SIGTERM (make being stopped, a CI timeout) cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="repltap-demo-"))
    children: list[Child] = []
    started = time.monotonic()
    try:
        server = Child(
            "repltap serve",
            [
                sys.executable,
                "-m",
                "repltap.cli",
                "serve",
                "--port",
                "0",
                "--data",
                str(tmp / "data"),
                "--transform",
                "crlf",
                "--quiet",
                "--no-fsync",
            ],
            _SERVER_RE,
            20,
        )
        children.append(server)
        assert server.match is not None
        server_url = server.match.group(1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        proxy = Child(
            "mitmdump",
            [
                mitmdump_exe(),
                "--mode",
                f"reverse:{server_url}",
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                "0",
                "--set",
                f"confdir={tmp / 'mitmproxy'}",
                "--set",
                "connection_strategy=lazy",
                "-s",
                str(ADDON),
                "-w",
                str(out),
                "--flow-detail",
                "0",
            ],
            _PROXY_RE,
            30,
        )
        children.append(proxy)
        assert proxy.match is not None
        proxy_url = f"http://127.0.0.1:{proxy.match.group(2)}"
        admin = AdminClient(server_url)  # straight to the server: admin calls stay off the record
        store = tmp / "store"
        rec = Recording(out)
        print(
            f"reference server   {server_url}/  (repltap serve, the example mailbox, "
            "--transform crlf)"
        )
        print(
            f"mitmdump           {proxy_url}/  (reverse proxy to it, -s addons/repl.py, "
            f"-w {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out})"
        )
        print(f"client store       {store}")
        print(f"client syncs       {proxy_url}{INBOX}  (page size {page_size})")

        def step(n: int, title: str, what: list[str], act: Callable[[], None]) -> None:
            print(f"\n━━ {n}. {title}")
            for line in what:
                print(f"   {line}")
            act()
            print("   client: repltap sync")
            try:
                sync(
                    proxy_url + INBOX,
                    store,
                    page_size=page_size,
                    out=lambda line: print("     " + line),
                )
            except SyncError as e:
                raise DemoError(f"the client failed: {e}") from None
            print("   proxy: what repltap decoded on the wire")
            for flow in rec.new_flows():
                print("     " + flow_line(flow))
            ok, detail = compare(admin, store)
            print(("   ✓ store = server: " if ok else "   ✗ store ≠ server: ") + detail)
            if not ok:
                raise DemoError(f"after step {n} the store does not match the server: {detail}")

        def nothing() -> None:
            pass

        def server_changes() -> None:
            admin.post(
                "create",
                path=INBOX + "Invitation.EML",
                subject="Team lunch on Friday",
                body="Everyone is welcome.",
            )
            admin.post(
                "modify",
                path=INBOX + "Hello.EML",
                subject="Hello (updated)",
                body="Hi Alice,\n\nthe server changed this message.\n",
            )
            admin.post("delete", path=INBOX + "Newsletter.EML")

        def client_edits() -> None:
            edit(
                store / "Meeting.EML",
                b"3. Any other business",
                b"3. Lunch\r\n4. Any other business",
            )
            (store / "Todo.EML").write_bytes(
                b"Subject: To do\n\n- reply to Carol\n- review report\n"
            )

        def conflict() -> None:
            admin.post(
                "modify",
                path=INBOX + "Report.EML",
                subject="Quarterly report (v2)",
                body="Revised figures from Dave.\n",
            )
            edit(store / "Report.EML", b"Please review before Friday.", b"Reviewed by Alice: OK.")

        def move() -> None:
            os.rename(store / "Meeting.EML", store / "Meeting notes.EML")
            admin.post(
                "move",
                path=INBOX + "Lunch on Friday.EML",
                destination="/exchange/alice/Archive/Lunch on Friday.EML",
            )

        def deletion() -> None:
            (store / "Todo.EML").unlink()
            admin.post("delete", path=INBOX + "Invitation.EML")

        def recreate() -> None:
            admin.post(
                "recreate",
                path=INBOX,
                keep=["Hello.EML", "Meeting notes.EML", "Report.EML", "Report (conflict 1).EML"],
            )
            admin.post(
                "create",
                path=INBOX + "Welcome back.EML",
                subject="Welcome back",
                body="The Inbox was restored from a backup.",
            )

        actions = [nothing, server_changes, client_edits, conflict, move, deletion, recreate]
        for n, ((title, text), act) in enumerate(zip(SCENARIO, [*actions, nothing], strict=True)):
            step(n + 1, title, textwrap.wrap(text.format(page_size=page_size), 86), act)

        proxy.stop()  # closes demo.mitm cleanly before we point at it
        shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
        print(
            f"\nDone in {time.monotonic() - started:.1f} s. The session is in {shown}; open it with"
        )
        print(f"  {_tool('mitmweb')} -r {shown} -s addons/repl.py")
        print("(each flow's comment is repltap's one-line summary; the 'WebDAV replication' view")
        print(" shows the decoded manifest) or replay it offline with")
        print(f"  {_tool('mitmdump')} -nr {shown} -s addons/repl.py")
        return 0
    except DemoError as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        for child in reversed(children):
            child.stop()
        if keep:
            print(f"(kept {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m repltap.sim.demo", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "recordings" / "demo.mitm",
        help="where mitmdump writes the session (default recordings/demo.mitm)",
    )
    p.add_argument("--page-size", type=int, default=2, help="manifest rows per request (2)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    return run(args.out.resolve(), args.keep, args.page_size)


if __name__ == "__main__":
    sys.exit(main())
