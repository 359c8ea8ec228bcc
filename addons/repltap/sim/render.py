"""XML the reference server writes: multistatus bodies shaped like Exchange's.

What may live here: building response documents with lxml's element API (never parsing: that is
repltap.protocol.xml's job). What may not: deciding what goes in them.

Exchange generates its own prefixes per response, in order of first use: ``a:`` for ``DAV:``,
``b:`` for the datatypes namespace, then ``c:``, ``d:``… (spec §2.3). The server does the same so
that clients (and the proxy) meet realistic prefixes rather than the ``D:``/``R:`` of the docs.
Typed values carry ``b:dt`` as Exchange's do.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

from lxml import etree

from .store import DATE_PROPS, DAV, REPL_NS

DATATYPES_NS = "urn:uuid:c2f41010-65b3-11d1-a29f-00aa00c14882/"
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
REASONS = {200: "OK", 403: "Forbidden", 404: "Resource Not Found", 424: "Failed Dependency"}

Value = str | int | float | bool | None


def href(base: str, path: str) -> str:
    """The absolute URL of ``path`` on ``base`` (``http://host:port``), percent-encoded."""
    return base + quote(path, safe=_PATH_SAFE)


def _split(clark: str) -> tuple[str, str]:
    ns, _, local = clark[1:].partition("}")
    return ns, local


class Multistatus:
    """A ``DAV:multistatus`` document under construction."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        spaces = [DAV, DATATYPES_NS]
        for n in names:
            ns = _split(n)[0] if n.startswith("{") else ""
            if ns and ns not in spaces:
                spaces.append(ns)
        if REPL_NS not in spaces:
            spaces.append(REPL_NS)
        self.nsmap = {_prefix(i): ns for i, ns in enumerate(spaces)}
        self.root = etree.Element(f"{{{DAV}}}multistatus", nsmap=self.nsmap)

    def repl(self, token: str | None) -> None:
        """``<R:repl><R:collblob>token</R:collblob></R:repl>``, or the empty ``<R:repl/>``."""
        el = etree.SubElement(self.root, f"{{{REPL_NS}}}repl")
        if token is not None:
            etree.SubElement(el, f"{{{REPL_NS}}}collblob").text = token

    def response(
        self,
        url: str | None,
        found: list[tuple[str, str | None, Value]],
        missing: list[tuple[str, str | None]] = (),  # type: ignore[assignment]
        changetype: str | None = None,
    ) -> None:
        """One ``DAV:response``: ``found`` as (name, alias, value) in a 200 propstat, ``missing``
        as (name, alias) in a 404 propstat, then ``R:changetype`` as a direct child after the
        propstats (spec §13.3's recommended position). ``url`` None writes an empty href."""
        resp = etree.SubElement(self.root, f"{{{DAV}}}response")
        h = etree.SubElement(resp, f"{{{DAV}}}href")
        if url is not None:
            h.text = url
        if found:
            prop = self._propstat(resp, 200)
            for name, alias, value in found:
                self._value(etree.SubElement(prop, alias or name), name, value)
        if missing:
            prop = self._propstat(resp, 404)
            for name, alias in missing:
                etree.SubElement(prop, alias or name)
        if changetype is not None:
            etree.SubElement(resp, f"{{{REPL_NS}}}changetype").text = changetype

    def status_response(self, url: str, by_status: dict[int, list[str]]) -> None:
        """A response listing property names per status (PROPPATCH results)."""
        resp = etree.SubElement(self.root, f"{{{DAV}}}response")
        etree.SubElement(resp, f"{{{DAV}}}href").text = url
        for status, names in by_status.items():
            prop = self._propstat(resp, status)
            for name in names:
                etree.SubElement(prop, name)

    def _propstat(self, resp: etree._Element, status: int) -> etree._Element:
        ps = etree.SubElement(resp, f"{{{DAV}}}propstat")
        etree.SubElement(ps, f"{{{DAV}}}status").text = f"HTTP/1.1 {status} {REASONS[status]}"
        return etree.SubElement(ps, f"{{{DAV}}}prop")

    def _value(self, el: etree._Element, name: str, value: Value) -> None:
        dt = f"{{{DATATYPES_NS}}}dt"
        if name == f"{{{DAV}}}resourcetype":
            if value:
                etree.SubElement(el, f"{{{DAV}}}collection")
            return
        if isinstance(value, bool):
            el.set(dt, "boolean")
            el.text = "1" if value else "0"
        elif isinstance(value, int):
            el.set(dt, "int")
            el.text = str(value)
        elif value is not None:
            if name in DATE_PROPS:
                el.set(dt, "dateTime.tz")
            el.text = str(value)

    def tobytes(self) -> bytes:
        """The document, UTF-8, with an XML declaration."""
        return etree.tostring(self.root, xml_declaration=True, encoding="utf-8")


def _prefix(i: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return letters[i] if i < 26 else letters[i // 26 - 1] + letters[i % 26]
