"""RFC 6578 collection synchronization (sync-collection), as CalDAV/CardDAV servers speak it.

What may live here: turning a ``REPORT`` with ``D:sync-collection`` and its 207 answer, the
``valid-sync-token`` precondition error, and the ETag/If-Match of plain WebDAV writes, into the
same :class:`~repltap.protocol.model.Request`/``Response`` shapes as Exchange replication (the
sync-token plays the collblob, the ETag the resourcetag, the href the repl-uid). What may not:
I/O, mitmproxy, memory of earlier messages.

Readings, after ../shared/spec/rfc6578-peers.md ("shapes a parser must not depend on"):
- element order is free (``sync-token`` before or after the members, ``sync-level`` first);
  prefixes are free; an empty ``D:sync-token`` means an initial sync;
- a member with a 200 propstat is a change (RFC 6578 does not tell new from changed), its
  ETag comes from the 200 propstat only (Xandikos puts unknown props in a 404 propstat);
- a member whose response-level status is 404 is removed (``type`` "delete", ``status`` 404);
- a response for the request-URI with status 507 marks a truncated answer; it is not a member;
- the ``valid-sync-token`` precondition marks an invalid token whatever the status (403 from
  Radicale, 412 from Xandikos, anything else from others);
- tokens are opaque: URI-shaped, bare hex or ``data:,N``, and they may repeat.
"""

from __future__ import annotations

from lxml import etree

from . import xml as safexml
from .exchange import status_meaning
from .headers import OWS, HeaderView
from .model import Entry, Request, Response, normalise_path
from .webdav import parse_status_line, read_condition, read_token

DAV = "{DAV:}"
CS_GETCTAG = "{http://calendarserver.org/ns/}getctag"


def _local(el: etree._Element) -> str:
    tag = el.tag
    return tag if isinstance(tag, str) else ""


def decode_request(
    method: str,
    target: str,
    headers: object,
    body: bytes | None,
    *,
    max_bytes: int = safexml.DEFAULT_MAX_BYTES,
) -> Request:
    """Decode a REPORT (sync-collection or not). Never raises on bad input."""
    h = HeaderView.of(headers)
    req = Request(
        protocol="rfc6578",
        kind="other",
        method=method.upper(),
        target=normalise_path(target),
        depth=h.get("depth"),
    )
    req.condition = read_condition(h, req.malformed)
    if not body:
        return req
    try:
        root = safexml.parse(body, max_bytes=max_bytes)
    except safexml.XmlProblem as e:
        req.problem = safexml.Undecodable(e.reason, e.detail)
        return req
    if root.tag != DAV + "sync-collection":
        return req  # another REPORT (calendar-multiget, calendar-query...): not a manifest
    req.manifest = True
    req.kind = "manifest"
    token_el = None
    for child in root:
        tag = _local(child)
        if tag == DAV + "sync-token":
            token_el = child
        elif tag == DAV + "sync-level":
            req.sync_level = safexml.text(child)
        elif tag == DAV + "prop":
            req.props = [p.tag for p in child if isinstance(p.tag, str)]
        elif tag == DAV + "limit":
            n = child.find(DAV + "nresults")
            t = safexml.text(n)
            if t is not None and t.isascii() and t.isdigit() and len(t) <= 18:
                req.limit = int(t)
            else:
                req.malformed.append(f"DAV:limit not read: nresults is {t!r}")
    read_token(req, token_el, "no DAV:sync-token element: read as an initial sync")
    return req


def decode_response(
    req: Request,
    status: int,
    headers: object,
    body: bytes | None,
    *,
    max_bytes: int = safexml.DEFAULT_MAX_BYTES,
) -> Response:
    """Decode the answer to an RFC 6578 request (or a plain WebDAV one). Never raises."""
    h = HeaderView.of(headers)
    resp = Response(status=status, meaning=_meaning(req, status))
    etag = h.get("etag")
    if etag is not None:
        resp.tag = etag.strip(OWS) or None
    resp.location = h.get("location")
    if not body:
        return resp
    ctype = (h.get("content-type") or "").lower()
    if not (safexml.looks_like_xml(body) or "xml" in ctype):
        return resp
    try:
        if len(body) > safexml.STREAM_ABOVE and _read_pieces(req, resp, body, max_bytes):
            _finish_multistatus(req, resp)
            return resp
        root = safexml.parse(body, max_bytes=max_bytes)
    except safexml.XmlProblem as e:
        if req.manifest or status == 207:
            resp.problem = safexml.Undecodable(e.reason, e.detail)
        return resp
    if root.tag == DAV + "error":
        if root.find(DAV + "valid-sync-token") is not None:
            resp.invalid_token = True
            resp.meaning = "invalid sync-token (the valid-sync-token precondition failed)"
        return resp
    if root.tag != DAV + "multistatus":
        return resp
    _read_multistatus(req, resp, root)
    _finish_multistatus(req, resp)
    return resp


def _read_pieces(req: Request, resp: Response, body: bytes, max_bytes: int) -> bool:
    """Read a large multistatus a piece at a time (see
    :func:`~repltap.protocol.xml.parse_pieces`); False, with ``resp`` as it was, when the body
    must be parsed whole instead (another root, or a shape that cannot be cut)."""
    saved = (resp.token, resp.ctag, resp.manifest, resp.truncated)
    try:
        for root in safexml.parse_pieces(body, max_bytes=max_bytes):
            if root.tag != DAV + "multistatus":
                raise safexml.NotInPieces("not a multistatus")
            _read_multistatus(req, resp, root)
    except safexml.NotInPieces:
        resp.entries.clear()
        resp.token, resp.ctag, resp.manifest, resp.truncated = saved
        return False
    return True


def _meaning(req: Request, status: int) -> str:
    if req.manifest and status == 207:
        return "sync-collection answer"
    if status == 412 and not req.manifest:
        return "precondition failed: the If-Match ETag does not hold (conflict)"
    return status_meaning(req.method, status, False)


def _read_multistatus(req: Request, resp: Response, root: etree._Element) -> None:
    entries = resp.entries
    target = req.target
    for child in root:
        tag = _local(child)
        if tag == DAV + "sync-token":
            resp.token = safexml.text(child)
            resp.manifest = resp.manifest or req.manifest
            continue
        if tag != DAV + "response":
            continue
        href = safexml.text(child.find(DAV + "href"))
        status = parse_status_line(safexml.text(child.find(DAV + "status")))
        if status == 507 and href is not None and normalise_path(href) == target:
            resp.truncated = True  # RFC 6578 §3.6: more changes than the limit allowed
            continue
        # The href is the identity (RFC 6578 has no stable id); some servers write it absolute,
        # from a Host header a proxy may have set (Xandikos), so the uid is its normalised path.
        uid = normalise_path(href) if href is not None else None
        entry: Entry = {"type": "change", "href": href, "tag": None, "uid": uid}
        if status is not None:
            entry["status"] = status
            if status == 404:
                entry["type"] = "delete"
        for ps in child.iterfind(DAV + "propstat"):
            ps_status = parse_status_line(safexml.text(ps.find(DAV + "status")))
            if ps_status is not None and not 200 <= ps_status < 300:
                continue
            prop = ps.find(DAV + "prop")
            if prop is None:
                continue
            t = safexml.text(prop.find(DAV + "getetag"))
            if t is not None:
                entry["tag"] = t
            if not req.manifest:
                ctag = safexml.text(prop.find(CS_GETCTAG))
                token = safexml.text(prop.find(DAV + "sync-token"))
                if ctag is not None and resp.ctag is None:
                    resp.ctag = ctag
                if token is not None and resp.token is None:
                    resp.token = token  # the collection's current token, as a property
        entries.append(entry)


def _finish_multistatus(req: Request, resp: Response) -> None:
    if req.manifest:
        resp.manifest = True
        if resp.token is None:
            resp.notes.append("the sync-collection answer carries no DAV:sync-token")
