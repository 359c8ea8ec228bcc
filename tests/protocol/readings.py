"""The three ways a multistatus body is read (protocol/xml.py): as one tree, in pieces (bodies
over STREAM_ABOVE), or as a stream (bodies that cannot be cut). Every one must read alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from repltap.protocol import xml as safexml

MODES = ("tree", "pieces", "stream")


def _refuse(*_: Any, **__: Any) -> Iterator[Any]:
    raise safexml.NotInPieces("forced by the test")
    yield  # pragma: no cover


@contextmanager
def reading(mode: str) -> Iterator[None]:
    """Read every body the ``mode`` way: ``pieces`` cuts after every response (one byte a
    piece), ``stream`` refuses the pieces so the stream reader runs (for RFC 6578, which has
    no stream reader, the whole tree)."""
    saved = safexml.STREAM_ABOVE, safexml.PIECE_BYTES, safexml.parse_pieces
    try:
        if mode != "tree":
            safexml.STREAM_ABOVE = 0
        if mode == "pieces":
            safexml.PIECE_BYTES = 1
        elif mode == "stream":
            safexml.parse_pieces = _refuse  # type: ignore[assignment]
        yield
    finally:
        safexml.STREAM_ABOVE, safexml.PIECE_BYTES, safexml.parse_pieces = saved
