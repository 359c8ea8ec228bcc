"""Collblobs the reference server can validate: signed, opaque, self-contained.

What may live here: encoding a :class:`State` into the text a client stores, and decoding and
checking such text. What may not: deciding what a valid state means for a collection (store.py).

Design: a collblob is ``base64( HMAC-SHA256(key, body)[:16] | body )`` with
``body = 0x01 | zlib(JSON state)``; the MAC comes first so that two collblobs differ from their
first characters (one-line displays show a token's head and tail).
The JSON state holds the scope collection's incarnation id, the scope, the whole SQL statement
(so a SEARCH that carries only a collblob can reuse its query, spec §8.10), the watermark (the
global change sequence number the client has consumed up to) and the sequence numbers of changes
past the watermark that the client acknowledged in a resourcetaglist (so a later page does not
report them, whether or not the client repeats the list). The HMAC makes a tampered collblob or
one signed by another server (another --data directory) fail validation: 475 (spec §13.9).
The result looks like Exchange's base64 collblobs and is tens to a few hundred bytes long.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import zlib
from dataclasses import dataclass, field

_VERSION = b"\x01"
_MAC_LEN = 16
_MAX_LEN = 64 * 1024  # a collblob longer than this is not one of ours


class InvalidCollblob(ValueError):
    """The collblob cannot be used; the message says why (for the 475 body and the log)."""


@dataclass(frozen=True)
class State:
    """What a collblob remembers."""

    incarnation: str  # of the scope collection: changes when it is deleted and re-created
    scope: str  # the scope collection's path
    depth: str  # shallow | deep | hierarchical | propfind-1 | propfind-infinity
    sql: str  # the statement (or PROPFIND form) the collblob is bound to
    watermark: int  # every change with a sequence number <= watermark has been consumed
    acked: tuple[int, ...] = field(default=())  # consumed changes past the watermark


def encode(state: State, key: bytes) -> str:
    """The collblob text for ``state``, signed with ``key``."""
    doc = {
        "i": state.incarnation,
        "p": state.scope,
        "d": state.depth,
        "q": state.sql,
        "w": state.watermark,
        "a": sorted(set(state.acked)),
    }
    body = _VERSION + zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 9)
    mac = hmac.new(key, body, hashlib.sha256).digest()[:_MAC_LEN]
    return base64.b64encode(mac + body).decode("ascii")


def decode(text: str, key: bytes) -> State:
    """The state in ``text``; raises :class:`InvalidCollblob` when it is not ours or damaged."""
    if len(text) > _MAX_LEN:
        raise InvalidCollblob("the collblob is far too long to be one of this server's")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidCollblob("the collblob is not base64: not one of this server's") from None
    mac, body = raw[:_MAC_LEN], raw[_MAC_LEN:]
    if len(raw) <= len(_VERSION) + _MAC_LEN or not body.startswith(_VERSION):
        raise InvalidCollblob("the collblob has an unknown format: not one of this server's")
    want = hmac.new(key, body, hashlib.sha256).digest()[:_MAC_LEN]
    if not hmac.compare_digest(mac, want):
        raise InvalidCollblob(
            "the collblob's signature does not match: it was altered or issued by another server"
        )
    try:
        doc = json.loads(zlib.decompress(body[len(_VERSION) :], bufsize=4096))
        acked = doc["a"]
        state = State(
            incarnation=str(doc["i"]),
            scope=str(doc["p"]),
            depth=str(doc["d"]),
            sql=str(doc["q"]),
            watermark=int(doc["w"]),
            acked=tuple(int(a) for a in acked),
        )
    except (zlib.error, ValueError, KeyError, TypeError) as e:
        # Signed but unreadable can only be a bug of ours; still answer 475, never a crash.
        raise InvalidCollblob(f"the collblob is signed but unreadable ({e})") from None
    return state
