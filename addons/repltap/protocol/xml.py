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


# Above this size a body is read as a stream: a full lxml tree costs about 4.6 times the body,
# a stream about once (what a 50 MB manifest must not exceed three times), at some speed.
STREAM_ABOVE = 16 * 1024 * 1024


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
