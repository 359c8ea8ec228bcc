"""Signed collblobs: round trip, and every way of being invalid."""

from __future__ import annotations

import base64

import pytest

from repltap.sim import collblob

KEY = b"k" * 32
STATE = collblob.State("abcd", "/exchange/alice/Inbox/", "shallow", "SELECT …", 42, (45, 47))


def test_round_trip_and_shape() -> None:
    text = collblob.encode(STATE, KEY)
    assert collblob.decode(text, KEY) == STATE
    base64.b64decode(text, validate=True)  # base64, like Exchange's
    assert 40 < len(text) < 400
    other = collblob.encode(collblob.State(**{**STATE.__dict__, "watermark": 43}), KEY)
    assert other[:8] != text[:8]  # distinguishable in one-line displays


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not base64!", "not base64"),
        ("AAAA", "unknown format"),
        ("é", "not base64"),
        ("A" * 70000, "far too long"),
    ],
)
def test_garbage(text: str, reason: str) -> None:
    with pytest.raises(collblob.InvalidCollblob, match=reason):
        collblob.decode(text, KEY)


def test_tampered_and_foreign() -> None:
    text = collblob.encode(STATE, KEY)
    raw = bytearray(base64.b64decode(text))
    raw[-1] ^= 1
    with pytest.raises(collblob.InvalidCollblob, match="altered or issued by another server"):
        collblob.decode(base64.b64encode(bytes(raw)).decode(), KEY)
    with pytest.raises(collblob.InvalidCollblob, match="another server"):
        collblob.decode(text, b"x" * 32)
