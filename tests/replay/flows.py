"""Flows for the record and replay tests, and the addon chain run the way the proxy runs it.

Requests and answers are real bytes (tests/tracker/build.py's builders), so what the replayer
matches is what the decoder made of them. ``Chain`` loads Decode, Replay, Track, Log and Record
in addons/repl.py's order into one taddons context and sends a flow through every addon's hooks,
setting the upstream's answer only when no addon answered in the request hook, as mitmproxy does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from mitmproxy import http, io
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from repltap.mitm.decode import Decode
from repltap.mitm.log import Log
from repltap.mitm.record import Record
from repltap.mitm.replay import Replay
from repltap.mitm.track import Track
from repltap.offline import read_flows
from tests.harness.hooks import run_hooks
from tests.tracker.build import SQL, manifest_response, sync_answer_body

INBOX = "/exchange/alice/Inbox/"
CAL = "/alice/cal/"
XML = {"Content-Type": "text/xml"}
REPL = "http://schemas.microsoft.com/repl/"


def search_body(
    sent: str | None, ack: tuple[str, ...] = (), *, path: str = INBOX, style: str = "plain"
) -> bytes:
    """A manifest request body; ``style`` ``other`` writes the same meaning with other bytes:
    other prefixes, a default namespace, whitespace and an XML declaration."""
    sql = escape(SQL.format(path=path))
    if style == "plain":
        blob = "<R:collblob/>" if sent is None else f"<R:collblob>{escape(sent)}</R:collblob>"
        tags = "".join(f"<R:resourcetag>{t}</R:resourcetag>" for t in ack)
        taglist = f"<R:resourcetaglist>{tags}</R:resourcetaglist>" if ack else ""
        return (
            f'<D:searchrequest xmlns:D="DAV:" xmlns:R="{REPL}"><R:repl>{blob}{taglist}</R:repl>'
            f"<D:sql>{sql}</D:sql></D:searchrequest>"
        ).encode()
    blob = (
        "<x:collblob>  </x:collblob>"
        if sent is None
        else f"<x:collblob>{escape(sent)}</x:collblob>"
    )
    tags = "".join(f"\n      <x:resourcetag>{t}</x:resourcetag>" for t in reversed(ack))
    taglist = f"\n    <x:resourcetaglist>{tags}\n    </x:resourcetaglist>" if ack else ""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<searchrequest xmlns="DAV:" xmlns:x="{REPL}">\n'
        f"  <x:repl>\n    {blob}{taglist}\n  </x:repl>\n"
        f"  <sql>{sql}</sql>\n</searchrequest>\n"
    ).encode()


def search(
    sent: str | None,
    ack: tuple[str, ...] = (),
    *,
    path: str = INBOX,
    rng: str | None = None,
    style: str = "plain",
    host: str = "mail.example.com",
    headers: dict[str, str] | None = None,
) -> http.HTTPFlow:
    """An Exchange manifest request (SEARCH with R:repl), not yet answered."""
    h = {**XML, **(headers or {})}
    if rng:
        h["Range"] = rng
    body = search_body(sent, ack, path=path, style=style)
    return tflow.tflow(req=http.Request.make("SEARCH", f"http://{host}:80{path}", body, h))


def answer(
    received: str | None, entries: list[tuple[str, str | None, str | None, str | None]] = ()
) -> http.Response:  # type: ignore[assignment]
    """A 207 manifest: entries are (changetype, href, tag, uid)."""
    return http.Response.make(207, manifest_response(received, list(entries)), XML)


def request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    host: str = "mail.example.com",
) -> http.HTTPFlow:
    """Any other request, not yet answered."""
    return tflow.tflow(
        req=http.Request.make(method, f"http://{host}:80{path}", body, headers or {})
    )


def report(sent: str | None, *, path: str = CAL, limit: int | None = None) -> http.HTTPFlow:
    """An RFC 6578 sync-collection REPORT."""
    tok = "<D:sync-token/>" if sent is None else f"<D:sync-token>{escape(sent)}</D:sync-token>"
    lim = f"<D:limit><D:nresults>{limit}</D:nresults></D:limit>" if limit is not None else ""
    body = (
        f'<D:sync-collection xmlns:D="DAV:">{tok}<D:sync-level>1</D:sync-level>{lim}'
        "<D:prop><D:getetag/></D:prop></D:sync-collection>"
    ).encode()
    return request("REPORT", path, body, {**XML, "Depth": "0"}, host="cal.example.com")


def sync_answer(received: str, members: list[tuple[str, str]] = ()) -> http.Response:  # type: ignore[assignment]
    """A sync-collection answer; members are (href, etag)."""
    return http.Response.make(207, sync_answer_body(CAL, received, list(members)), XML)


def item(body: bytes, tag: str) -> http.Response:
    """A GET answer with its ResourceTag."""
    return http.Response.make(200, body, {"Content-Type": "message/rfc822", "ResourceTag": tag})


class Chain:
    """Decode, Replay, Track, Log and Record in one taddons context, in addons/repl.py's order."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.log_path = tmp / "events.jsonl"
        self.decode, self.replay, self.log, self.record = Decode(), Replay(), Log(), Record()
        self.track = Track(sinks=[self.log])
        self.upstream_calls = 0

    def __enter__(self) -> Chain:
        # Proxyserver only for its options (mode, connection_strategy): it is never started.
        self.ctx = taddons.context(
            Proxyserver(), self.decode, self.replay, self.track, self.log, self.record
        )
        self.tctx = self.ctx.__enter__()
        self.tctx.configure(self.log, repl_log=str(self.log_path))
        return self

    def __exit__(self, *exc: object) -> None:
        self.record.done()
        self.replay.done()
        self.log.done()
        self.ctx.__exit__(*exc)  # type: ignore[arg-type]

    def configure(self, **options: Any) -> None:
        self.tctx.options.update(**options)

    async def run(self, f: http.HTTPFlow, upstream: http.Response | None = None) -> http.HTTPFlow:
        """The flow through every hook; ``upstream`` answers unless an addon did (None: the
        connection fails, and the flow ends in an error)."""
        self.upstream_calls += await run_hooks(self.tctx.master.addons, f, upstream)
        return f

    def events(self, event: str = "replay") -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["event"] == event]


def write_flows(path: Path, flows: list[http.HTTPFlow]) -> Path:
    """A flow file, as ``-w`` writes it."""
    with path.open("wb") as fo:
        w = io.FlowWriter(fo)
        for f in flows:
            w.add(f)
    return path


def read(path: Path) -> list[http.HTTPFlow]:
    return read_flows(path)
