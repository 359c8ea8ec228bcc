"""Flows for the cache tests, and the whole addon chain run the way the proxy runs it.

Flows carry real request and response bytes (the builders of tests/tracker/build.py), so what
the cache sees is what the decoder made of them. ``Chain`` loads Decode, Cache, Track and Log
into one taddons context and sends a flow through every addon's hooks in list order, setting the
upstream's answer only when no addon answered in the request hook, as mitmproxy does.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from mitmproxy import http
from mitmproxy.test import taddons, tflow

from repltap.mitm.cache import Cache
from repltap.mitm.decode import Decode
from repltap.mitm.log import Log
from repltap.mitm.track import Track
from tests.harness.hooks import run_hooks
from tests.tracker.build import manifest_request, manifest_response, sync_answer_body

INBOX = "/exchange/alice/Inbox/"
CAL = "/alice/cal/"
XML = {"Content-Type": "text/xml"}


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def search(
    sent: str | None,
    *,
    path: str = INBOX,
    host: str = "mail.example.com",
    port: int = 80,
    ack: tuple[str, ...] = (),
    rng: str | None = None,
    headers: dict[str, str] | None = None,
) -> http.HTTPFlow:
    """An Exchange manifest request (SEARCH with R:repl), not yet answered."""
    h, body = manifest_request(path, sent, ack, rng=rng)
    h.update(headers or {})
    req = http.Request.make("SEARCH", f"http://{host}:{port}{path}", body, h)
    return tflow.tflow(req=req)


def manifest_answer(
    received: str | None,
    entries: list[tuple[str, str | None, str | None, str | None]] = (),  # type: ignore[assignment]
    *,
    status: int = 207,
    headers: dict[str, str] | None = None,
) -> http.Response:
    """A 207 manifest: entries are (changetype, href, tag, uid)."""
    body = manifest_response(received, list(entries)) if status in (206, 207) else b"error\n"
    return http.Response.make(status, body, {**XML, **(headers or {})})


def report(
    sent: str | None,
    *,
    path: str = CAL,
    host: str = "cal.example.com",
    port: int = 80,
    limit: int | None = None,
) -> http.HTTPFlow:
    """An RFC 6578 sync-collection REPORT."""
    tok = "<D:sync-token/>" if sent is None else f"<D:sync-token>{escape(sent)}</D:sync-token>"
    lim = f"<D:limit><D:nresults>{limit}</D:nresults></D:limit>" if limit is not None else ""
    body = (
        f'<D:sync-collection xmlns:D="DAV:">{tok}<D:sync-level>1</D:sync-level>{lim}'
        "<D:prop><D:getetag/></D:prop></D:sync-collection>"
    ).encode()
    req = http.Request.make("REPORT", f"http://{host}:{port}{path}", body, {**XML, "Depth": "0"})
    return tflow.tflow(req=req)


def sync_answer(
    received: str | None,
    members: list[tuple[str, str | None]] = (),  # type: ignore[assignment]
    *,
    path: str = CAL,
    truncated: bool = False,
    invalid: int | None = None,
) -> http.Response:
    """A sync-collection answer; members are (href, etag), etag None for a removed one."""
    if invalid is not None:
        body = b'<D:error xmlns:D="DAV:"><D:valid-sync-token/></D:error>'
        return http.Response.make(invalid, body, XML)
    body = sync_answer_body(path, received, list(members), truncated=truncated)
    return http.Response.make(207, body, XML)


def write(
    method: str,
    path: str,
    *,
    host: str = "mail.example.com",
    port: int = 80,
    headers: dict[str, str] | None = None,
) -> http.HTTPFlow:
    """A write request (PUT, DELETE, MOVE, ...), not yet answered."""
    body = b"Subject: x\r\n\r\nbody\r\n" if method in ("PUT", "POST") else b""
    req = http.Request.make(method, f"http://{host}:{port}{path}", body, headers or {})
    return tflow.tflow(req=req)


class Chain:
    """Decode, Cache, Track and Log in one taddons context, in addons/repl.py's order."""

    def __init__(self, tmp: Path, **options: Any) -> None:
        self.tmp = tmp
        self.db = tmp / "cache.db"
        self.log_path = tmp / "events.jsonl"
        self.decode, self.cache, self.log = Decode(), Cache(), Log()
        self.track = Track(sinks=[self.log])
        self.options = {"repl_cache": str(self.db), **options}
        self.upstream_calls = 0

    def __enter__(self) -> Chain:
        self.ctx = taddons.context(self.decode, self.cache, self.track, self.log)
        self.tctx = self.ctx.__enter__()
        self.tctx.configure(self.log, repl_log=str(self.log_path))
        self.tctx.configure(self.cache, **self.options)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cache.done()
        self.log.done()
        self.ctx.__exit__(*exc)  # type: ignore[arg-type]

    async def run(self, f: http.HTTPFlow, upstream: http.Response | None) -> http.HTTPFlow:
        """The flow through every hook; ``upstream`` answers unless an addon did (None: the
        connection fails, and the flow ends in an error)."""
        self.upstream_calls += await run_hooks(self.tctx.master.addons, f, upstream)
        return f

    def call(self, name: str, *args: Any) -> Any:
        """A CacheStore method, on the cache's worker thread (its connection lives there)."""
        db = self.cache.db
        assert db is not None
        return db.run_sync(getattr(db.store, name), *args)

    def events(self, event: str = "cache") -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["event"] == event]

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events()]
