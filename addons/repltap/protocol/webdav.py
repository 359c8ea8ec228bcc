"""Plain WebDAV pieces both replication protocols share: conditions, status lines, tokens.

What may live here: reading headers and elements every WebDAV request or multistatus has. What
may not: anything specific to Exchange's repl namespace or RFC 6578's sync-collection.
"""

from __future__ import annotations

from lxml import etree

from .headers import HeaderSyntaxError, HeaderView, parse_if
from .model import Condition, Request


def parse_status_line(text: str | None) -> int | None:
    """``HTTP/1.1 404 Not Found`` to 404; None when unreadable."""
    if not text:
        return None
    parts = text.split()
    # isascii: str.isdigit() also takes "²" and other digits int() refuses
    if len(parts) >= 2 and parts[1].isascii() and parts[1].isdigit() and len(parts[1]) == 3:
        return int(parts[1])
    return None


def read_condition(h: HeaderView, malformed: list[str]) -> Condition:
    raw_if = h.get("if")
    tags: list[str] = []
    uids: list[str] = []
    not_tags: list[str] = []
    not_uids: list[str] = []
    etags: list[str] = []
    if raw_if is not None:
        try:
            parsed = parse_if(raw_if)
        except HeaderSyntaxError as e:
            malformed.append(f"If header not read: {e}")
        else:
            tags, uids = parsed.tokens("rt:"), parsed.tokens("rid:")
            not_tags, not_uids = parsed.negated_tokens("rt:"), parsed.negated_tokens("rid:")
            etags = parsed.etags
    return Condition(
        raw_if=raw_if,
        tags=tuple(tags),
        uids=tuple(uids),
        not_tags=tuple(not_tags),
        not_uids=tuple(not_uids),
        etags=tuple(etags),
        if_match=h.get("if-match"),
        if_none_match=h.get("if-none-match"),
        if_schedule_tag_match=h.get("if-schedule-tag-match"),
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
    elif not raw.strip():
        req.token_form = "whitespace"
    else:
        req.token_form = "text"
        req.token = raw.strip()
