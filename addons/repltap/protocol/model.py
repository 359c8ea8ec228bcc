"""Typed, protocol-neutral results of decoding one replication request or response.

What may live here: the shapes the decoders return and their plain-data (``to_dict``) forms,
which is what goes into ``flow.metadata["repl"]`` and the event log. What may not: parsing.

The names are shared by both protocols: a *token* is Exchange's collblob or RFC 6578's
sync-token, an entry's *tag* is a resourcetag or an ETag, its *uid* a repl-uid or (RFC 6578,
which has no stable id) the href.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Required, TypedDict
from urllib.parse import quote, unquote

from .headers import ContentRange, RowRange
from .xml import Undecodable

PROTOCOLS = ("exchange", "rfc6578")
CHANGE_TYPES = ("new", "change", "delete")

# Kinds of message, after the SDK's replication loop (spec §3, §6.4).
KINDS = (
    "manifest",  # SEARCH/PROPFIND carrying R:repl (REPORT sync-collection for RFC 6578)
    "query",  # SEARCH without R:repl: bulk property download
    "properties",  # PROPFIND without R:repl: download properties
    "download",  # GET, HEAD
    "upload",  # PUT, POST, PROPPATCH
    "delete",
    "move",
    "copy",
    "mkcol",
    "other",
)

_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_PATH_SAFE_CHARS = frozenset(_PATH_SAFE) | frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
)
_URL_HEAD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
_CLEAN_PATH = re.compile(r"[A-Za-z0-9/:@!$&'()*+,;=._~%-]*")  # one class: fast to match
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# The common cases in one match: an http(s) URL or an absolute path whose path is clean and whose
# escapes (if any) are already normal (upper case, of a character that needs one), so the group
# is the result as it stands. The URL head ends where the general code below cuts it: at the
# first "/" from index 8 on. Every repetition starts with a "%", which no class takes, so there is
# one way to match, and the quantifiers are possessive: an href that fails near its end fails at
# once, with no backtracking (``(?:[…]+|%..)*`` would blow up on a long one).
# An escaped "/" (%2F) is never decoded: inside a segment it is data, and "/a%2Fb" and "/a/b" are
# two resources (RFC 3986 §2.2). Every other character that needs no escape in a path is decoded,
# so that a client's request line and a server's href name one resource however each escapes it.
_DECODED_CHARS = _PATH_SAFE_CHARS - {"/"}
_NORMAL_ESCAPES = "|".join(
    f"{hi:X}[{los}]"
    for hi in range(16)
    if (los := "".join(f"{lo:X}" for lo in range(16) if chr(hi * 16 + lo) not in _DECODED_CHARS))
)
_CLEAN_RUN = r"[A-Za-z0-9/:@!$&'()*+,;=._~-]*+"
_FAST_PATH = re.compile(
    r"(?:(?:http://[\s\S]|https://)[^/]*+)?"
    rf"(/{_CLEAN_RUN}(?:%(?:{_NORMAL_ESCAPES}){_CLEAN_RUN})*+)"
)
_fast_path = _FAST_PATH.fullmatch


_ESCAPED_SLASH = re.compile(r"%2[Ff]")


def _normal_escape(m: re.Match[str]) -> str:
    ch = chr(int(m[1], 16))
    return ch if ch in _DECODED_CHARS else "%" + m[1].upper()


def _requote(p: str) -> str:
    """Decode and encode again, keeping each %2F (surrogateescape: mitmproxy hands over a path
    that is not UTF-8 with its bytes escaped)."""
    return "%2F".join(
        quote(unquote(part, errors="surrogateescape"), safe=_PATH_SAFE, errors="surrogateescape")
        for part in _ESCAPED_SLASH.split(p)
    )


def normalise_path(path_or_url: str) -> str:
    """The path of a URL or path, percent-encoding normalised, trailing slash kept as sent.

    Escapes of characters that need none are decoded and the others written in upper case, so
    ``/a%20b``, ``/a%20%62`` and ``/a b`` are one path; ``%2F`` stays, as ``/a%2Fb`` is not
    ``/a/b``. Called once per manifest entry, hence the
    fast paths for absolute http(s) URLs and for paths that are already clean.
    """
    m = _fast_path(path_or_url)
    if m is not None:
        return m[1]
    p = path_or_url
    if p.startswith(("http://", "https://")):
        i = p.find("/", 8)
        p = p[i:] if i >= 0 else "/"
    elif "://" in p[:24]:
        head = _URL_HEAD.match(p)
        if head is not None:
            p = p[head.end() :] or "/"
    if "?" in p or "#" in p:
        p = p.split("#", 1)[0].split("?", 1)[0]
    if _CLEAN_PATH.fullmatch(p):
        if "%" not in p:
            return p
        if not _BAD_ESCAPE.search(p):
            return _ESCAPE.sub(_normal_escape, p)
    return _requote(p)


def short_token(token: str | None, keep: int = 6) -> str:
    """A token shortened for one-line display: ``toCTAA…BFAA=``; ``∅`` for none."""
    if token is None:
        return "∅"
    if len(token) <= 2 * keep + 3:
        return token
    if "://" in token and not token.endswith("/"):
        # URI tokens share their scheme and host (http://radicale.org/ns/sync/…): show the end
        last = token.rsplit("/", 1)[1]
        return "…/" + (last if len(last) <= 2 * keep + 3 else f"{last[:keep]}…{last[-keep:]}")
    return f"{token[:keep]}…{token[-keep:]}"


@dataclass(frozen=True)
class Scope:
    """A SEARCH scope: ``SHALLOW|DEEP|HIERARCHICAL TRAVERSAL OF "url"``."""

    depth: str  # "shallow", "deep", "hierarchical" or "unspecified"
    url: str

    def to_dict(self) -> dict[str, str]:
        return {"depth": self.depth, "url": self.url}


class Condition(NamedTuple):
    """What a request makes its success depend on: If tokens, If-Match, If-None-Match.

    A named tuple rather than a frozen dataclass: one is made for every request, and a frozen
    dataclass sets each of its nine fields through ``object.__setattr__`` (three times slower).
    """

    raw_if: str | None = None
    tags: tuple[str, ...] = ()  # rt: state tokens (or ETags from If-Match for RFC 6578)
    uids: tuple[str, ...] = ()  # rid: state tokens
    not_tags: tuple[str, ...] = ()
    not_uids: tuple[str, ...] = ()
    etags: tuple[str, ...] = ()  # entity tags inside If lists
    if_match: str | None = None
    if_none_match: str | None = None
    if_schedule_tag_match: str | None = None  # CalDAV scheduling (RFC 6638): Xandikos enforces it

    @property
    def empty(self) -> bool:
        """True when the request names no condition at all."""
        return not (
            self.raw_if or self.if_match or self.if_none_match or self.if_schedule_tag_match
        )

    def to_dict(self) -> dict[str, Any]:
        # Written out (once per request): the headers first, then the token lists.
        raw_if, tags, uids, not_tags, not_uids, etags, if_match, if_none_match, if_stm = self
        d: dict[str, Any] = {}
        if raw_if is not None:
            d["raw_if"] = raw_if
        if if_match is not None:
            d["if_match"] = if_match
        if if_none_match is not None:
            d["if_none_match"] = if_none_match
        if if_stm is not None:
            d["if_schedule_tag_match"] = if_stm
        if tags:
            d["tags"] = list(tags)
        if uids:
            d["uids"] = list(uids)
        if not_tags:
            d["not_tags"] = list(not_tags)
        if not_uids:
            d["not_uids"] = list(not_uids)
        if etags:
            d["etags"] = list(etags)
        return d


class Entry(TypedDict, total=False):
    """One member of a manifest: what happened to which resource.

    A plain dict (a TypedDict), because that is what flow metadata, the event log and every
    consumer downstream hold, and a 10,000-entry manifest should not be converted twice.
    """

    type: Required[str]  # new | change | delete
    href: Required[str | None]
    tag: Required[str | None]  # resourcetag (Exchange) or ETag (RFC 6578)
    uid: Required[str | None]  # repl-uid (Exchange) or href (RFC 6578)
    status: int  # a response-level status (RFC 6578's 404 for a removed member)
    implicit: bool  # True when R:changetype was absent (read as "change")
    changetype_raw: str  # as written, when not exactly one of the three


def entry(
    type: str, href: str | None = None, tag: str | None = None, uid: str | None = None
) -> Entry:
    """A new entry."""
    return {"type": type, "href": href, "tag": tag, "uid": uid}


def listed_beside_deletes(entries: Iterable[Mapping[str, Any]], changes: Any) -> set[str]:
    """The repl-uids a manifest lists at an href, when it also has deletes (``changes``, its
    counts; missing, it may have): a delete of one of them is the old side of a rename, in
    either order (spec §8.6). Empty, at no cost, for a manifest with no deletes."""
    if not (changes or {}).get("delete", 1):
        return set()
    return {u for e in entries if e["type"] != "delete" and (u := e.get("uid"))}


@dataclass(slots=True)
class Request:
    """A decoded request."""

    protocol: str
    kind: str
    method: str
    target: str  # normalised path
    manifest: bool = False
    token: str | None = None  # the token sent; None for an initial sync or a non-manifest
    token_form: str | None = None  # text | empty-element | whitespace | missing (manifests only)
    acknowledged: list[str] = field(default_factory=list)  # R:resourcetaglist
    scope: list[Scope] = field(default_factory=list)
    select: list[str] = field(default_factory=list)
    query: str | None = None  # normalised FROM/WHERE/ORDER BY text: what a collblob is bound to
    props: list[str] = field(default_factory=list)  # PROPFIND / sync-collection prop names
    depth: str | None = None
    range: list[RowRange] | None = None
    limit: int | None = None  # RFC 6578 DAV:limit/nresults
    sync_level: str | None = None  # RFC 6578
    condition: Condition = field(default_factory=Condition)
    destination: str | None = None
    overwrite: str | None = None
    nonstandard_ns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # headers that could not be read, why
    problem: Undecodable | None = None

    @property
    def initial(self) -> bool:
        """A manifest request with no token: the client asks for everything."""
        return self.manifest and self.token is None

    @property
    def collection(self) -> str | None:
        """The collection a manifest is about (the target), None for other requests."""
        return self.target if self.manifest else None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method, "target": self.target}
        if self.manifest:
            d.update(
                manifest=True,
                token=self.token,
                initial=self.initial,
                token_form=self.token_form,
                acknowledged=list(self.acknowledged),
            )
            if self.scope:
                d["scope"] = [s.to_dict() for s in self.scope]
            if self.select:
                d["select"] = list(self.select)
            if self.query is not None:
                d["query"] = self.query
            if self.props:
                d["props"] = list(self.props)
            if self.limit is not None:
                d["limit"] = self.limit
            if self.sync_level is not None:
                d["sync_level"] = self.sync_level
        if self.depth is not None:
            d["depth"] = self.depth
        if self.range is not None:
            d["range"] = [str(r) for r in self.range]
        if not self.condition.empty:
            d["condition"] = self.condition.to_dict()
        if self.destination is not None:
            d["destination"] = self.destination
        if self.overwrite is not None:
            d["overwrite"] = self.overwrite
        if self.nonstandard_ns:
            d["nonstandard_ns"] = list(self.nonstandard_ns)
        if self.notes:
            d["notes"] = list(self.notes)
        if self.malformed:
            d["malformed"] = list(self.malformed)
        if self.problem is not None:
            d["undecodable"] = self.problem.to_dict()
        return d


@dataclass(slots=True)
class Response:
    """A decoded response, read in the light of its request."""

    status: int
    meaning: str
    manifest: bool = False  # a manifest answer (207 multistatus with R:repl, or sync-token)
    token: str | None = None  # the token received; None when none came back
    no_changes: bool = False  # the empty <R:repl/>: the old token stays current
    entries: list[Entry] = field(default_factory=list)
    content_range: ContentRange | None = None
    accept_ranges: str | None = None
    truncated: bool = False  # RFC 6578: a 507 for the request-URI inside the 207
    invalid_token: bool = False  # 475, or RFC 6578's valid-sync-token precondition
    tag: str | None = None  # ResourceTag header (ETag for RFC 6578)
    uid: str | None = None  # Repl-UID header
    location: str | None = None
    ctag: str | None = None  # repl:contenttag / CS:getctag of a collection
    nonstandard_ns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # headers that could not be read, why
    problem: Undecodable | None = None

    @property
    def changes(self) -> dict[str, int]:
        """Entries counted by change type."""
        c = dict.fromkeys(CHANGE_TYPES, 0)
        for e in self.entries:
            c[e["type"]] += 1
        return c

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"status": self.status, "meaning": self.meaning}
        if self.manifest:
            d.update(
                manifest=True,
                token=self.token,
                no_changes=self.no_changes,
                changes=self.changes,
                entries=self.entries,
            )
            if self.truncated:
                d["truncated"] = True
        else:
            if self.entries:
                # A plain PROPFIND/SEARCH listing: tags and uids seen on the wire, not changes.
                d["listed"] = [
                    {"href": e["href"], "tag": e["tag"], "uid": e["uid"]} for e in self.entries
                ]
            if self.token is not None:
                d["token"] = self.token  # a collection's DAV:sync-token property
        if self.invalid_token:
            d["invalid_token"] = True
        if self.content_range is not None:
            cr = self.content_range
            d["content_range"] = {"first": cr.first, "last": cr.last, "total": cr.total}
        for k in ("accept_ranges", "tag", "uid", "location", "ctag"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.nonstandard_ns:
            d["nonstandard_ns"] = list(self.nonstandard_ns)
        if self.notes:
            d["notes"] = list(self.notes)
        if self.malformed:
            d["malformed"] = list(self.malformed)
        if self.problem is not None:
            d["undecodable"] = self.problem.to_dict()
        return d
