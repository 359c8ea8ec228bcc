"""Flows and a hook driver for the fault injector's addon tests: the real addons (Decode,
Faults, Track, Log) inside mitmproxy's taddons, each flow taken through the hooks in the order
mitmproxy calls them, with a stand-in upstream that records whether it was asked."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.test import taddons, tflow

from repltap.mitm.decode import Decode
from repltap.mitm.faults import Faults
from repltap.mitm.log import Log
from repltap.mitm.track import Track
from tests.tracker.build import manifest_request, manifest_response

INBOX = "/exchange/alice/Inbox/"
CAL = "/alice/cal/"
HOOKS = ("requestheaders", "request", "responseheaders", "response", "error")

Entry = tuple[str, str | None, str | None, str | None]


def entries(n: int, kind: str = "new", first: int = 1) -> list[Entry]:
    return [(kind, f"{INBOX}m{i}.EML", f"rt:{i}", f"rid:{i}") for i in range(first, first + n)]


def manifest(
    sent: str | None, received: str | None = None, rows: list[Entry] | None = None
) -> tuple[http.HTTPFlow, http.Response]:
    """(flow, the server's answer) for an Exchange manifest."""
    h, body = manifest_request(INBOX, sent)
    f = tflow.tflow(req=http.Request.make("SEARCH", f"http://mail.example.com{INBOX}", body, h))
    answer = http.Response.make(
        207, manifest_response(received, list(rows or [])), {"Content-Type": "text/xml"}
    )
    return f, answer


def put(
    if_: str | None, status: int = 204, name: str = "m1.EML", tag: str = "rt:9"
) -> tuple[http.HTTPFlow, http.Response]:
    h = {"If": if_} if if_ else {}
    f = tflow.tflow(
        req=http.Request.make("PUT", f"http://mail.example.com{INBOX}{name}", b"body", h)
    )
    headers = {"ResourceTag": f"<{tag}>", "Repl-UID": "<rid:1>"} if status < 300 else {}
    return f, http.Response.make(status, b"", headers)


def get(name: str = "m1.EML", body: bytes = b"x" * 100) -> tuple[http.HTTPFlow, http.Response]:
    f = tflow.tflow(req=http.Request.make("GET", f"http://mail.example.com{INBOX}{name}"))
    return f, http.Response.make(200, body, {"ResourceTag": "<rt:1>", "ETag": '"e1"'})


def sync_report(
    sent: str | None, received: str, members: list[tuple[str, str | None]]
) -> tuple[http.HTTPFlow, http.Response]:
    """(flow, answer) of an RFC 6578 sync-collection; members: (href, etag or None = removed)."""
    tok = f"<D:sync-token>{sent}</D:sync-token>" if sent else "<D:sync-token/>"
    body = (
        f'<D:sync-collection xmlns:D="DAV:">{tok}<D:sync-level>1</D:sync-level>'
        "<D:prop><D:getetag/></D:prop></D:sync-collection>"
    ).encode()
    f = tflow.tflow(
        req=http.Request.make(
            "REPORT", f"http://cal.example.com{CAL}", body, {"Content-Type": "text/xml"}
        )
    )
    parts = [
        f'<?xml version="1.0"?>\n<multistatus xmlns="DAV:"><sync-token>{received}</sync-token>'
    ]
    for href, etag in members:
        if etag is None:
            parts.append(
                f"<response><href>{href}</href><status>HTTP/1.1 404 Not Found</status></response>"
            )
        else:
            parts.append(
                f"<response><href>{href}</href><propstat><prop><getetag>{etag}</getetag></prop>"
                "<status>HTTP/1.1 200 OK</status></propstat></response>"
            )
    parts.append("</multistatus>")
    answer = http.Response.make(207, "".join(parts).encode(), {"Content-Type": "text/xml"})
    answer.headers["Server"] = "WSGIServer/0.2"
    return f, answer


@dataclass
class Result:
    """What happened to one flow."""

    asked_server: bool = False
    client_got: bytes | None = None  # body bytes the client received (None: nothing at all)
    killed: bool = False


@dataclass
class Lab:
    """The addons in a taddons context, and the event log they write."""

    decode: Decode
    faults: Faults
    track: Track
    log: Log
    tctx: Any
    path: Path
    results: dict[str, Result] = field(default_factory=dict)

    @property
    def addons(self) -> list[Any]:
        return [self.decode, self.faults, self.track, self.log]

    def events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def faults_of(self, flow: http.HTTPFlow) -> list[dict[str, Any]]:
        return list(flow.metadata.get("repl", {}).get("fault", []))

    async def _hook(self, name: str, flow: http.HTTPFlow) -> None:
        for a in self.addons:
            fn = getattr(a, name, None)
            if fn is not None:
                r = fn(flow)
                if asyncio.iscoroutine(r):
                    await r

    async def run(self, flow: http.HTTPFlow, answer: http.Response | None) -> Result:
        """Take a flow through the hooks as mitmproxy's HTTP layer does."""
        res = self.results[flow.id] = Result()
        await self._hook("requestheaders", flow)
        await self._hook("request", flow)
        if flow.error:
            await self._hook("error", flow)
            res.killed = True
            return res
        synthetic = flow.response is not None
        body = b""
        if not synthetic:
            assert answer is not None
            res.asked_server = True
            body = answer.raw_content or b""
            answer.timestamp_start = answer.timestamp_end = flow.request.timestamp_start + 0.01
            flow.response = answer
            flow.response.data.content = None  # headers only, the body is still to come
        await self._hook("responseheaders", flow)
        if flow.error:
            await self._hook("error", flow)
            res.killed = True
            return res
        assert flow.response is not None
        streamed = b""
        if not synthetic and callable(flow.response.stream):
            for i in range(0, len(body), 7):  # several chunks, as a network delivers them
                streamed += _as_bytes(flow.response.stream(body[i : i + 7]))
            streamed += _as_bytes(flow.response.stream(b""))
            flow.response.data.content = None
        elif not synthetic:
            flow.response.data.content = body
        await self._hook("response", flow)
        if flow.error:  # killed in the response hook: nothing more goes out
            res.killed = True
            res.client_got = streamed if streamed else None
            return res
        res.client_got = streamed if callable(flow.response.stream) else flow.response.raw_content
        return res


def _as_bytes(chunks: Any) -> bytes:
    return chunks if isinstance(chunks, bytes) else b"".join(chunks)


@contextlib.contextmanager
def lab(tmp_path: Path, scenario: str | None) -> Iterator[Lab]:
    decode, faults, log = Decode(), Faults(), Log()
    track = Track(sinks=[log])
    events = tmp_path / "events.jsonl"
    with taddons.context(decode, faults, track, log) as tctx:
        tctx.configure(log, repl_log=str(events))
        if scenario is not None:
            path = tmp_path / "scenario.yaml"
            path.write_text(scenario)
            tctx.configure(faults, repl_faults=str(path))
        yield Lab(decode, faults, track, log, tctx, events)
        log.done()
