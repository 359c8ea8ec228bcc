"""normalise_path's one-regex fast path (the tracker calls it once per manifest entry) gives what
the general code gives, for every input: checked against the general code as it was before the
fast path, and on inputs built to make a backtracking regex blow up."""

from __future__ import annotations

import re
import time
from urllib.parse import quote, unquote

from hypothesis import example, given, settings
from hypothesis import strategies as st

from repltap.protocol.model import normalise_path

_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_PATH_SAFE_CHARS = frozenset(_PATH_SAFE) | frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
)
_URL_HEAD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
_CLEAN_PATH = re.compile(r"[A-Za-z0-9/:@!$&'()*+,;=._~%-]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _normal_escape(m: re.Match[str]) -> str:
    ch = chr(int(m[1], 16))
    return ch if ch in _PATH_SAFE_CHARS and ch != "/" else "%" + m[1].upper()


def reference(path_or_url: str) -> str:
    """normalise_path as it was before its one-regex fast path (commit 47b12f0), with an escaped
    "/" kept as %2F."""
    p = path_or_url
    if p.startswith(("http://", "https://")):
        i = p.find("/", 8)
        p = p[i:] if i >= 0 else "/"
    elif "://" in p[:24]:
        head = _URL_HEAD.match(p)
        if head is not None:
            p = p[head.end() :] or "/"
    if "?" in p or "#" in p:
        p = p.split("#", 1)[0].split("?", 1)[0]
    if _CLEAN_PATH.fullmatch(p):
        if "%" not in p:
            return p
        if not _BAD_ESCAPE.search(p):
            return _ESCAPE.sub(_normal_escape, p)
    return "%2F".join(
        quote(unquote(part, errors="surrogateescape"), safe=_PATH_SAFE, errors="surrogateescape")
        for part in re.split("%2[Ff]", p)
    )


# Pieces that sit on the fast path's edges: scheme heads, every kind of escape (normal, lower
# case, of a safe character, cut short), query and fragment marks, non-ASCII and surrogates.
PIECES = st.sampled_from(
    [
        "http://",
        "https://",
        "HTTP://",
        "ftp://",
        "http:/",
        "h",
        "host:80",
        "/",
        "//",
        "a",
        "Z9",
        "-._~",
        ":@!$&'()*+,;=",
        "%",
        "%2",
        "%20",
        "%2f",
        "%2F",
        "%41",
        "%e9",
        "%E9",
        "%C3%A9",
        "%7E",
        "%7e",
        "%25",
        "%GG",
        "?",
        "#",
        "?q=1",
        " ",
        '"',
        "é",
        "\udce9",
        "\n",
        "\x00",
        "[::1]",
    ]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(PIECES, max_size=12).map("".join))
@example("http:///a/b")
@example("http://a")
@example("https://")
@example("http://h/a%20b%2Fc")
@example("/a%3A%3a")
def test_fast_path_gives_what_the_general_code_gives(s: str) -> None:
    assert normalise_path(s) == reference(s)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_any_text(s: str) -> None:
    assert normalise_path(s) == reference(s)


def test_inputs_that_would_make_a_backtracking_regex_blow_up() -> None:
    t = time.process_time()
    for s in (
        "/" + "a" * 50_000 + "%2b",
        "http://h/" + "a%20" * 20_000 + "%2b",
        "http://h" + "x" * 50_000,
        "/" + "a/" * 30_000 + " ",
        "https://" + "h" * 50_000 + "/" + "%20a" * 10_000 + "%",
    ):
        assert normalise_path(s) == reference(s)
    assert time.process_time() - t < 5  # exponential backtracking would take hours


def test_an_escaped_slash_is_data_not_a_separator() -> None:
    """RFC 3986 §2.2: "/a%2Fb" is one segment, "/a/b" two; the tracker must not make them one
    resource. Every other escape of a character a path needs no escape for is decoded."""
    assert normalise_path("/c/a%2Fb") == "/c/a%2Fb"
    assert normalise_path("/c/a%2fb") == "/c/a%2Fb"  # case only: one resource
    assert normalise_path("/c/a%2Fb") != normalise_path("/c/a/b")
    assert normalise_path("http://h/c/a%2Fb%20c%41") == "/c/a%2Fb%20cA"
    assert normalise_path("/c/a b%2fé") == "/c/a%20b%2F%C3%A9"  # the general path keeps it too
    assert normalise_path("/c/%%2F") == "/c/%25%2F"
    assert normalise_path("/c/a%252Fb") == "/c/a%252Fb"  # an escaped "%", then "2Fb"
