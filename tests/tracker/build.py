"""Build flow summaries for tracker tests the way the proxy does: real XML and headers through
the real decoder (repltap.protocol) and summary.summarise, no hand-made dicts."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

from repltap import protocol
from repltap.protocol import exchange
from repltap.summary import summarise

REPL = "http://schemas.microsoft.com/repl/"
UPSTREAM = "mail.example.com:80"
SQL = (
    'SELECT "DAV:href", "http://schemas.microsoft.com/repl/resourcetag" '
    "FROM SCOPE('SHALLOW TRAVERSAL OF \"{path}\"')"
)


def manifest_request(
    path: str, sent: str | None, ack: tuple[str, ...] = (), ns: str = REPL, rng: str | None = None
) -> tuple[dict[str, str], bytes]:
    blob = "<R:collblob/>" if sent is None else f"<R:collblob>{escape(sent)}</R:collblob>"
    taglist = ""
    if ack:
        taglist = (
            "<R:resourcetaglist>"
            + "".join(f"<R:resourcetag>{t}</R:resourcetag>" for t in ack)
            + "</R:resourcetaglist>"
        )
    body = (
        f'<D:searchrequest xmlns:D="DAV:" xmlns:R="{ns}"><R:repl>{blob}{taglist}</R:repl>'
        f"<D:sql>{escape(SQL.format(path=path))}</D:sql></D:searchrequest>"
    )
    headers = {"Content-Type": "text/xml"}
    if rng:
        headers["Range"] = rng
    return headers, body.encode()


def manifest_response(
    received: str | None,
    entries: list[tuple[str, str | None, str | None, str | None]],
    ns: str = REPL,
) -> bytes:
    """entries: (changetype, href, tag, uid)."""
    repl = (
        "<R:repl/>" if received is None else f"<R:repl><R:collblob>{received}</R:collblob></R:repl>"
    )
    parts = [f'<D:multistatus xmlns:D="DAV:" xmlns:R="{ns}">{repl}']
    for kind, href, tag, uid in entries:
        props = (f"<R:resourcetag>{tag}</R:resourcetag>" if tag else "") + (
            f"<R:repl-uid>{uid}</R:repl-uid>" if uid else ""
        )
        h = f"<D:href>http://mail.example.com{href}</D:href>" if href else ""
        parts.append(
            f"<D:response>{h}<D:propstat><D:status>HTTP/1.1 200 OK</D:status>"
            f"<D:prop>{props}</D:prop></D:propstat><R:changetype>{kind}</R:changetype></D:response>"
        )
    parts.append("</D:multistatus>")
    return "".join(parts).encode()


def manifest(
    path: str,
    sent: str | None,
    received: str | None,
    entries: list[tuple[str, str | None, str | None, str | None]] = (),  # type: ignore[assignment]
    *,
    status: int = 207,
    ack: tuple[str, ...] = (),
    ns: str = REPL,
    rng: str | None = None,
    content_range: str | None = None,
) -> dict[str, Any]:
    """The summary of one manifest flow."""
    h, body = manifest_request(path, sent, ack, ns, rng)
    req = exchange.decode_request("SEARCH", path, h, body)
    rh = {"Content-Type": "text/xml"}
    if content_range:
        rh["Content-Range"] = content_range
    rbody = manifest_response(received, list(entries), ns) if status in (206, 207) else b""
    resp = exchange.decode_response(req, status, rh, rbody)
    return summarise(req, resp, upstream=UPSTREAM)


def write(
    method: str,
    path: str,
    status: int,
    *,
    if_: str | None = None,
    tag: str | None = None,
    uid: str | None = None,
    destination: str | None = None,
) -> dict[str, Any]:
    """The summary of a write (or GET) flow."""
    h: dict[str, str] = {}
    if if_:
        h["If"] = if_
    if destination:
        h["Destination"] = destination
    req = exchange.decode_request(method, path, h, b"body" if method in ("PUT", "POST") else b"")
    rh: dict[str, str] = {}
    if tag:
        rh["ResourceTag"] = f"<{tag}>"
    if uid:
        rh["Repl-UID"] = f"<{uid}>"
    resp = exchange.decode_response(req, status, rh, b"")
    return summarise(req, resp, upstream=UPSTREAM)


def sync_answer_body(
    path: str,
    received: str | None,
    members: list[tuple[str, str | None]],
    *,
    truncated: bool = False,
) -> bytes:
    """A sync-collection 207 body; members: (href, etag or None for a removed member)."""
    parts = ['<D:multistatus xmlns:D="DAV:">']
    if truncated:
        parts.append(
            f"<D:response><D:href>{path}</D:href><D:status>HTTP/1.1 507 Insufficient Storage"
            "</D:status></D:response>"
        )
    for href, etag in members:
        if etag is None:
            parts.append(
                f"<D:response><D:href>{href}</D:href><D:status>HTTP/1.1 404 Not Found</D:status>"
                "</D:response>"
            )
        else:
            parts.append(
                f"<D:response><D:href>{href}</D:href><D:propstat><D:prop><D:getetag>"
                f"{escape(etag)}</D:getetag></D:prop><D:status>HTTP/1.1 200 OK</D:status>"
                "</D:propstat></D:response>"
            )
    if received is not None:
        parts.append(f"<D:sync-token>{escape(received)}</D:sync-token>")
    parts.append("</D:multistatus>")
    return "".join(parts).encode()


def sync(
    path: str,
    sent: str | None,
    received: str | None,
    members: list[tuple[str, str | None]] = (),  # type: ignore[assignment]
    *,
    status: int = 207,
    limit: int | None = None,
    depth: str = "0",
    truncated: bool = False,
    error_status: int | None = None,
) -> dict[str, Any]:
    """The summary of one RFC 6578 sync-collection flow; members: (href, etag or None=removed)."""
    tok = "<D:sync-token/>" if sent is None else f"<D:sync-token>{escape(sent)}</D:sync-token>"
    lim = f"<D:limit><D:nresults>{limit}</D:nresults></D:limit>" if limit is not None else ""
    body = (
        f'<D:sync-collection xmlns:D="DAV:">{tok}<D:sync-level>1</D:sync-level>{lim}'
        "<D:prop><D:getetag/></D:prop></D:sync-collection>"
    ).encode()
    req = protocol.decode_request("REPORT", path, {"Depth": depth}, body)
    if error_status is not None:
        rbody = b'<D:error xmlns:D="DAV:"><D:valid-sync-token/></D:error>'
        resp = protocol.decode_response(req, error_status, {}, rbody)
        return summarise(req, resp, upstream=UPSTREAM)
    body = sync_answer_body(path, received, members, truncated=truncated)
    resp = protocol.decode_response(req, status, {}, body)
    return summarise(req, resp, upstream=UPSTREAM)


def dav_write(
    method: str, path: str, status: int, *, if_match: str | None = None, etag: str | None = None
) -> dict[str, Any]:
    """A plain WebDAV write as CalDAV clients send it (If-Match, ETag)."""
    h = {"If-Match": if_match} if if_match else {}
    req = protocol.decode_request(method, path, h, b"BEGIN:VCALENDAR" if method == "PUT" else b"")
    resp = protocol.decode_response(req, status, {"ETag": etag} if etag else {}, b"")
    return summarise(req, resp, upstream=UPSTREAM)
