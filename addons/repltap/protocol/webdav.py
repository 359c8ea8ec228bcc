"""Plain WebDAV pieces both replication protocols share: conditions, status lines, tokens.

What may live here: reading headers and elements every WebDAV request or multistatus has. What
may not: anything specific to Exchange's repl namespace or RFC 6578's sync-collection.
"""

from __future__ import annotations

import re

from lxml import etree

from .headers import OWS, HeaderSyntaxError, HeaderView, parse_if
from .model import Condition, Request
from .xml import XML_SPACE


def parse_status_line(text: str | None) -> int | None:
    """``HTTP/1.1 404 Not Found`` to 404; None when unreadable."""
    if not text:
        return None
    parts = text.split()
    # isascii: str.isdigit() also takes "²" and other digits int() refuses
    if len(parts) >= 2 and parts[1].isascii() and parts[1].isdigit() and len(parts[1]) == 3:
        return int(parts[1])
    return None


# The If header nearly every replication request carries: one untagged list of one state token,
# ``(<rt:...>)``. It is read without the general parser; what the general parser would make of
# it is the same (tests/protocol/test_headers.py checks the two agree on generated headers).
_ONE_TOKEN = re.compile(r"[ \t]*\([ \t]*<([^<>]*)>[ \t]*\)[ \t]*")
_NO_CONDITION = Condition()
_NONE4 = (None, None, None, None)


def read_condition(h: HeaderView, malformed: list[str]) -> Condition:
    values = h.lowered("if", "if-match", "if-none-match", "if-schedule-tag-match")
    if values == _NONE4:
        return _NO_CONDITION  # immutable: one instance serves every request without one
    raw_if, if_match, if_none_match, if_schedule_tag_match = values
    tags: tuple[str, ...] = ()
    uids: tuple[str, ...] = ()
    lists: tuple[tuple[str, ...], ...] = ((), (), (), (), ())
    if raw_if is not None:
        one = _ONE_TOKEN.fullmatch(raw_if)
        if one is not None:
            token = one[1].strip(OWS)
            low = token.lower()
            if low.startswith("rt:"):
                tags = (token,)
            elif low.startswith("rid:"):
                uids = (token,)
        else:
            try:
                lists = _sorted_if(raw_if)
            except HeaderSyntaxError as e:
                malformed.append(f"If header not read: {e}")
            tags, uids = lists[0], lists[1]
    return Condition(  # positionally: a named tuple is made faster so, once per request
        raw_if,
        tags,
        uids,
        lists[2],  # not_tags
        lists[3],  # not_uids
        lists[4],  # etags
        if_match,
        if_none_match,
        if_schedule_tag_match,
    )


def _sorted_if(raw_if: str) -> tuple[tuple[str, ...], ...]:
    """An If header's state tokens and entity tags: (rt:, rid:, Not rt:, Not rid:, etags)."""
    parsed = parse_if(raw_if)
    return (
        tuple(parsed.tokens("rt:")),
        tuple(parsed.tokens("rid:")),
        tuple(parsed.negated_tokens("rt:")),
        tuple(parsed.negated_tokens("rid:")),
        tuple(parsed.etags),
    )


def read_token(req: Request, el: etree._Element | None, missing: str) -> None:
    """Set the request's token and token form from its token element (collblob, sync-token).

    An empty element, empty text, whitespace only and a missing element all mean an initial
    sync (spec §13.6); only surrounding whitespace is removed from a token (spec §25).
    """
    if el is None:
        req.token_form = "missing"
        req.notes.append(missing)
        return
    raw = el.text
    if raw is None:
        req.token_form = "empty-element"
    elif not raw.strip(XML_SPACE):
        req.token_form = "whitespace"
    else:
        req.token_form = "text"
        req.token = raw.strip(XML_SPACE)
