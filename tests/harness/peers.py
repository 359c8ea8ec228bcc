"""Real WebDAV/CalDAV servers for the end-to-end tests, each on a free loopback port with storage in
a throwaway directory; see ../shared/spec/rfc6578-peers.md for what each one does on the wire.

    with radicale(tmp_path) as base:      # "http://127.0.0.1:PORT"; calendar at /alice/cal/
    with xandikos(tmp_path) as base:      # calendar at /user/calendars/calendar/
    with wsgidav(tmp_path) as base:       # plain WebDAV, no auth, read-write root at /

Each starter waits until the server answers an HTTP request (not just until the port is open),
raises PeerError with the command and the server's output if it exits early or is not ready in
time, and on exit stops it with SIGTERM (SIGKILL after a grace period). A missing executable is a
PeerError too: the tests that use these must fail, never skip, when a peer is not installed.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .mitm import free_port

__all__ = [
    "RADICALE_CALENDAR",
    "RADICALE_USER",
    "XANDIKOS_CALENDAR",
    "PeerError",
    "PeerProc",
    "find_peer_exe",
    "radicale",
    "wsgidav",
    "xandikos",
]

RADICALE_USER = "alice"
RADICALE_CALENDAR = "/alice/cal/"
XANDIKOS_CALENDAR = "/user/calendars/calendar/"


class PeerError(RuntimeError):
    """A peer could not be found, started, or made ready."""


def find_peer_exe(name: str) -> str:
    """A console script from this venv (next to sys.executable) first, then PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise PeerError(
        f"{name!r} not found next to {sys.executable} nor on PATH: install the test extra "
        f"(.venv/bin/pip install -e '.[test]') or, for litmus, `apt-get install litmus`"
    )


class PeerProc:
    """A server subprocess whose stdout and stderr go to a log file (no pipe that could fill)."""

    def __init__(self, cmd: list[str], log: Path, cwd: Path) -> None:
        self.cmd = cmd
        self.log = log
        self._log_file = log.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Proxy variables of the environment must not reach a server (or the readiness probe).
        for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
            env.pop(var, None)
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError as e:
            return f"(no output: {e})"

    def fail(self, why: str) -> PeerError:
        self.stop(timeout=5)
        name = Path(self.cmd[0]).name
        return PeerError(f"{name} {why}\ncommand: {self.cmd}\n---- output ----\n{self.output()}")

    def wait_ready(
        self,
        port: int,
        path: str = "/",
        method: str = "OPTIONS",
        headers: dict[str, str] | None = None,
        timeout: float = 20,
    ) -> None:
        """Poll with an HTTP request until any HTTP answer comes back."""
        deadline = time.monotonic() + timeout
        last: str = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self.fail(f"exited early with code {self.proc.returncode}")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request(method, path, headers=headers or {})
                conn.getresponse().read()
                return
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            finally:
                conn.close()
            time.sleep(0.05)
        raise self.fail(f"not ready on 127.0.0.1:{port} after {timeout} s (last: {last})")

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


def _start(
    make_cmd: Callable[[int], list[str]],
    workdir: Path,
    name: str,
    path: str = "/",
    method: str = "OPTIONS",
    headers: dict[str, str] | None = None,
    attempts: int = 3,
) -> tuple[PeerProc, int]:
    """Start the server on a fresh free port; retry when the port was taken meanwhile."""
    for attempt in range(attempts):
        port = free_port()
        p = PeerProc(make_cmd(port), workdir / f"{name}-{port}.log", workdir)
        try:
            p.wait_ready(port, path, method, headers)
        except PeerError as e:
            if attempt < attempts - 1 and "in use" in str(e).lower():
                continue
            raise
        return p, port
    raise AssertionError("unreachable")


def _basic(user: str, password: str = "x") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ical(uid: str, summary: object) -> str:
    """A minimal iCalendar event, as the CalDAV end-to-end tests create and modify."""
    return (
        "BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//repltap//e2e//EN\nBEGIN:VEVENT\n"
        f"UID:{uid}\nDTSTAMP:20260101T000000Z\nDTSTART:20260105T100000Z\n"
        f"DTEND:20260105T110000Z\nSUMMARY:{summary}\nEND:VEVENT\nEND:VCALENDAR\n"
    )


MKCALENDAR_BODY = b"""<?xml version="1.0" encoding="utf-8"?>
<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:set><D:prop><D:displayname>cal</D:displayname></D:prop></D:set>
</C:mkcalendar>"""


@contextlib.contextmanager
def radicale(workdir: Path, *, calendar: bool = True) -> Iterator[str]:
    """Radicale on 127.0.0.1:PORT, auth none (any Basic user is that user), rights owner_only.

    With calendar=True, MKCALENDAR /alice/cal/ is sent as user alice before yielding. Delays
    Radicale adds to 403/5xx answers (auth delay, delay_on_error) are turned off.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    exe = find_peer_exe("radicale")
    store = workdir / "radicale-collections"
    store.mkdir(exist_ok=True)

    def cmd(port: int) -> list[str]:
        conf = workdir / f"radicale-{port}.conf"
        conf.write_text(
            "[server]\n"
            f"hosts = 127.0.0.1:{port}\n"
            "delay_on_error = 0\n"
            "[auth]\n"
            "type = none\n"
            "delay = 0\n"
            "[rights]\n"
            "type = owner_only\n"
            "[storage]\n"
            f"filesystem_folder = {store}\n"
            "[logging]\n"
            "level = warning\n"
        )
        return [exe, "--config", str(conf)]

    proc, port = _start(cmd, workdir, "radicale")
    try:
        if calendar:
            status, body = _request(
                port,
                "MKCALENDAR",
                RADICALE_CALENDAR,
                MKCALENDAR_BODY,
                {"Authorization": _basic(RADICALE_USER), "Content-Type": "text/xml"},
            )
            if status != 201:
                raise proc.fail(f"MKCALENDAR {RADICALE_CALENDAR} answered {status}: {body!r}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@contextlib.contextmanager
def xandikos(workdir: Path) -> Iterator[str]:
    """Xandikos on 127.0.0.1:PORT with --defaults: /user/calendars/calendar/ and
    /user/contacts/addressbook/ exist; no auth. Its state dir is in workdir too, never ~."""
    workdir.mkdir(parents=True, exist_ok=True)
    exe = find_peer_exe("xandikos")
    data, state = workdir / "xandikos-data", workdir / "xandikos-state"

    def cmd(port: int) -> list[str]:
        return [
            exe, "serve", "-d", str(data), "--defaults",
            "-l", "127.0.0.1", "-p", str(port),
            "--state-dir", str(state), "--no-detect-systemd",
        ]  # fmt: skip

    proc, port = _start(cmd, workdir, "xandikos", XANDIKOS_CALENDAR, "PROPFIND", {"Depth": "0"})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@contextlib.contextmanager
def wsgidav(workdir: Path) -> Iterator[str]:
    """wsgidav (cheroot) on 127.0.0.1:PORT serving an empty read-write root, anonymous access.

    No config file is read (--no-config), so nothing from the working directory leaks in.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    exe = find_peer_exe("wsgidav")
    root = workdir / "wsgidav-root"
    root.mkdir(exist_ok=True)

    def cmd(port: int) -> list[str]:
        return [
            exe, "--host", "127.0.0.1", "--port", str(port), "--root", str(root),
            "--auth", "anonymous", "--no-config", "-q",
        ]  # fmt: skip

    proc, port = _start(cmd, workdir, "wsgidav")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
