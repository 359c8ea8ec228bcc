"""The one XML parser of repltap, and it is safe.

What may live here: turning untrusted bytes into an lxml tree, and pretty-printing for display.
What may not: any protocol meaning. No I/O, no mitmproxy.

Safety rules (each one tested in tests/protocol/test_xml.py):
- no entity expansion (``resolve_entities=False``) and any document with a DTD is refused, so
  billion-laughs, quadratic blow-up and XXE payloads are never expanded or fetched;
- no network and no DTD loading;
- bounded depth (libxml2's own limit of 256 levels without ``huge_tree``) and a bounded size
  (``max_bytes``), and libxml2's default limits on text node size.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lxml import etree

DEFAULT_MAX_BYTES = 100 * 1024 * 1024

# A parser object must not be shared between threads, and building one costs microseconds, so
# every call builds its own.
_PARSER_OPTS = dict(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    collect_ids=False,
)


class XmlProblem(Exception):
    """Raised by :func:`parse` when bytes cannot be read as a safe XML document."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Undecodable:
    """Why a body could not be decoded; carried instead of a meaning, never raised."""

    reason: str  # stable code: empty-body, not-xml, malformed-xml, dtd-forbidden, too-large, ...
    detail: str  # one readable sentence

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "detail": self.detail}


# XML's whitespace (XML 1.0 §2.3, S). Element text is trimmed of these only: str.strip() with no
# argument also takes non-breaking spaces and other Unicode blanks, which are part of a token.
XML_SPACE = " \t\r\n"


def text(el: etree._Element | None) -> str | None:
    """An element's text trimmed of XML whitespace; None for no element or no text."""
    if el is None or el.text is None:
        return None
    return el.text.strip(XML_SPACE) or None


def looks_like_xml(data: bytes) -> bool:
    """Cheap sniff: the first non-blank byte opens a tag (BOMs allowed)."""
    head = data[:64].lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 BOM
        return True
    return head.startswith(b"<")


def _parser(**extra: bool) -> etree.XMLParser:
    return etree.XMLParser(**_PARSER_OPTS, **extra)  # type: ignore[arg-type]


def parse(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    remove_blank_text: bool = False,
) -> etree._Element:
    """Parse ``data`` safely and return the root element, or raise :class:`XmlProblem`."""
    if not data or data.isspace():  # isspace: no copy of a large body
        raise XmlProblem("empty-body", "the body is empty")
    if len(data) > max_bytes:
        raise XmlProblem(
            "too-large", f"the body is {len(data)} bytes, more than the {max_bytes}-byte limit"
        )
    if not looks_like_xml(data):
        raise XmlProblem("not-xml", "the body does not start with an XML tag")
    try:
        root = etree.fromstring(data, _parser(remove_blank_text=remove_blank_text))
    except etree.XMLSyntaxError as e:
        raise XmlProblem(_classify(str(e)), f"the XML is not well-formed: {e}") from None
    except (ValueError, LookupError) as e:  # unknown encoding names and the like
        raise XmlProblem("invalid-encoding", f"the XML cannot be decoded: {e}") from None
    if root.getroottree().docinfo.doctype:  # type: ignore[union-attr]  # doctype: not in lxml-stubs
        # Entities were not expanded, but a DTD in a protocol message is never legitimate and is
        # the carrier of every entity attack: refuse the document rather than half-read it.
        raise XmlProblem("dtd-forbidden", "the document declares a DTD, which is not allowed")
    return root


# Above this size a multistatus is not held as one tree, which costs about 4.6 times the body
# (a 50 MB manifest must not cost three): it is read in pieces (:func:`parse_pieces`), or as a
# stream (:func:`iterparse`, slower) when it cannot be cut. Pieces are also faster than one big
# tree, which a walk reads with poor cache locality.
STREAM_ABOVE = 1024 * 1024


def iterparse(
    data: bytes, tags: Sequence[str], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[etree._Element]:
    """Stream the elements named by ``tags`` (lxml tag patterns), each when it ends.

    The same safety as :func:`parse`. The caller may delete elements it is done with (earlier
    siblings of the one yielded) to keep memory flat. Raises :class:`XmlProblem`, possibly after
    yielding some elements: a caller must discard what it read when that happens.
    """
    if not data or data.isspace():
        raise XmlProblem("empty-body", "the body is empty")
    if len(data) > max_bytes:
        raise XmlProblem(
            "too-large", f"the body is {len(data)} bytes, more than the {max_bytes}-byte limit"
        )
    if not looks_like_xml(data):
        raise XmlProblem("not-xml", "the body does not start with an XML tag")
    ctx = etree.iterparse(io.BytesIO(data), events=("end",), tag=list(tags), **_PARSER_OPTS)
    checked = False
    try:
        for _, el in ctx:
            if not checked:
                _refuse_dtd(el)
                checked = True
            yield el
        if not checked and ctx.root is not None:
            _refuse_dtd(ctx.root)
    except etree.XMLSyntaxError as e:
        raise XmlProblem(_classify(str(e)), f"the XML is not well-formed: {e}") from None
    except (ValueError, LookupError) as e:
        raise XmlProblem("invalid-encoding", f"the XML cannot be decoded: {e}") from None


# Reading in pieces: a large multistatus is a root holding many small siblings, so it can be
# cut between two of them and each piece parsed as a tree of its own (the prologue and the
# root's start tag in front, the root's end tag behind). That keeps the C parser's speed and
# the tree walk of small bodies while holding one piece at a time. A cut goes right after a
# `</response>` end tag (any prefix). Where that end tag is not the end of a child of the root
# (inside a comment, a CDATA section, a deeper element), the pieces around it are not
# well-formed, so a wrong cut can only fail, never change the meaning: any piece that does not
# parse makes the whole body be read again as a stream, which gives the right error.
PIECE_BYTES = 256 * 1024
_SPLIT_ENCODINGS = frozenset(
    ("utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1", "windows-1252")
)
_DECL_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_ROOT_START = re.compile(
    rb"<([A-Za-z_][\w.-]*(?::[A-Za-z_][\w.-]*)?)"
    rb"""(?:\s+[^\s=<>/]+\s*=\s*(?:"[^"<]*"|'[^'<]*'))*\s*>"""
)
_CLOSE_RESPONSE = re.compile(rb"</(?:[A-Za-z_][\w.-]*:)?response\s*>")
_PROLOGUE_MAX = 64 * 1024


class NotInPieces(Exception):
    """The body cannot be read in pieces (its shape or encoding, or a piece that does not
    parse): read it as a stream instead, which also gives the exact error."""


def _root_span(data: bytes) -> tuple[int, int, bytes]:
    """(end of the root's start tag, start of its end tag, its qualified name)."""
    if data[:2] in (b"\xfe\xff", b"\xff\xfe") or b"\x00" in data[:4]:
        raise NotInPieces("a UTF-16 or UTF-32 body")
    pos = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    while pos < _PROLOGUE_MAX:
        while data[pos : pos + 1].isspace():
            pos += 1
        if data.startswith(b"<?", pos):
            end = data.find(b"?>", pos)
            if end < 0:
                raise NotInPieces("an unterminated processing instruction")
            m = _DECL_ENCODING.search(data, pos, end) if data.startswith(b"<?xml", pos) else None
            if m is not None and m.group(1).decode().lower() not in _SPLIT_ENCODINGS:
                raise NotInPieces(f"the {m.group(1).decode()!r} encoding")
            pos = end + 2
        elif data.startswith(b"<!--", pos):
            end = data.find(b"-->", pos)
            if end < 0:
                raise NotInPieces("an unterminated comment")
            pos = end + 3
        elif data.startswith(b"<!", pos):
            raise NotInPieces("a document type declaration")  # refused by the stream reader
        else:
            break
    m = _ROOT_START.match(data, pos)
    if m is None:
        raise NotInPieces("no root start tag that can be read")
    name = m.group(1)
    close = data.rfind(b"</" + name)
    if close < m.end() or data[close + 2 + len(name) :].strip() not in (b">",):
        raise NotInPieces("the root's end tag is not the last thing in the body")
    return m.end(), close, name


def parse_pieces(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, piece_bytes: int | None = None
) -> Iterator[etree._Element]:
    """Parse ``data`` one piece of about ``piece_bytes`` at a time, yielding each piece's root
    (a copy of the document's root holding that piece's children). The same safety as
    :func:`parse`. Raises :class:`XmlProblem` when the body is too large and
    :class:`NotInPieces`, possibly after yielding some pieces, when it cannot be read so: a
    caller then discards what it read and falls back to :func:`iterparse`."""
    if len(data) > max_bytes:
        raise XmlProblem(
            "too-large", f"the body is {len(data)} bytes, more than the {max_bytes}-byte limit"
        )
    if piece_bytes is None:
        piece_bytes = PIECE_BYTES
    start, end, name = _root_span(data)
    head, tail = data[:start], b"</" + name + b">"
    parser = _parser()
    pos = start
    while pos < end:
        m = _CLOSE_RESPONSE.search(data, pos + piece_bytes, end)
        cut = end if m is None else m.end()
        try:
            root = etree.fromstring(head + data[pos:cut] + tail, parser)
        except (etree.XMLSyntaxError, ValueError, LookupError) as e:
            raise NotInPieces(f"a piece does not parse: {e}") from None
        yield root  # no DTD can be in it: _root_span refused any in the prologue
        pos = cut


def _refuse_dtd(el: etree._Element) -> None:
    if el.getroottree().docinfo.doctype:  # type: ignore[attr-defined]  # not in lxml-stubs
        raise XmlProblem("dtd-forbidden", "the document declares a DTD, which is not allowed")


def _classify(message: str) -> str:
    m = message.lower()
    if "excessive depth" in m or ("depth" in m and "huge" in m):
        return "too-deep"
    if "encoding" in m or "utf-8" in m or "input is not proper" in m or "bytes:" in m:
        return "invalid-encoding"
    if "premature end" in m or "end of data" in m or ("extra content" not in m and "eof" in m):
        return "truncated"
    if "entity" in m or "doctype" in m or "dtd" in m:
        return "dtd-forbidden"
    return "malformed-xml"


def pretty(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Pretty-print an XML body for display (prefixes kept); raises :class:`XmlProblem`."""
    root = parse(data, max_bytes=max_bytes, remove_blank_text=True)
    return etree.tostring(root, pretty_print=True, encoding="unicode")
