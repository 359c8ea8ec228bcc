"""The decoder addon: decodes each replication flow once and stores the summary.

Everything downstream (contentview, log, tracker, cache, faults, replay) reads
``flow.metadata["repl"]`` and never parses the body again. This addon never changes a byte of
the traffic: it only reads messages and writes ``flow.metadata`` and ``flow.comment``.

When the summary is written: a manifest's as soon as its request is read (its answer can take a
while, and the cache acts on it), every other flow's with its answer (or error). Writing the
request's summary first and the whole one again a few milliseconds later was about a sixth of
repltap's own work on a plain GET. An addon that needs a summary before the answer asks
:meth:`Decode.summary_now`, which writes the request's summary then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from mitmproxy import ctx, exceptions, flowfilter, http

from .. import protocol
from ..protocol.headers import HeaderView
from ..protocol.model import Request, Response
from ..protocol.xml import DEFAULT_MAX_BYTES
from ..summary import SUMMARY_KEYS, is_relevant, summarise
from .suite import may_wait

logger = logging.getLogger(__name__)

META_KEY = "repl"
# Requests decoded but not yet answered, by flow id. Kept here, not in flow.metadata, because
# metadata must stay serialisable for flow files and mitmweb. Bounded against flows that never end.
_MAX_PENDING = 10_000
# Answers larger than this are decoded on a worker thread, so that the proxy's event loop is
# not held for more than about 0.1 s (a 10,000-entry manifest, 5.9 MB, takes 62 ms to decode).
# Smaller ones are decoded on the proxy's thread: half of decoding is Python, which holds the GIL,
# so the worker and the event loop take turns at it and both pay for the hand-overs. With a
# threshold of 128 KiB, the stress workload of `python -m bench` (a 1,000-entry manifest every
# twenty requests) ran at 0.53x bare mitmdump's throughput and 3.0 ms of CPU a request, against
# 0.63x and 2.5 ms with every answer decoded on the proxy's thread (seven alternating rounds).
THREAD_ABOVE = 8 * 1024 * 1024


def upstream_of(flow: http.HTTPFlow) -> str:
    """The upstream as ``host:port``: never the Host header, which clients may point at us."""
    return f"{flow.request.host}:{flow.request.port}"


def raw_values(headers: http.Headers, name: bytes) -> list[bytes]:
    """The raw values of header ``name`` (lower case). For a header or two on every flow, this
    walk of the fields is several times faster than the Headers mapping, which converts each
    field it passes."""
    return [v for k, v in headers.fields if k.lower() == name]


def _body(message: http.Message) -> tuple[bytes | None, str | None]:
    """The decoded body, or None and the reason it is not available."""
    raw = message.raw_content
    if raw is None:
        return None, "the body was streamed and not stored"
    if not raw_values(message.headers, b"content-encoding"):
        return raw, None  # most bodies: taken as they are
    try:
        return message.get_content(strict=True), None
    except ValueError as e:
        return None, f"the Content-Encoding cannot be decoded: {e}"


def answered(flow: http.HTTPFlow) -> bool:
    """A flow read back from a file with a complete answer and an error too (killed after its
    answer, as a fault does): live only its response hook ran, so offline the error hook must
    add nothing, or a recording would tell another story than the live run."""
    return (
        not flow.live
        and flow.error is not None
        and flow.response is not None
        and flow.response.timestamp_end is not None
    )


def decode_request_of(flow: http.HTTPFlow, max_bytes: int) -> Request:
    """The meaning of a flow's request (live and offline alike)."""
    body, why = _body(flow.request)
    req = protocol.decode_request(
        flow.request.method, flow.request.path, flow.request.headers, body, max_bytes=max_bytes
    )
    if why is not None and flow.request.method in ("SEARCH", "PROPFIND"):
        req.notes.append(f"request body not decoded: {why}")
    return req


def decode_response_of(
    flow: http.HTTPFlow, req: Request, max_bytes: int, hints: protocol.Hints
) -> Response:
    """The meaning of a flow's answer to ``req``, learning what its upstream speaks."""
    call = _ResponseCall(flow, req, max_bytes, hints)
    return call.finish(call.run())


def summary_now(flow: http.HTTPFlow) -> dict[str, Any] | None:
    """The flow's summary as it stands, for an addon that needs it before the answer: the
    loaded Decode writes a plain request's now (:meth:`Decode.summary_now`). Without Decode
    (an addon tested alone), what the flow carries."""
    try:
        decode = ctx.master.addons.get("decode")
    except AttributeError:  # no master: a bare unit test
        decode = None
    if decode is not None:
        found: dict[str, Any] | None = decode.summary_now(flow)
        return found
    s = flow.metadata.get(META_KEY)
    return s if isinstance(s, dict) and "request" in s else None


class _ResponseCall:
    """:func:`decode_response_of` in three steps, so that the middle one, which touches neither
    the flow nor shared state, can run on a worker thread."""

    def __init__(
        self, flow: http.HTTPFlow, req: Request, max_bytes: int, hints: protocol.Hints
    ) -> None:
        assert flow.response is not None
        # The body is read here, on the caller's thread: mitmproxy's decoded-content cache is
        # not safe to share between threads.
        self.body, self.why = _body(flow.response)
        self.upstream = upstream_of(flow)
        self.status = flow.response.status_code
        self.headers = HeaderView.of(flow.response.headers)  # a snapshot, read on any thread
        self.req, self.max_bytes, self.hints = req, max_bytes, hints
        self.hint = hints.get(self.upstream)

    def run(self) -> Response:
        return protocol.decode_response(
            self.req, self.status, self.headers, self.body, max_bytes=self.max_bytes, hint=self.hint
        )

    def finish(self, resp: Response) -> Response:
        self.hints.learn(self.upstream, self.req, resp)
        if self.why is not None and self.req.manifest:
            resp.notes.append(f"response body not decoded: {self.why}")
        return resp


def decode_flow(
    flow: http.HTTPFlow,
    max_bytes: int = DEFAULT_MAX_BYTES,
    hints: protocol.Hints | None = None,
) -> dict[str, Any] | None:
    """Decode a finished flow on its own (offline use); the summary, or None if not relevant.

    Pass the same ``hints`` for every flow of a session, in order, as the live decoder keeps.
    """
    req = decode_request_of(flow, max_bytes)
    resp = None
    if flow.response is not None:
        resp = decode_response_of(flow, req, max_bytes, hints or protocol.Hints())
    if not is_relevant(req, resp):
        return None
    error = flow.error.msg if flow.error and not answered(flow) else None
    return summarise(req, resp, upstream=upstream_of(flow), error=error)


class Decode:
    """Decode replication requests and responses into ``flow.metadata["repl"]``."""

    def __init__(self) -> None:
        self.filter: flowfilter.TFilter | None = None
        self.pending: dict[str, Request] = {}
        self.hints = protocol.Hints()
        self.decoded = 0
        self.pool: ThreadPoolExecutor | None = None  # one worker: one large body at a time
        # repl_max_body, kept here by configure(): ctx.options deep-copies a value on each read.
        self.max_bytes = DEFAULT_MAX_BYTES

    def load(self, loader: Any) -> None:
        loader.add_option(
            "repl_filter",
            Optional[str],  # noqa: UP045 - mitmproxy's option type check needs typing.Optional
            None,
            "Decode only flows matching this mitmproxy filter expression (default: all flows).",
        )
        loader.add_option(
            "repl_max_body",
            int,
            DEFAULT_MAX_BYTES,
            "Largest body, in bytes, that repltap decodes; larger ones pass untouched and the "
            "flow is marked as not decoded.",
        )

    def configure(self, updated: set[str]) -> None:
        if "repl_filter" in updated:
            spec = ctx.options.repl_filter
            if spec:
                try:
                    self.filter = flowfilter.parse(spec)
                except ValueError as e:
                    raise exceptions.OptionsError(f"repl_filter: {e}") from e
            else:
                self.filter = None
        if "repl_max_body" in updated:
            if ctx.options.repl_max_body <= 0:
                raise exceptions.OptionsError(
                    "repl_max_body must be a positive number of bytes, "
                    f"not {ctx.options.repl_max_body}"
                )
            self.max_bytes = ctx.options.repl_max_body

    def _wanted(self, flow: http.HTTPFlow) -> bool:
        return self.filter is None or bool(self.filter(flow))

    def request(self, flow: http.HTTPFlow) -> None:
        if not self._wanted(flow):
            return
        req = decode_request_of(flow, self.max_bytes)
        if len(self.pending) >= _MAX_PENDING:
            self.pending.pop(next(iter(self.pending)))
        self.pending[flow.id] = req
        if req.manifest:
            self._store(flow, req, None)

    def summary_now(self, flow: http.HTTPFlow) -> dict[str, Any] | None:
        """The flow's summary as it stands; before the answer, the request's, written now if it
        was put off (see the module's docstring). None if the flow is not replication traffic."""
        s = flow.metadata.get(META_KEY)
        if isinstance(s, dict) and "request" in s:
            return s
        req = self.pending.get(flow.id)
        if req is None or not is_relevant(req, None):
            return None
        self._store(flow, req, None)
        stored: dict[str, Any] = flow.metadata[META_KEY]
        return stored

    @may_wait
    def response(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        req = self._request_of(flow)
        if req is None or flow.response is None:
            return None
        call = _ResponseCall(flow, req, self.max_bytes, self.hints)
        if call.body is None or len(call.body) <= THREAD_ABOVE:  # decoded: gzip counts unzipped
            self._finish(flow, req, call.finish(call.run()))  # no coroutine for most flows
            return None
        # A very large answer is decoded on the worker thread, so that the proxy goes on with
        # other flows meanwhile (lxml parses without the GIL; the rest takes turns with the
        # event loop). This flow's later addons (tracking, the log) wait for it, as mitmproxy
        # runs one flow's hooks in order.
        return self._answer_on_thread(flow, req, call)

    async def _answer_on_thread(
        self, flow: http.HTTPFlow, req: Request, call: _ResponseCall
    ) -> None:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="repltap-decode")
        resp = await asyncio.get_running_loop().run_in_executor(self.pool, call.run)
        self._finish(flow, req, call.finish(resp))

    def _answer(self, flow: http.HTTPFlow, req: Request) -> None:
        resp = decode_response_of(flow, req, self.max_bytes, self.hints)
        self._finish(flow, req, resp)

    def _finish(self, flow: http.HTTPFlow, req: Request, resp: Response) -> None:
        if is_relevant(req, resp):
            self._store(flow, req, resp)

    def done(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def error(self, flow: http.HTTPFlow) -> None:
        if answered(flow):
            return
        req = self._request_of(flow)
        if req is None or not is_relevant(req, None):
            return
        msg = flow.error.msg if flow.error else "unknown error"
        self._store(flow, req, None, error=msg)

    def request_of(self, flow: http.HTTPFlow) -> Request | None:
        """The decoded request of a flow still in flight (before its answer), if any."""
        return self.pending.get(flow.id)

    def refresh(self, flow: http.HTTPFlow) -> None:
        """Decode a flow again after another addon changed its response (a fault, a cached
        answer), so that what is summarised is what the client receives."""
        self.pending.pop(flow.id, None)
        if flow.response is not None:
            req = self._request_of(flow)
            if req is not None:
                self._answer(flow, req)
        elif flow.error is not None:
            self.error(flow)

    def _request_of(self, flow: http.HTTPFlow) -> Request | None:
        """The decoded request of a finished flow, decoding it now if its hook was not seen."""
        req = self.pending.pop(flow.id, None)
        if req is None and self._wanted(flow):
            self.request(flow)
            req = self.pending.pop(flow.id, None)
        return req

    def _store(
        self, flow: http.HTTPFlow, req: Request, resp: Any, error: str | None = None
    ) -> None:
        previous = flow.metadata.get(META_KEY)
        summary = summarise(req, resp, upstream=upstream_of(flow), error=error)
        if isinstance(previous, dict):
            # What other addons attached (cache, fault, replay, their events) outlives a re-read;
            # what the decoder itself says is said anew.
            for key, value in previous.items():
                if key not in SUMMARY_KEYS:
                    summary.setdefault(key, value)
        flow.metadata[META_KEY] = summary
        self.decoded += resp is not None
        _set_comment(flow, summary["summary"], previous)


def _set_comment(flow: http.HTTPFlow, line: str, previous: Any) -> None:
    """Show the summary as the flow's comment without clobbering a comment a user wrote."""
    old = previous.get("summary") if isinstance(previous, dict) else None
    comment = flow.comment or ""
    if not comment or comment == old:
        flow.comment = line
    elif old and old in comment:
        flow.comment = comment.replace(old, line)
    elif line not in comment:
        flow.comment = f"{comment}\n{line}"
