"""Exchange 2003/2007 WebDAV replication (namespace ``http://schemas.microsoft.com/repl/``).

What may live here: turning one request (method, target, headers, body) and its response
(status, headers, body) into :class:`~repltap.protocol.model.Request` and
:class:`~repltap.protocol.model.Response`, following ../shared/spec/exchange-repl.md, plus the
spec's tables (status meanings, the method matrix of §6.4). What may not: I/O, mitmproxy, any
memory of earlier messages (that is the tracker's job).

Readings of the spec's ambiguities (§13), chosen here:
- §13.1 namespace: ``http://…/repl/`` is canonical; ``https://…`` and the slash-less spellings are
  accepted and reported in ``nonstandard_ns``.
- §13.2 changetype: ``new``/``change``/``delete``; absent means ``change``; anything else is read
  as ``change`` and noted.
- §13.3 changetype position: anywhere inside the ``D:response``.
- §13.4 case: names are matched case-insensitively in requests; in responses, which may be huge,
  in the spellings lowercase, Capitalised, CamelCase (``CollBlob``, ``ChangeType``) and UPPER.
- §13.6 empty collblob: ``<R:collblob/>``, empty text, whitespace only and a missing element all
  mean an initial sync; a missing one is noted.
- §13.7 the empty ``<R:repl/>`` carries no token: ``token`` stays None and ``no_changes`` is set.
- §13.12 ranged manifests: 207 and 206 are both read as manifests.
- §13.17 ResourceTag/Repl-UID headers: brackets optional, any letter case.
- §14.3 / spec §25 tokens: only surrounding whitespace is removed; inner characters are kept.
- §13.20 If on POST is ignored by the server: decoded, and noted.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterable
from dataclasses import dataclass

from lxml import etree

from . import xml as safexml
from .headers import (
    OWS,
    HeaderSyntaxError,
    HeaderView,
    parse_content_range_rows,
    parse_range_rows,
    strip_coded_url,
)
from .model import Entry, Request, Response, Scope, normalise_path
from .webdav import parse_status_line as parse_status_line  # re-exported: older callers
from .webdav import read_condition, read_token

_WS = safexml.XML_SPACE  # what element text is trimmed of (never str.strip()'s Unicode blanks)

REPL_NS = "http://schemas.microsoft.com/repl/"
NONCANONICAL_REPL_NS = (
    "https://schemas.microsoft.com/repl/",
    "http://schemas.microsoft.com/repl",
    "https://schemas.microsoft.com/repl",
)
DAV_NS = "DAV:"
REPL_NAMESPACES = (REPL_NS, *NONCANONICAL_REPL_NS)


@dataclass(frozen=True)
class MethodRule:
    """One row of the method matrix (spec §6.4, §9)."""

    kind: str
    sends_tag: bool | None  # ResourceTag header on success (None: "might not")
    sends_uid: bool | None  # Repl-UID header on success (None: contradictory)
    honours_if: bool


METHODS: dict[str, MethodRule] = {
    "GET": MethodRule("download", True, False, True),
    "HEAD": MethodRule("download", True, None, True),
    "PUT": MethodRule("upload", True, True, True),
    "POST": MethodRule("upload", True, True, False),
    "PROPFIND": MethodRule("properties", False, False, True),
    "PROPPATCH": MethodRule("upload", True, True, True),
    "SEARCH": MethodRule("query", False, False, False),
    "DELETE": MethodRule("delete", True, False, True),
    "MOVE": MethodRule("move", False, None, True),
    "COPY": MethodRule("copy", None, False, True),
    "MKCOL": MethodRule("mkcol", True, True, True),
}

# --------------------------------------------------------------------------------------------
# Status meanings (spec §7)

_GENERIC_STATUS = {
    200: "OK",
    201: "created",
    204: "no content (done)",
    206: "partial content (a ranged manifest, RFC style)",
    207: "multi-status",
    210: "content different: the server changed what was stored; re-fetch it",
    400: "bad request (malformed XML or SQL)",
    401: "authentication required",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    409: "conflict (a missing parent collection)",
    412: "precondition failed",
    416: "requested rows are past the end of the manifest",
    422: "unprocessable entity",
    423: "locked",
    424: "failed dependency",
    425: "insufficient space on resource (over quota)",
    440: "login timeout (OWA forms authentication)",
    449: "retry with (a client extension, not replication)",
    475: "invalid collblob: discard it and sync from scratch",
    507: "insufficient storage",
}


def status_meaning(method: str, status: int, manifest: bool = False) -> str:
    """What ``status`` means as the answer to ``method`` in replication (spec §7, §9)."""
    m = method.upper()
    if manifest and status == 207:
        return "manifest"
    if manifest and status == 206:
        return "manifest page (206, RFC style)"
    if m == "MKCOL" and status in (405, 409):
        return "the collection already exists"
    if status == 412:
        if m in ("MOVE", "COPY"):
            return (
                "precondition failed: the source changed, "
                "or Overwrite: F and the destination exists"
            )
        return (
            "precondition failed: the resource tag or repl-uid condition does not hold (conflict)"
        )
    if status in _GENERIC_STATUS:
        return _GENERIC_STATUS[status]
    if 500 <= status < 600:
        return "server error"
    if 200 <= status < 300:
        return "success"
    return "unexpected status"


# --------------------------------------------------------------------------------------------
# Names


def _variants(*names: str) -> list[str]:
    out: list[str] = []
    for n in names:
        for v in (
            n,
            n.lower(),
            n.upper(),
            n.capitalize(),
            "-".join(p.capitalize() for p in n.split("-")),
        ):
            if v not in out:
                out.append(v)
    return out


# Spellings matched in responses (see §13.4 above); the CamelCase forms are the SDK's. DAV:
# names are case-sensitive by RFC 4918 and nobody misspells them: lowercase only.
_RESPONSE_FIELD_NAMES = {
    "response": ["response"],
    "href": ["href"],
    "repl": _variants("repl"),
    "collblob": _variants("collblob", "CollBlob"),
    "resourcetag": _variants("resourcetag", "ResourceTag"),
    "repl-uid": _variants("repl-uid", "Repl-UID", "ReplUid"),
    "changetype": _variants("changetype", "ChangeType"),
    "contenttag": _variants("contenttag", "ContentTag"),
}
_RESPONSE_ITER_TAGS = [f"{{*}}{v}" for vs in _RESPONSE_FIELD_NAMES.values() for v in vs]
_CHANGE_TYPES = frozenset(("new", "change", "delete"))


# Field codes of the hot loop, and the canonical spelling of each field's tag.
(
    _F_IGNORE,
    _F_RESPONSE,
    _F_HREF,
    _F_REPL,
    _F_COLLBLOB,
    _F_TAG,
    _F_UID,
    _F_CHANGETYPE,
    _F_CONTENTTAG,
) = range(9)
_CODE_OF = {
    ("dav", "response"): _F_RESPONSE,
    ("dav", "href"): _F_HREF,
    ("repl", "repl"): _F_REPL,
    ("repl", "collblob"): _F_COLLBLOB,
    ("repl", "resourcetag"): _F_TAG,
    ("repl", "repl-uid"): _F_UID,
    ("repl", "changetype"): _F_CHANGETYPE,
    ("repl", "contenttag"): _F_CONTENTTAG,
}
# Full tag spelling -> field code. Seeded with the canonical spellings; other spellings in the
# canonical namespaces are learnt as met (bounded), non-canonical namespaces never are, so that
# every document using one gets it reported.
_FIELD_CODES: dict[str, int] = {
    "{" + (DAV_NS if cls == "dav" else REPL_NS) + "}" + local: code
    for (cls, local), code in _CODE_OF.items()
}


def _learn_field(tag: object, ns_seen: list[str]) -> int:
    """The field code of a tag spelling not met before."""
    cls, local, ns = _classify(tag)
    _note_ns(ns, ns_seen)
    code = _CODE_OF.get((cls, local), _F_IGNORE)
    if isinstance(tag, str) and ns not in NONCANONICAL_REPL_NS and len(_FIELD_CODES) < 1_000:
        _FIELD_CODES[tag] = code
    return code


# tag string -> (namespace class, lower-case local name); namespace class is "dav", "repl" or "".
_TAG_CACHE: dict[str, tuple[str, str, str]] = {}


def _classify(tag: object) -> tuple[str, str, str]:
    """(namespace class, lower local name, namespace) of an lxml tag; cached per spelling."""
    if not isinstance(tag, str):  # comments and processing instructions
        return ("", "", "")
    hit = _TAG_CACHE.get(tag)
    if hit is not None:
        return hit
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
    else:
        ns, local = "", tag
    cls = "dav" if ns == DAV_NS else "repl" if ns in REPL_NAMESPACES else ""
    hit = (cls, local.lower(), ns)
    if len(_TAG_CACHE) < 10_000:  # bounded: names come from untrusted documents
        _TAG_CACHE[tag] = hit
    return hit


def _note_ns(ns: str, found: list[str]) -> None:
    if ns in NONCANONICAL_REPL_NS and ns not in found:
        found.append(ns)


# --------------------------------------------------------------------------------------------
# SQL (only what replication needs: the SELECT list, the scope, and the query a collblob is
# bound to, spec §8.2 and §13.8)

_SCOPE_RE = re.compile(
    r"""(?:(?P<depth>SHALLOW|DEEP|HIERARCHICAL)\s+TRAVERSAL\s+OF\s+)?"(?P<url>[^"]*)\"""",
    re.IGNORECASE,
)
_SCOPE_CALL_RE = re.compile(r"SCOPE\s*\(\s*'(?P<body>[^']*)'\s*\)", re.IGNORECASE)
_FROM_RE = re.compile(r"\bFROM\b", re.IGNORECASE)
_SELECT_RE = re.compile(r"^\s*SELECT\b(?P<cols>.*?)\bFROM\b", re.IGNORECASE | re.DOTALL)


def parse_sql(sql: str) -> tuple[list[str], list[Scope], str | None]:
    """(SELECT columns, scopes, normalised query after FROM) of an Exchange SQL statement."""
    cols: list[str] = []
    m = _SELECT_RE.match(sql)
    if m:
        for part in m["cols"].split(","):
            c = part.strip()
            c = re.split(r"\s+AS\s+", c, flags=re.IGNORECASE)[0].strip()
            if c.startswith('"') and c.endswith('"') and len(c) >= 2:
                c = c[1:-1]
            if c:
                cols.append(c)
    scopes: list[Scope] = []
    for call in _SCOPE_CALL_RE.finditer(sql):
        for s in _SCOPE_RE.finditer(call["body"]):
            depth = (s["depth"] or "unspecified").lower()
            scopes.append(Scope(depth, s["url"]))
    f = _FROM_RE.search(sql)
    query = " ".join(sql[f.start() :].split()) if f else None
    return cols, scopes, query


# --------------------------------------------------------------------------------------------
# Requests


def decode_request(
    method: str,
    target: str,
    headers: object,
    body: bytes | None,
    *,
    max_bytes: int = safexml.DEFAULT_MAX_BYTES,
) -> Request:
    """Decode one request. Never raises on bad input: problems land in ``notes``/``problem``."""
    m = method.upper()
    h = HeaderView.of(headers)
    rule = METHODS.get(m)
    depth, destination, overwrite, rng = h.lowered("depth", "destination", "overwrite", "range")
    req = Request(
        protocol="exchange",
        kind=rule.kind if rule else "other",
        method=m,
        target=normalise_path(target),
        depth=depth,
        destination=destination,
        overwrite=overwrite,
    )
    req.condition = read_condition(h, req.malformed)
    if m == "POST" and req.condition.raw_if is not None:
        req.notes.append("If is ignored on POST by Exchange (spec §9.3)")
    if rng is not None and rng.strip(OWS).lower().startswith("rows"):
        try:
            req.range = parse_range_rows(rng)
        except HeaderSyntaxError as e:
            req.malformed.append(f"Range header not read: {e}")
    if m in ("SEARCH", "PROPFIND") and body:
        _decode_manifest_request(req, body, max_bytes)
    return req


def _decode_manifest_request(req: Request, body: bytes, max_bytes: int) -> None:
    try:
        root = safexml.parse(body, max_bytes=max_bytes)
    except safexml.XmlProblem as e:
        req.problem = safexml.Undecodable(e.reason, e.detail)
        return
    rcls, rlocal, _ = _classify(root.tag)
    if rcls != "dav" or rlocal not in ("searchrequest", "propfind"):
        return
    repl = None
    for child in root:
        cls, local, ns = _classify(child.tag)
        if cls == "repl" and local == "repl":
            repl = child
            _note_ns(ns, req.nonstandard_ns)
        elif cls == "dav" and local == "sql":
            sql = child.text or ""
            req.select, req.scope, req.query = parse_sql(sql)
        elif cls == "dav" and local == "prop":
            for p in child:
                if isinstance(p.tag, str):
                    req.props.append(p.tag if p.tag.startswith("{") else "{}" + p.tag)
    if repl is None:
        return
    req.manifest = True
    req.kind = "manifest"
    collblob = None
    for el in repl.iter():
        cls, local, ns = _classify(el.tag)
        if cls != "repl":
            continue
        _note_ns(ns, req.nonstandard_ns)
        if local == "collblob" and collblob is None:
            collblob = el
        elif local == "resourcetag" and el.getparent() is not repl:
            tag = safexml.text(el)
            if tag is not None:
                req.acknowledged.append(tag)
    read_token(req, collblob, "R:repl carries no R:collblob: read as an initial sync (spec §13.6)")
    if req.nonstandard_ns:
        req.notes.append(
            "non-canonical repl namespace "
            + ", ".join(req.nonstandard_ns)
            + " (probably copied from today's docs; Exchange expects "
            + REPL_NS
            + ")"
        )
    if req.method == "SEARCH" and not req.scope and req.query is None:
        req.notes.append("no D:sql: the server must reuse the query bound to the collblob (§8.10)")


# --------------------------------------------------------------------------------------------
# Responses


def decode_response(
    req: Request,
    status: int,
    headers: object,
    body: bytes | None,
    *,
    max_bytes: int = safexml.DEFAULT_MAX_BYTES,
) -> Response:
    """Decode the answer to ``req``. Never raises on bad input."""
    h = HeaderView.of(headers)
    resp = Response(status, status_meaning(req.method, status, req.manifest))
    tag, uid, resp.location, resp.accept_ranges, cr = h.lowered(
        "resourcetag", "repl-uid", "location", "accept-ranges", "content-range"
    )
    if tag is not None:
        resp.tag = strip_coded_url(tag) or None
    if uid is not None:
        resp.uid = strip_coded_url(uid) or None
    if cr is not None and cr.strip(OWS).lower().startswith("rows"):
        try:
            resp.content_range = parse_content_range_rows(cr)
        except HeaderSyntaxError as e:
            resp.malformed.append(f"Content-Range header not read: {e}")
    if status == 475:
        resp.invalid_token = True
    if req.method in ("SEARCH", "PROPFIND") and status in (206, 207) and body:
        _decode_multistatus(req, resp, body, h, max_bytes)
    if req.method == "SEARCH" and resp.tag is not None:
        resp.notes.append("ResourceTag on a SEARCH answer is not expected (spec §9.6)")
    return resp


def _ascii_number(text: str, digits: int) -> bool:
    """Only ASCII digits: str.isdigit() also takes "²" and other digits int() refuses."""
    return text.isascii() and text.isdigit() and len(text) <= digits


def _declared_length(h: HeaderView) -> int | None:
    v = h.get("content-length")
    if v is not None and _ascii_number(v.strip(OWS), 18):
        return int(v.strip(OWS))
    return None


def _close_entry(cur: Entry | None) -> None:
    """An entry whose R:changetype never came is a change (spec §10)."""
    if cur is not None and cur["type"] == "":
        cur["type"] = "change"
        cur["implicit"] = True


def _set_changetype(cur: Entry, text: str | None, notes: list[str]) -> None:
    raw = (text or "").strip(_WS)
    cur.pop("implicit", None)
    if raw in _CHANGE_TYPES:
        cur["type"] = raw
        return
    low = raw.lower()
    cur["changetype_raw"] = raw
    if low in _CHANGE_TYPES:
        cur["type"] = low
        return
    cur["type"] = "change"
    note = f"unknown changetype {raw!r} read as 'change' (spec §10)"
    if note not in notes:
        notes.append(note)


_ReadState = tuple["Entry | None", bool, "str | None"]  # (open entry, R:repl seen, collblob)


def _read_entries(
    root: etree._Element, resp: Response, state: _ReadState = (None, False, None)
) -> _ReadState:
    """Add to ``resp.entries`` what a multistatus (or one piece of it, see
    :func:`~repltap.protocol.xml.parse_pieces`) holds, from the state the previous piece left;
    return the new state. The caller closes the last entry (:func:`_close_entry`)."""
    entries = resp.entries
    ns_seen = resp.nonstandard_ns
    notes = resp.notes
    cur, repl_seen, collblob_text = state
    codes = _FIELD_CODES
    ws = _WS
    # The hot loop of the whole product (10,000-entry manifests): one C-filtered pass over the
    # tree, a dict lookup per element, no calls on the common path. Response-level statuses are
    # not among the tags: Exchange puts statuses in propstats only (spec §4), which say nothing
    # about the entry.
    for el in root.iter(*_RESPONSE_ITER_TAGS):
        tag = el.tag
        code = codes.get(tag)
        if code is None:
            code = _learn_field(tag, ns_seen)
        if code == _F_HREF:
            if cur is not None and cur["href"] is None:
                t = el.text
                cur["href"] = t.strip(ws) if t else ""
        elif code == _F_TAG:
            if cur is not None:
                t = el.text  # an empty element (a 404 propstat) never overwrites a value
                if t and (t := t.strip(ws)):
                    cur["tag"] = t
        elif code == _F_UID:
            if cur is not None:
                t = el.text
                if t and (t := t.strip(ws)):
                    cur["uid"] = t
        elif code == _F_CHANGETYPE:
            if cur is not None:
                t = el.text
                if t in _CHANGE_TYPES:  # the common, exact spelling
                    cur["type"] = t
                else:
                    _set_changetype(cur, t, notes)
        elif code == _F_RESPONSE:
            if cur is not None and cur["type"] == "":  # _close_entry, inlined: once per entry
                cur["type"] = "change"
                cur["implicit"] = True
            cur = {"type": "", "href": None, "tag": None, "uid": None}
            entries.append(cur)
        elif code == _F_REPL:
            if el.getparent() is root:
                repl_seen = True
                _close_entry(cur)  # R:repl is a sibling of the entries, never inside one
                cur = None
                if len(el) == 0 and not (el.text or "").strip(ws):
                    resp.no_changes = True
        elif code == _F_COLLBLOB:
            parent = el.getparent()
            if collblob_text is None and parent is not None:
                pcode = codes.get(parent.tag)
                if pcode is None:
                    pcode = _learn_field(parent.tag, ns_seen)
                if pcode == _F_REPL:
                    t = el.text
                    collblob_text = (t.strip(ws) or None) if t else None
        elif code == _F_CONTENTTAG and cur is None:
            t = el.text
            resp.ctag = (t.strip(ws) or None) if t else None
    return cur, repl_seen, collblob_text


def _stream_entries(body: bytes, resp: Response, max_bytes: int) -> tuple[bool, str | None, bool]:
    """Like :func:`_read_entries`, for a body too large to hold as a tree: elements come as
    they end (a response's fields before the response), and finished responses are freed as
    the stream goes. The field handling is written out in both loops on purpose: a shared
    per-element function call would cost the tree path about a tenth of its decode budget.
    Returns (R:repl seen, collblob text, root is DAV:multistatus).

    Raises :class:`~repltap.protocol.xml.XmlProblem` on bad XML, possibly after filling some
    entries: the caller clears them.
    """
    entries = resp.entries
    ns_seen = resp.nonstandard_ns
    notes = resp.notes
    cur: Entry = {"type": "", "href": None, "tag": None, "uid": None}
    repl_seen = False
    collblob_text: str | None = None
    rooted: bool | None = None
    codes = _FIELD_CODES
    ws = _WS
    for el in safexml.iterparse(body, _RESPONSE_ITER_TAGS, max_bytes=max_bytes):
        if rooted is None:
            root = el.getroottree().getroot()
            cls, local, _ = _classify(root.tag)
            rooted = cls == "dav" and local == "multistatus"
            if not rooted:
                return False, None, False
        tag = el.tag
        code = codes.get(tag)
        if code is None:
            code = _learn_field(tag, ns_seen)
        if code == _F_HREF:
            if cur["href"] is None:
                t = el.text
                cur["href"] = t.strip(ws) if t else ""
        elif code == _F_TAG:
            t = el.text
            if t and (t := t.strip(ws)):
                cur["tag"] = t
        elif code == _F_UID:
            t = el.text
            if t and (t := t.strip(ws)):
                cur["uid"] = t
        elif code == _F_CHANGETYPE:
            t = el.text
            if t in _CHANGE_TYPES:
                cur["type"] = t
            else:
                _set_changetype(cur, t, notes)
        elif code == _F_RESPONSE:
            _close_entry(cur)
            entries.append(cur)
            cur = {"type": "", "href": None, "tag": None, "uid": None}
            if len(entries) % 1024 == 0:  # free the finished responses, in one C call
                parent = el.getparent()
                if parent is not None:
                    del parent[: parent.index(el)]
        elif code == _F_REPL:
            parent = el.getparent()
            if parent is not None and parent.getparent() is None:
                repl_seen = True
                if len(el) == 0 and not (el.text or "").strip(ws):
                    resp.no_changes = True
        elif code == _F_COLLBLOB:
            parent = el.getparent()
            if collblob_text is None and parent is not None:
                pcode = codes.get(parent.tag)
                if pcode is None:
                    pcode = _learn_field(parent.tag, ns_seen)
                if pcode == _F_REPL:
                    t = el.text
                    collblob_text = (t.strip(ws) or None) if t else None
        elif code == _F_CONTENTTAG and not _inside_response(el):
            t = el.text
            resp.ctag = (t.strip(ws) or None) if t else None
    return repl_seen, collblob_text, bool(rooted) or rooted is None


def _read_pieces(body: bytes, resp: Response, max_bytes: int) -> tuple[bool, object, _ReadState]:
    """:func:`_read_entries` over a large body, one piece at a time (same results as the whole
    tree, a piece's memory at a time). Returns (root is DAV:multistatus, root tag, state);
    raises :class:`~repltap.protocol.xml.NotInPieces` when the body must be streamed instead."""
    state: _ReadState = (None, False, None)
    for root in safexml.parse_pieces(body, max_bytes=max_bytes):
        cls, local, _ = _classify(root.tag)
        if not (cls == "dav" and local == "multistatus"):
            return False, root.tag, state
        state = _read_entries(root, resp, state)
    return True, None, state


def _inside_response(el: etree._Element) -> bool:
    p = el.getparent()
    while p is not None:
        if _FIELD_CODES.get(p.tag) == _F_RESPONSE:
            return True
        p = p.getparent()
    return False


def _decode_multistatus(
    req: Request, resp: Response, body: bytes, h: HeaderView, max_bytes: int
) -> None:
    declared = _declared_length(h)
    notes_before, ns_before = len(resp.notes), len(resp.nonstandard_ns)
    gc_was_on = gc.isenabled()
    gc.disable()  # the loop allocates ~5 objects per entry and frees none: collecting is waste
    try:
        if len(body) > safexml.STREAM_ABOVE:
            try:
                rooted, root_tag, (cur, repl_seen, collblob_text) = _read_pieces(
                    body, resp, max_bytes
                )
                _close_entry(cur)
            except safexml.NotInPieces:
                resp.entries.clear()
                del resp.notes[notes_before:]
                del resp.nonstandard_ns[ns_before:]
                resp.ctag, resp.no_changes = None, False
                repl_seen, collblob_text, rooted = _stream_entries(body, resp, max_bytes)
                root_tag = "(not DAV:multistatus)"
        else:
            root = safexml.parse(body, max_bytes=max_bytes)
            cls, local, _ = _classify(root.tag)
            rooted, root_tag = cls == "dav" and local == "multistatus", root.tag
            cur, repl_seen, collblob_text = (
                _read_entries(root, resp) if rooted else (None, False, None)
            )
            _close_entry(cur)
    except safexml.XmlProblem as e:
        resp.entries.clear()
        resp.no_changes = False
        reason, detail = e.reason, e.detail
        if declared is not None and declared > len(body):
            reason = "truncated"
            detail = f"the body ends after {len(body)} of {declared} bytes; {e.detail}"
        resp.problem = safexml.Undecodable(reason, detail)
        resp.manifest = req.manifest
        return
    finally:
        if gc_was_on:
            gc.enable()
    if not rooted:
        resp.problem = safexml.Undecodable(
            "unexpected-root", f"a 207 whose root element is {root_tag!r}, not DAV:multistatus"
        )
        return
    entries = resp.entries
    ns_seen = resp.nonstandard_ns
    resp.manifest = repl_seen or (req.manifest and collblob_text is not None)
    resp.token = collblob_text
    if repl_seen and resp.no_changes and entries:
        resp.notes.append("an empty R:repl (no changes) alongside entries")
    if req.manifest and not repl_seen:
        resp.notes.append("the answer to a manifest request carries no R:repl")
    if ns_seen:
        resp.notes.append("non-canonical repl namespace " + ", ".join(ns_seen))


def decode(
    method: str,
    target: str,
    req_headers: object,
    req_body: bytes | None,
    status: int | None = None,
    resp_headers: Iterable[tuple[str, str]] | object = (),
    resp_body: bytes | None = None,
) -> tuple[Request, Response | None]:
    """Decode a request and, when ``status`` is given, its response."""
    req = decode_request(method, target, req_headers, req_body)
    if status is None:
        return req, None
    return req, decode_response(req, status, resp_headers, resp_body)
