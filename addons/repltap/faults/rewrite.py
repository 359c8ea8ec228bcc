"""Rewriting replication answers for fault injection: tokens, entries, pages, error bodies.

What may live here: reading a manifest answer (Exchange ``D:multistatus`` with ``R:repl``, or an
RFC 6578 sync-collection ``D:multistatus``) with the one safe parser (protocol/xml.py), changing
it with lxml's element API, and writing it back with the server's own prefixes, XML declaration
and trailing bytes. What may not: deciding *whether* to fault (scenario.py) or mitmproxy.

Only flows a rule fires on are parsed here; every other flow is read once, by the decoder.
"""

from __future__ import annotations

import copy
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any

from lxml import etree

from ..protocol import exchange
from ..protocol import xml as safexml
from ..protocol.model import normalise_path

DAV = "DAV:"
_D = "{DAV:}"
_DIGITS = "0123456789"


class RewriteError(ValueError):
    """The answer cannot be rewritten (not the XML its summary promised)."""


def _local(tag: Any) -> tuple[str, str]:
    """(namespace, lower-case local name) of an lxml tag; ("", "") for comments and PIs."""
    if not isinstance(tag, str):
        return "", ""
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local.lower()
    return "", tag.lower()


def _is_repl(el: etree._Element, name: str) -> bool:
    ns, local = _local(el.tag)
    return ns in exchange.REPL_NAMESPACES and local == name


@dataclass
class Manifest:
    """A parsed manifest answer that can be changed and written back."""

    root: etree._Element
    protocol: str
    target: str  # the request path, normalised: RFC 6578's 507 marker names it
    prolog: bytes  # the XML declaration as the server wrote it, or b""
    trailer: bytes  # whitespace after the root element
    encoding: str

    # ---------------------------------------------------------------- reading
    def entries(self) -> list[etree._Element]:
        """The entries (``D:response`` children of the root), RFC 6578's 507 marker excluded."""
        out = []
        for el in self.root:
            if el.tag != _D + "response":
                continue
            if self.protocol == "rfc6578" and self._is_507_marker(el):
                continue
            out.append(el)
        return out

    def _is_507_marker(self, el: etree._Element) -> bool:
        href = el.findtext(_D + "href")
        status = exchange.parse_status_line(el.findtext(_D + "status"))
        return (
            status == 507
            and href is not None
            and normalise_path(href.strip(safexml.XML_SPACE)) == self.target
        )

    def entry_type(self, el: etree._Element) -> str:
        """new / change / delete, read as the decoder reads it."""
        if self.protocol == "rfc6578":
            status = exchange.parse_status_line(el.findtext(_D + "status"))
            return "delete" if status == 404 else "change"
        ct = self._changetype(el)
        text = (ct.text or "").strip(safexml.XML_SPACE).lower() if ct is not None else ""
        return text if text in ("new", "change", "delete") else "change"

    def _changetype(self, el: etree._Element) -> etree._Element | None:
        return next((c for c in el.iter() if _is_repl(c, "changetype")), None)

    def token_element(self) -> etree._Element | None:
        """``R:repl/R:collblob`` (Exchange) or ``D:sync-token`` (RFC 6578) of the answer."""
        if self.protocol == "rfc6578":
            return self.root.find(_D + "sync-token")
        for child in self.root:
            if _is_repl(child, "repl"):
                return next((c for c in child if _is_repl(c, "collblob")), None)
        return None

    @property
    def token(self) -> str | None:
        el = self.token_element()
        return safexml.text(el)

    def repl_ns(self) -> str:
        """The repl namespace as this server spells it."""
        for el in self.root.iter():
            ns, _ = _local(el.tag)
            if ns in exchange.REPL_NAMESPACES:
                return ns
        return exchange.REPL_NS

    # ---------------------------------------------------------------- changing
    def set_token(self, value: str) -> str | None:
        """Replace the token's text; returns the old token."""
        el = self.token_element()
        if el is None:
            raise RewriteError("the answer carries no token")
        old = safexml.text(el)
        el.text = value or None
        return old

    def remove(self, entries: list[etree._Element]) -> None:
        for el in entries:
            _detach(el)

    def duplicate(self, entries: list[etree._Element]) -> None:
        for el in entries:
            twin = copy.deepcopy(el)
            el.addnext(twin)  # right after the original, as a server repeating itself would
            twin.tail = el.tail

    def reorder(self, order: list[int]) -> None:
        """Put the entries in ``order`` (indexes into :meth:`entries`), in the same slots."""
        entries = self.entries()
        slots = [i for i, c in enumerate(self.root) if any(c is e for e in entries)]
        children = list(self.root)
        tails = [children[i].tail for i in slots]
        for slot, tail, j in zip(slots, tails, order, strict=True):
            children[slot] = entries[j]
            entries[j].tail = tail  # the layout stays; only who sits where changes
        self.root[:] = children

    def set_changetype(self, el: etree._Element, to: str) -> str:
        """Rewrite (or, with ``none``, remove) an entry's changetype; returns the old type."""
        old = self.entry_type(el)
        ct = self._changetype(el)
        if to == "none":
            if ct is not None:
                _detach(ct)
            return old
        if ct is None:
            ct = etree.SubElement(el, f"{{{self.repl_ns()}}}changetype")
        ct.text = to
        return old

    def keep_page(self, start: int, stop: int, token: str, *, truncated: bool) -> None:
        """Keep entries [start, stop), hand out ``token``; RFC 6578 pages that are not the
        last say so with a 507 for the request-URI (RFC 6578 §3.6)."""
        entries = self.entries()
        if self.protocol == "rfc6578":  # the server's own marker, if it truncated too
            self.remove([el for el in self.root if el.tag == _D + "response" and el not in entries])
        self.remove(entries[:start] + entries[stop:])
        self.set_token(token)
        if self.protocol == "rfc6578" and truncated:
            kept = entries[start:stop]
            marker = etree.Element(_D + "response")
            etree.SubElement(marker, _D + "href").text = self.target
            etree.SubElement(marker, _D + "status").text = "HTTP/1.1 507 Insufficient Storage"
            err = etree.SubElement(marker, _D + "error")
            etree.SubElement(err, _D + "number-of-matches-within-limits")
            if kept:
                kept[-1].addnext(marker)
                marker.tail = kept[-1].tail
            else:
                self.root.append(marker)

    # ---------------------------------------------------------------- writing
    def tobytes(self) -> bytes:
        """The document as the server would have written it: its declaration, its prefixes."""
        body = etree.tostring(
            self.root.getroottree(), encoding=self.encoding, xml_declaration=False
        )
        assert isinstance(body, bytes)  # an encoding was given: bytes, never str
        return self.prolog + body + self.trailer


def _detach(el: etree._Element) -> None:
    """Remove an element but keep the whitespace that followed it in its place."""
    parent = el.getparent()
    if parent is None:
        return
    prev = el.getprevious()
    tail = el.tail
    parent.remove(el)
    if tail and not tail.strip():
        return  # indentation: the element's own line goes with it
    if tail:
        if prev is not None:
            prev.tail = (prev.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail


def parse(body: bytes, protocol: str, target: str) -> Manifest:
    """Read a manifest answer for rewriting; raises :class:`RewriteError`."""
    try:
        root = safexml.parse(body)
    except safexml.XmlProblem as e:
        raise RewriteError(e.detail) from None
    if root.tag != _D + "multistatus":
        raise RewriteError(f"the answer's root is {root.tag!r}, not DAV:multistatus")
    prolog = b""
    head = body.lstrip(b"\xef\xbb\xbf")
    bom = body[: len(body) - len(head)]
    if head.startswith(b"<?xml"):
        end = head.find(b"?>")
        if end > 0:
            # Keep the newline (if any) after the declaration, as the server wrote it.
            rest = head[end + 2 :]
            gap = rest[: len(rest) - len(rest.lstrip())]
            prolog = bom + head[: end + 2] + gap
    encoding = root.getroottree().docinfo.encoding or "UTF-8"
    trailer = body[len(body.rstrip()) :]
    return Manifest(root, protocol, normalise_path(target), prolog, trailer, encoding)


# --------------------------------------------------------------------------------------------
# Tokens


def corrupt(token: str, mode: str, rng: random.Random) -> str:
    """A token the server will not recognise.

    ``flip`` changes the middle character of the token's opaque part to its neighbour in the
    same class (digits, a-f, g-z, A-F, G-Z), so hex stays hex and base64 stays base64, and a
    signed token fails its check;
    ``garbage`` keeps the length but not the content; ``empty`` hands out nothing.
    """
    if mode == "empty":
        return ""
    if mode == "garbage":
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        return "".join(rng.choice(alphabet) for _ in range(max(8, len(token))))
    # The opaque part: after the last "/", ":" or "," (URI-shaped and data: tokens), so the
    # scheme and host of a token like http://radicale.org/ns/sync/<hash> stay as they were.
    # Not for base64 ("/" is one of its letters): next to "=" padding a changed letter may only
    # change bits a decoder throws away, so there the middle of the whole token is changed.
    cut = max(token.rfind(c) for c in "/:,") + 1
    if len(token) - cut < 2 or "=" in token[cut:]:
        cut = 0
    i = cut + (len(token) - cut) // 2
    for j in [*range(i, len(token)), *range(i - 1, -1, -1)]:  # the nearest letter or digit
        c = token[j]
        for cls in (_DIGITS, "abcdef", "ghijklmnopqrstuvwxyz", "ABCDEF", "GHIJKLMNOPQRSTUVWXYZ"):
            if c in cls:
                return token[:j] + cls[(cls.index(c) + 1) % len(cls)] + token[j + 1 :]
    return token + "x"


_PAGE_TOKEN = re.compile(r"repltap-page-([1-9][0-9]{0,8})-of-([1-9][0-9]{0,8})-([0-9a-f]{16})")


def split_id(final: str, rows: int, body: bytes) -> str:
    """The name of one split answer, carried by each of its page tokens: the same for the same
    answer split the same way (so the same traffic gives the same bytes), and different for two
    answers that end in the same token (two clients at one collblob with different acks)."""
    h = hashlib.sha256(final.encode("utf-8", "surrogatepass"))
    h.update(f"\0{rows}\0".encode())
    h.update(body)
    return h.hexdigest()[:16]


def mint_page_token(split: str, page: int, pages: int) -> str:
    """The token handed out with page ``page`` of ``pages`` of the split answer ``split``:
    recognisably ours, never one the server issued."""
    return f"repltap-page-{page}-of-{pages}-{split}"


def read_page_token(token: str) -> tuple[str, int, int] | None:
    """(split, page, pages) of a token :func:`mint_page_token` made; None for any other."""
    m = _PAGE_TOKEN.fullmatch(token)
    if m is None or int(m[1]) >= int(m[2]):
        return None
    return m[3], int(m[1]), int(m[2])


# --------------------------------------------------------------------------------------------
# Error bodies in the server's own style


def invalid_sync_token_body(dav_prefix: str | None, description: str | None) -> bytes:
    """An RFC 6578 ``DAV:error`` with the ``valid-sync-token`` precondition, using the prefix the
    server uses for ``DAV:`` (None: the default namespace)."""
    nsmap = {dav_prefix: DAV}
    root = etree.Element(_D + "error", nsmap=nsmap)  # type: ignore[arg-type]  # None: default ns
    etree.SubElement(root, _D + "valid-sync-token")
    if description:
        etree.SubElement(root, _D + "responsedescription").text = description
    out: bytes = etree.tostring(root, xml_declaration=True, encoding="utf-8")
    return out


def dav_prefix(body: bytes) -> str | None:
    """The prefix an XML answer binds to ``DAV:`` (None for a default namespace or none)."""
    try:
        root = safexml.parse(body)
    except safexml.XmlProblem:
        return "D"
    return dav_prefix_of(root)


def dav_prefix_of(root: etree._Element) -> str | None:
    """:func:`dav_prefix` of an answer already parsed."""
    for prefix, ns in root.nsmap.items():
        if ns == DAV:
            return prefix
    return "D"


def pick(n: int, k: int, which: str, rng: random.Random) -> list[int]:
    """``k`` of ``range(n)``: the first, the last, or a seeded random choice (sorted)."""
    k = max(0, min(k, n))
    if which == "first":
        return list(range(k))
    if which == "last":
        return list(range(n - k, n))
    return sorted(rng.sample(range(n), k))
