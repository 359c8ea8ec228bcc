"""Load the raw HTTP test vectors kept beside this file (see README.md).

A vector file holds one HTTP/1.1 message: the start line, header lines, one empty
line, then the body byte-exact. Files use LF line endings and never carry
Content-Length; to_bytes() produces the wire form (CRLF head, computed length).
Nothing here knows about replication: the files are the ground truth, this only
reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

VECTOR_DIR = Path(__file__).resolve().parent / "exchange"
KINDS = ("request", "response")

# Framing headers are computed by to_bytes(); a file that spells them out would
# contradict the body it carries as soon as someone edits it.
_FORBIDDEN_HEADERS = frozenset({"content-length", "transfer-encoding"})
# 1xx and 204 must not carry Content-Length (RFC 9110 §8.6); on a 304 it would
# describe the selected representation, not this empty body.
_NO_LENGTH_STATUSES = frozenset({204, 304})
_REQUEST_LINE = re.compile(r"[A-Z]+ \S+ HTTP/1\.1")
_STATUS_LINE = re.compile(r"HTTP/1\.1 \d{3}(?: .*)?")


@dataclass(frozen=True)
class RawMessage:
    """One HTTP/1.1 message as written in a vector file."""

    start_line: str  # e.g. "SEARCH /x/ HTTP/1.1" or "HTTP/1.1 207 Multi-Status"
    headers: list[tuple[str, str]]  # in file order, names as written
    body: bytes

    @property
    def is_request(self) -> bool:
        """True for a request, False for a response."""
        return not self.start_line.startswith("HTTP/")

    @property
    def method(self) -> str:
        """Request method, e.g. "SEARCH"."""
        return self._request_parts()[0]

    @property
    def path(self) -> str:
        """Request target as written, e.g. "/exchange/alice/Inbox/"."""
        return self._request_parts()[1]

    @property
    def status(self) -> int:
        """Response status code, e.g. 207."""
        return int(self._response_parts()[1])

    @property
    def reason(self) -> str:
        """Response reason phrase, e.g. "Multi-Status" (may be empty)."""
        parts = self._response_parts()
        return parts[2] if len(parts) > 2 else ""

    def header(self, name: str) -> str | None:
        """First value of a header, matched case-insensitively, or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """All values of a header, matched case-insensitively, in file order."""
        lowered = name.lower()
        return [v for n, v in self.headers if n.lower() == lowered]

    def to_bytes(self) -> bytes:
        """Wire form: CRLF line endings, Content-Length added where it belongs, body exact."""
        lines = [self.start_line, *(f"{n}: {v}" for n, v in self.headers)]
        if self._wants_content_length():
            lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("latin-1") + self.body

    def _wants_content_length(self) -> bool:
        if self.is_request:
            return bool(self.body)
        status = self.status
        return not (100 <= status < 200 or status in _NO_LENGTH_STATUSES)

    def _request_parts(self) -> list[str]:
        if not self.is_request:
            raise ValueError(f"not a request: {self.start_line!r}")
        return self.start_line.split(" ", 2)

    def _response_parts(self) -> list[str]:
        if self.is_request:
            raise ValueError(f"not a response: {self.start_line!r}")
        return self.start_line.split(" ", 2)


def parse(data: bytes, *, origin: str = "<bytes>") -> RawMessage:
    """Parse the text of a vector file (LF line endings, no Content-Length)."""
    head, sep, body = data.partition(b"\n\n")
    if not sep:
        # A message with no body may end right after its last header line.
        head, body = data.removesuffix(b"\n"), b""
    if b"\r" in head:
        raise ValueError(f"{origin}: the head must use LF line endings")
    lines = head.decode("latin-1").split("\n")
    start_line = lines[0]
    _check_start_line(start_line, origin)
    headers: list[tuple[str, str]] = []
    for number, line in enumerate(lines[1:], start=2):
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or " " in name or "\t" in name:
            raise ValueError(f"{origin}:{number}: not a header line: {line!r}")
        if name.lower() in _FORBIDDEN_HEADERS:
            raise ValueError(f"{origin}:{number}: {name} is computed by the loader; remove it")
        headers.append((name, value.strip(" \t")))
    return RawMessage(start_line=start_line, headers=headers, body=body)


def _check_start_line(line: str, origin: str) -> None:
    if not (_REQUEST_LINE.fullmatch(line) or _STATUS_LINE.fullmatch(line)):
        raise ValueError(f"{origin}:1: not an HTTP/1.1 start line: {line!r}")


def load(stem: str, kind: str, *, directory: Path | None = None) -> RawMessage:
    """Load `<stem>.<kind>.http`; kind is "request" or "response". Raises FileNotFoundError."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if "/" in stem or "\\" in stem:
        raise ValueError(f"a stem is a file name, not a path: {stem!r}")
    path = (directory or VECTOR_DIR) / f"{stem}.{kind}.http"
    return parse(path.read_bytes(), origin=path.name)


def load_pair(stem: str, *, directory: Path | None = None) -> tuple[RawMessage, RawMessage]:
    """The request and the response of one stem."""
    return load(stem, "request", directory=directory), load(stem, "response", directory=directory)


def stems(*, directory: Path | None = None) -> list[str]:
    """Every stem that has at least one vector file, sorted."""
    found: set[str] = set()
    for path in (directory or VECTOR_DIR).glob("*.http"):
        for kind in KINDS:
            suffix = f".{kind}.http"
            if path.name.endswith(suffix):
                found.add(path.name.removesuffix(suffix))
    return sorted(found)
