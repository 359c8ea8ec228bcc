"""Run the real mitmdump/mitmweb as subprocesses and talk raw HTTP/1.1 to them.

Facts this relies on (see ../shared/notes/mitmproxy-12.md §0, §3.4, §5):
- piped stdout of mitmdump is block-buffered unless PYTHONUNBUFFERED=1;
- `--listen-port 0` picks a free port, logged as "... listening at 127.0.0.1:PORT.";
- mitmweb logs "Web server listening at http://HOST:PORT/?token=HEX"; `--web-port 0` would log
  port 0, so we pick the web port ourselves;
- a private confdir keeps ~/.mitmproxy (CA, config.yaml) out of the tests.
"""

from __future__ import annotations

import http.client
import inspect
import json as _json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "MitmProc",
    "MitmWeb",
    "find_exe",
    "free_port",
    "load_repl_script",
    "raw_exchange",
    "split_response",
    "start_mitmdump",
    "start_mitmweb",
]

# "[11:47:19.544] reverse proxy to http://127.0.0.1:9 listening at 127.0.0.1:37391."
# Anchored on the trailing "." so the "Web server listening at http://..." line never matches.
_PROXY_RE = re.compile(r"listening at (\S+):(\d+)\.$")
_WEB_RE = re.compile(r"Web server listening at (\S+)")


REPL_SCRIPT = Path(__file__).resolve().parents[2] / "addons" / "repl.py"


async def call_hook(hook: Any, *args: Any) -> None:
    """Call an addon's hook as mitmproxy does: awaited when it hands back an awaitable (repltap's
    hooks return a coroutine only when they have something to wait for)."""
    res = hook(*args)
    if res is not None and inspect.isawaitable(res):
        await res


def load_repl_script() -> Any:
    """addons/repl.py imported afresh, as mitmproxy loads a script: new instances of every part
    each time. Its ``addons`` list holds the one Suite."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("repl_script_under_test", REPL_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_exe(name: str) -> str:
    """Path of a console script: next to sys.executable (the venv's bin) first, then PATH."""
    # Don't resolve symlinks: .venv/bin/python links to the base interpreter's directory.
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"{name!r} not found next to {sys.executable} nor on PATH; install mitmproxy in this venv"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port (bind to port 0, read it, close). Racy, but fine for tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class MitmProc:
    """A running mitmdump (or mitmweb); a thread drains its merged stdout+stderr into .lines."""

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = cmd
        self.port = 0
        self.lines: list[str] = []  # live: the pump thread appends while the process runs
        self._found: dict[str, re.Match[str]] = {}
        self._eof = False
        self._cond = threading.Condition()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
        # Always keep draining: a full pipe would block mitmproxy's logging and so the proxy itself.
        self._pump = threading.Thread(
            target=self._drain, name=f"pump-{Path(cmd[0]).name}", daemon=True
        )
        self._pump.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                line = line.rstrip("\r\n")
                with self._cond:
                    self.lines.append(line)
                    for key, rx in (("proxy", _PROXY_RE), ("web", _WEB_RE)):
                        if key not in self._found and (m := rx.search(line)):
                            self._found[key] = m
                    self._cond.notify_all()
        finally:
            self.proc.stdout.close()
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _wait_for(self, keys: tuple[str, ...], timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._eof or all(k in self._found for k in keys), timeout)
            ok = all(k in self._found for k in keys)
            exited = self._eof
        if not ok:
            code = self.stop(timeout=5)
            why = f"exited early with code {code}" if exited else f"not ready after {timeout} s"
            raise RuntimeError(
                f"{self.cmd[0]} {why}\ncommand: {self.cmd}\n---- output ----\n{self.output()}"
            )
        self.port = int(self._found["proxy"].group(2))

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM (clean shutdown: done hooks run, -w files are closed), then SIGKILL if needed."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._pump.join(timeout=2)  # so that .lines holds the final output
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MitmWeb(MitmProc):
    """A headless mitmweb: proxy on `.port`, REST API on `.web_port`, auth with `.token`."""

    web_port: int
    token: str

    def api(self, method: str, path: str, json: Any = None, timeout: float = 10) -> tuple[int, Any]:
        """Call the REST API: (status, parsed JSON) for JSON replies, else (status, body bytes)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        body: bytes | None = None
        if json is not None:
            body = _json.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        # Tornado checks XSRF on every method but GET/HEAD/OPTIONS: double submit, so any random
        # value works as long as cookie and header agree (notes §5).
        if method.upper() not in ("GET", "HEAD", "OPTIONS"):
            xsrf = secrets.token_hex(16)
            headers["Cookie"] = f"_mitmproxy_xsrf={xsrf}"
            headers["X-XSRFToken"] = xsrf
        conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=timeout)
        try:
            conn.request(method.upper(), path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if "json" in (resp.getheader("Content-Type") or "") and data:
            return resp.status, _json.loads(data)
        return resp.status, data


def _resolve(exe: str) -> str:
    return exe if os.sep in exe else find_exe(exe)


def start_mitmdump(
    *args: str,
    confdir: str | os.PathLike[str],
    timeout: float = 20,
    exe: str = "mitmdump",
    wrapper: Sequence[str] = (),
) -> MitmProc:
    """Start mitmdump on 127.0.0.1 with a free port; returns once its (first) proxy listens.

    With several `--mode` flags only the first "listening at" port is taken. ``wrapper`` runs
    it under another program (``valgrind ...``). Raises RuntimeError with the full output if it
    exits early or times out.
    """
    cmd = [
        *wrapper,
        _resolve(exe),
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        "0",
        "--set",
        f"confdir={confdir}",
        *args,
    ]
    m = MitmProc(cmd)
    m._wait_for(("proxy",), timeout)
    return m


def run_mitmdump(
    *args: str, confdir: str | os.PathLike[str], timeout: float = 60
) -> tuple[int, str]:
    """Run mitmdump to completion (``-n -r recording`` and the like); (exit code, output)."""
    cmd = [_resolve("mitmdump"), "--set", f"confdir={confdir}", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout
    )
    return p.returncode, p.stdout


def start_mitmweb(
    *args: str,
    confdir: str | os.PathLike[str],
    timeout: float = 20,
    exe: str = "mitmweb",
) -> MitmWeb:
    """Start a headless mitmweb (proxy port 0, web port chosen here); returns once both listen."""
    for attempt in range(3):
        web_port = free_port()
        cmd = [
            _resolve(exe),
            "--no-web-open-browser",
            "--web-host", "127.0.0.1",
            "--web-port", str(web_port),
            "--listen-host", "127.0.0.1",
            "--listen-port", "0",
            "--set", f"confdir={confdir}",
            *args,
        ]  # fmt: skip
        m = MitmWeb(cmd)
        try:
            m._wait_for(("proxy", "web"), timeout)
        except RuntimeError as e:
            # free_port() is racy: another process may grab the port before mitmweb binds it.
            if attempt < 2 and "already in use" in str(e).lower():
                continue
            raise
        m.web_port = web_port
        # With a fixed web_password the URL carries no token; api() then needs --set web_password.
        query = urllib.parse.urlsplit(m._found["web"].group(1)).query
        m.token = urllib.parse.parse_qs(query).get("token", [""])[0]
        return m
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- raw HTTP/1.1 client side


def _parse_head(block: bytes) -> tuple[int, list[tuple[str, str]]]:
    """Status and headers of a response head block (without its final blank line)."""
    lines = block.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return status, headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    name = name.lower()
    return next((v for n, v in headers if n.lower() == name), None)


def _chunked_end(buf: bytes, pos: int) -> int | None:
    """End offset of a chunked body starting at pos (after trailers), or None if incomplete."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";")[0].strip(), 16)
        pos = eol + 2
        if size == 0:
            while True:  # trailer lines until the empty line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return eol + 2
                pos = eol + 2
        pos += size + 2
        if pos > len(buf):
            return None


def _dechunk(buf: bytes, pos: int) -> bytes:
    out = bytearray()
    while True:
        eol = buf.index(b"\r\n", pos)
        size = int(buf[pos:eol].split(b";")[0].strip(), 16)
        if size == 0:
            return bytes(out)
        out += buf[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


def _final_head(raw: bytes) -> tuple[int, list[tuple[str, str]], int] | None:
    """Skip interim 1xx responses: (status, headers, body offset) of the final one, or None."""
    pos = 0
    while True:
        end = raw.find(b"\r\n\r\n", pos)
        if end < 0:
            return None
        status, headers = _parse_head(raw[pos:end])
        if 100 <= status < 200 and status != 101:
            pos = end + 4
            continue
        return status, headers, end + 4


def _response_end(buf: bytes, method: bytes) -> int | None:
    """Offset where the final response in buf ends, or None if more bytes (or EOF) are needed."""
    head = _final_head(buf)
    if head is None:
        return None
    status, headers, body_at = head
    if (
        method == b"HEAD"
        or status in (101, 204, 304)
        or (method == b"CONNECT" and 200 <= status < 300)
    ):
        return body_at
    te = _header(headers, "Transfer-Encoding")
    if te is not None and "chunked" in te.lower():
        return _chunked_end(buf, body_at)
    cl = _header(headers, "Content-Length")
    if cl is not None:
        end = body_at + int(cl)
        return end if len(buf) >= end else None
    return None  # no framing: the body runs until the server closes


def raw_exchange(
    port: int, request_bytes: bytes, timeout: float = 10, host: str = "127.0.0.1"
) -> bytes:
    """Send request_bytes as-is on a fresh TCP connection; return every byte received.

    Reading stops when a complete HTTP/1.1 response has arrived (Content-Length, chunked, or no
    body for HEAD/1xx/204/304) or when the peer closes or resets the connection; a truncated or
    empty result is returned as-is, so fault tests can inspect it. Raises TimeoutError otherwise.
    """
    method = request_bytes.split(b" ", 1)[0].upper()
    buf = b""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request_bytes)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete response after {timeout} s; got {buf!r}")
            s.settimeout(remaining)
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                return buf
            except TimeoutError:
                raise TimeoutError(f"no complete response after {timeout} s; got {buf!r}") from None
            if not data:
                return buf
            buf += data
            try:
                if _response_end(buf, method) is not None:
                    return buf
            except (ValueError, IndexError):
                pass  # malformed framing: keep reading until the peer closes or the timeout


def split_response(raw: bytes, dechunk: bool = True) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of the final response in raw (interim 1xx responses are skipped).

    Headers keep their order, case and repeats. The body is everything after the header block,
    de-chunked when Transfer-Encoding is chunked and dechunk is true.
    """
    head = _final_head(raw)
    if head is None:
        raise ValueError(f"no complete response head in {raw[:200]!r}")
    status, headers, body_at = head
    te = _header(headers, "Transfer-Encoding")
    if dechunk and te is not None and "chunked" in te.lower():
        return status, headers, _dechunk(raw, body_at)
    return status, headers, raw[body_at:]
