"""The protocol core: bytes and headers in, typed messages out (sans-IO, no mitmproxy).

Modules: ``xml`` (the one safe parser), ``headers`` (If, Range rows, Content-Range, ResourceTag),
``model`` (the typed results), ``exchange`` (Exchange WebDAV replication), ``rfc6578``
(sync-collection). ``decode_request``/``decode_response`` here pick the protocol per message.
"""

from __future__ import annotations

from . import exchange, rfc6578
from .exchange import status_meaning
from .headers import HeaderView
from .model import Condition, Entry, Request, Response, Scope, normalise_path, short_token
from .xml import DEFAULT_MAX_BYTES, Undecodable

__all__ = [
    "Condition",
    "Entry",
    "Hints",
    "Request",
    "Response",
    "Scope",
    "Undecodable",
    "decode_request",
    "decode_response",
    "normalise_path",
    "short_token",
    "status_meaning",
]

_REPL_MARK = b"schemas.microsoft.com/repl"


def decode_request(
    method: str,
    target: str,
    headers: object,
    body: bytes | None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Request:
    """Decode a request: REPORT as RFC 6578, everything else as Exchange/WebDAV for now.

    A write's protocol is settled by its answer (see :func:`decode_response`).
    """
    if method.upper() == "REPORT":
        return rfc6578.decode_request(method, target, headers, body, max_bytes=max_bytes)
    return exchange.decode_request(method, target, headers, body, max_bytes=max_bytes)


class Hints:
    """What each upstream has shown it speaks, so that its plain WebDAV traffic (a DELETE with
    no condition, a PROPPATCH) is read in the same protocol. Fed in flow order, live and
    offline alike."""

    def __init__(self) -> None:
        self.by_upstream: dict[str, str] = {}

    def get(self, upstream: str | None) -> str | None:
        """The protocol ``upstream`` speaks, if it has shown it."""
        return self.by_upstream.get(upstream or "")

    def learn(self, upstream: str | None, req: Request, resp: Response | None) -> None:
        """Remember what a decoded flow shows of its upstream."""
        if upstream is None:
            return
        if req.manifest:
            self.by_upstream[upstream] = req.protocol
        elif resp is not None and req.protocol == "exchange" and (resp.tag or resp.uid):
            self.by_upstream[upstream] = "exchange"


def decode_response(
    req: Request,
    status: int,
    headers: object,
    body: bytes | None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    hint: str | None = None,
) -> Response:
    """Decode the answer to ``req``; may settle ``req.protocol`` to ``rfc6578``.

    A non-manifest request with no rt:/rid: condition, answered without ResourceTag/Repl-UID
    and without the repl namespace, is plain WebDAV as CalDAV/CardDAV servers speak it when its
    upstream is known to (``hint``), or when the answer carries an ETag (or is a PROPFIND
    multistatus) or the condition names a real ETag: its ETag is what RFC 6578 clients follow.
    """
    h = HeaderView.of(headers)  # once: both decoders take the view as it is
    if req.protocol == "rfc6578":
        return rfc6578.decode_response(req, status, h, body, max_bytes=max_bytes)
    if not req.manifest and _plain_dav(req, h, body, hint):
        req.protocol = "rfc6578"
        return rfc6578.decode_response(req, status, h, body, max_bytes=max_bytes)
    return exchange.decode_response(req, status, h, body, max_bytes=max_bytes)


def _plain_dav(req: Request, h: HeaderView, body: bytes | None, hint: str | None) -> bool:
    if req.condition.tags or req.condition.uids or req.condition.not_tags:
        return False
    if h.get("resourcetag") is not None or h.get("repl-uid") is not None:
        return False
    if body and _REPL_MARK in body:
        return False
    if hint == "rfc6578":
        return True
    if req.method in ("GET", "HEAD", "SEARCH", "POST"):
        return False  # every web server sends ETags on GET: not evidence of a sync client
    if req.condition.if_match not in (None, "*") or req.condition.if_schedule_tag_match:
        return True  # a real ETag in the condition: the client follows ETags
    return h.get("etag") is not None or (req.method == "PROPFIND" and bool(body))
