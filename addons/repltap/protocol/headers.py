"""WebDAV and Exchange header grammars used by replication: If, Range rows, Content-Range rows,
ResourceTag and Repl-UID.

What may live here: pure functions from header text to typed values. What may not: I/O,
mitmproxy, or any decision about what a message means (that is exchange.py / rfc6578.py).

Every parser raises :class:`HeaderSyntaxError` (a ``ValueError``) with a readable reason on bad
input; the message decoders catch it and report the header as malformed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Python refuses int() of more than 4300 digits; anything above 18 digits is absurd for a row
# number or a total and would only make later arithmetic slow, so refuse it up front.
_MAX_DIGITS = 18


# HTTP's optional whitespace (RFC 9110 §5.6.3). str.strip() with no argument also takes
# non-breaking spaces and other Unicode blanks, which would cut them off a token a peer sent.
OWS = " \t"


class HeaderSyntaxError(ValueError):
    """A header value that does not follow its grammar."""


def strip_coded_url(value: str) -> str:
    """``<rt:abc>`` or ``rt:abc`` (with any surrounding blanks) to ``rt:abc``.

    The SDK shows angle brackets, [MS-WDVME]'s ABNF a bare value (spec §13.17): accept both.
    """
    v = value.strip(OWS)
    if v.startswith("<") and v.endswith(">"):
        v = v[1:-1].strip(OWS)
    return v


# --------------------------------------------------------------------------------------------
# If (RFC 4918 §10.4), as Exchange documents it: untagged or tagged lists, Not, state tokens in
# angle brackets, entity tags in square brackets.


@dataclass(frozen=True)
class IfCondition:
    """One condition of an If list: a state token (``<...>``) or an entity tag (``[...]``)."""

    kind: str  # "token" or "etag"
    value: str  # token without brackets, or the entity tag as written (quotes kept)
    negated: bool = False


@dataclass(frozen=True)
class IfList:
    """One parenthesised list; every condition in it must hold (spec §13.27)."""

    resource: str | None  # the tag of a tagged list, None for an untagged list
    conditions: tuple[IfCondition, ...]


@dataclass(frozen=True)
class IfHeader:
    """A parsed If header: any list may match."""

    lists: tuple[IfList, ...]

    def tokens(self, prefix: str) -> list[str]:
        """State tokens starting with ``prefix`` (``rt:`` or ``rid:``), negated ones excluded."""
        return [
            c.value
            for lst in self.lists
            for c in lst.conditions
            if c.kind == "token" and not c.negated and c.value.lower().startswith(prefix)
        ]

    def negated_tokens(self, prefix: str) -> list[str]:
        """State tokens under ``Not`` that start with ``prefix``."""
        return [
            c.value
            for lst in self.lists
            for c in lst.conditions
            if c.kind == "token" and c.negated and c.value.lower().startswith(prefix)
        ]

    @property
    def etags(self) -> list[str]:
        """Entity tags named in the header."""
        return [c.value for lst in self.lists for c in lst.conditions if c.kind == "etag"]


def parse_if(value: str) -> IfHeader:
    """Parse an If header by the WebDAV grammar."""
    pos, n = 0, len(value)
    lists: list[IfList] = []
    resource: str | None = None
    seen_tagged = seen_untagged = False
    while True:
        while pos < n and value[pos] in " \t":
            pos += 1
        if pos >= n:
            break
        ch = value[pos]
        if ch == "<":
            end = value.find(">", pos)
            if end < 0:
                raise HeaderSyntaxError(f"If: unterminated resource tag at offset {pos}")
            resource = value[pos + 1 : end].strip(OWS)
            seen_tagged = True
            pos = end + 1
            continue
        if ch != "(":
            raise HeaderSyntaxError(f"If: expected '(' or '<' at offset {pos}, found {ch!r}")
        if resource is None:
            seen_untagged = True
        pos += 1
        conditions: list[IfCondition] = []
        negated = False
        while True:
            while pos < n and value[pos] in " \t":
                pos += 1
            if pos >= n:
                raise HeaderSyntaxError("If: a list is not closed with ')'")
            ch = value[pos]
            if ch == ")":
                pos += 1
                break
            if value[pos : pos + 3].lower() == "not":
                if negated:
                    raise HeaderSyntaxError(f"If: 'Not' twice at offset {pos}")
                negated = True
                pos += 3
                continue
            if ch == "<":
                end = value.find(">", pos)
                if end < 0:
                    raise HeaderSyntaxError(f"If: unterminated state token at offset {pos}")
                conditions.append(IfCondition("token", value[pos + 1 : end].strip(OWS), negated))
            elif ch == "[":
                end = value.find("]", pos)
                if end < 0:
                    raise HeaderSyntaxError(f"If: unterminated entity tag at offset {pos}")
                conditions.append(IfCondition("etag", value[pos + 1 : end].strip(OWS), negated))
            else:
                raise HeaderSyntaxError(f"If: unexpected {ch!r} at offset {pos} inside a list")
            negated = False
            pos = end + 1
        if negated:
            raise HeaderSyntaxError("If: 'Not' is not followed by a condition")
        if not conditions:
            raise HeaderSyntaxError("If: an empty list '()'")
        lists.append(IfList(resource, tuple(conditions)))
    if not lists:
        raise HeaderSyntaxError("If: no list")
    if seen_tagged and seen_untagged:
        raise HeaderSyntaxError("If: tagged and untagged lists mixed")
    return IfHeader(tuple(lists))


# --------------------------------------------------------------------------------------------
# Range: rows=... and Content-Range: rows ... (Exchange's row ranges, spec §6.1, §8.7, §14.3)


@dataclass(frozen=True)
class RowRange:
    """One range of rows: ``a-b`` (both), ``a-`` (last None) or ``-n`` (first None, last = n)."""

    first: int | None
    last: int | None

    def __str__(self) -> str:
        if self.first is None:
            return f"-{self.last}"
        return f"{self.first}-" if self.last is None else f"{self.first}-{self.last}"

    @property
    def count(self) -> int | None:
        """How many rows a closed range asks for (None for open ranges)."""
        if self.first is not None and self.last is not None:
            return self.last - self.first + 1
        if self.first is None and self.last is not None:
            return self.last
        return None


def _number(text: str, what: str) -> int:
    t = text.strip(OWS)
    if not t.isdigit() or not t.isascii():
        raise HeaderSyntaxError(f"{what}: {text!r} is not a number")
    if len(t) > _MAX_DIGITS:
        raise HeaderSyntaxError(f"{what}: a number of {len(t)} digits is absurd")
    return int(t)


def parse_range_rows(value: str) -> list[RowRange]:
    """``rows=0-99``, ``rows=100-``, ``rows=-0`` and comma-separated lists of them."""
    unit, sep, spec = value.strip(OWS).partition("=")
    if not sep or unit.strip(OWS).lower() != "rows":
        raise HeaderSyntaxError(f"Range: expected 'rows=...', got {value[:80]!r}")
    out: list[RowRange] = []
    for part in spec.split(","):
        p = part.strip(OWS)
        if not p:
            continue
        a, dash, b = p.partition("-")
        if not dash:
            raise HeaderSyntaxError(f"Range: {p[:40]!r} has no '-'")
        if not a.strip(OWS) and not b.strip(OWS):
            raise HeaderSyntaxError("Range: '-' alone is not a range")
        if not a.strip(OWS):
            out.append(RowRange(None, _number(b, "Range")))
            continue
        first = _number(a, "Range")
        last = _number(b, "Range") if b.strip(OWS) else None
        if last is not None and last < first:
            raise HeaderSyntaxError(f"Range: {p!r} ends before it starts")
        out.append(RowRange(first, last))
    if not out:
        raise HeaderSyntaxError("Range: 'rows=' names no range")
    return out


@dataclass(frozen=True)
class ContentRange:
    """``rows a-b; total=N`` (Exchange) or ``rows a-b/N`` (RFC style); total may be unknown."""

    first: int | None
    last: int | None
    total: int | None

    def __str__(self) -> str:
        span = "*" if self.first is None else f"{self.first}-{self.last}"
        return f"rows {span}" + ("" if self.total is None else f"; total={self.total}")


_CONTENT_RANGE = re.compile(
    r"^\s*rows\s+(?:(?P<a>\d+)\s*-\s*(?P<b>\d+)|\*)\s*"
    r"(?:(?:;\s*total\s*=\s*|/\s*)(?P<t>\d+|\*))?\s*;?\s*$",
    re.IGNORECASE,
)


def parse_content_range_rows(value: str) -> ContentRange:
    """Parse ``Content-Range: rows a-b; total=N`` and its ``/N`` and ``*`` variants."""
    m = _CONTENT_RANGE.match(value)
    if not m:
        raise HeaderSyntaxError(f"Content-Range: expected 'rows a-b; total=N', got {value[:80]!r}")
    a = _number(m["a"], "Content-Range") if m["a"] else None
    b = _number(m["b"], "Content-Range") if m["b"] else None
    t = _number(m["t"], "Content-Range") if m["t"] and m["t"] != "*" else None
    if a is not None and b is not None and b < a:
        raise HeaderSyntaxError(f"Content-Range: {a}-{b} ends before it starts")
    return ContentRange(a, b, t)


@dataclass
class HeaderView:
    """Case-insensitive read access to headers given as a mapping or as (name, value) pairs.

    Repeated headers are joined with ", " as HTTP allows, except If, whose lists concatenate.
    """

    _items: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, headers: object) -> HeaderView:
        """Build a view from a dict, a list of pairs, or anything with ``.items()``/``.fields``."""
        if isinstance(headers, HeaderView):
            return headers
        fields = getattr(headers, "fields", None)  # mitmproxy.http.Headers keeps repeated fields
        if fields is not None:
            # mitmproxy's own headers (bytes), the case of every flow: one quick pass, and the
            # general one below only if a name came twice (the pass kept the last of them).
            try:
                items = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in fields}
            except (AttributeError, TypeError, ValueError):
                pass  # not pairs of bytes
            else:
                if len(items) == len(fields):
                    return cls(items)
        pairs: list[tuple[object, object]]
        if fields is not None:
            pairs = list(fields)
        elif hasattr(headers, "items"):
            pairs = list(headers.items())
        else:
            pairs = list(headers)  # type: ignore[call-overload]
        items = {}
        for k, v in pairs:  # _text inlined: this runs for every header of every flow
            name = (k.decode("latin-1") if type(k) is bytes else _text(k)).lower()
            val = v.decode("latin-1") if type(v) is bytes else _text(v)
            if name in items:
                items[name] = items[name] + (" " if name == "if" else ", ") + val
            else:
                items[name] = val
        return cls(items)

    def get(self, name: str) -> str | None:
        """The value of header ``name`` (any case), or None."""
        return self._items.get(name.lower())

    def lowered(self, *names: str) -> tuple[str | None, ...]:
        """The values of headers ``names``, given in lower case (not lowered again), or None."""
        get = self._items.get
        return tuple([get(n) for n in names])


def _text(v: object) -> str:
    if isinstance(v, bytes):
        return v.decode("latin-1")
    return str(v)
