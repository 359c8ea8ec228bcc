"""Every spec vector of tests/vectors/exchange through a real mitmdump: the canned server that
answers them and the client side, so transparency tests compare runs byte for byte."""

from __future__ import annotations

from tests.harness.canned import CannedServer, RawResponse
from tests.harness.mitm import raw_exchange, start_mitmdump
from tests.vectors.load import load_pair, stems


def vector_server() -> CannedServer:
    """A server that answers each vector's request (picked by the X-Canned header)."""
    by_key = {}
    for stem in stems():
        _, rs = load_pair(stem)
        by_key[stem] = RawResponse(rs.status, rs.reason, list(rs.headers), rs.body)
    return CannedServer(by_key=by_key)


def vector_request(stem: str, port: int) -> bytes:
    """The vector's request as sent to a proxy on ``port``, tagged for the canned server."""
    rq, _ = load_pair(stem)
    head, sep, body = rq.to_bytes().partition(b"\r\n\r\n")
    lines = [
        f"Host: 127.0.0.1:{port}".encode() if line.lower().startswith(b"host:") else line
        for line in head.split(b"\r\n")
    ]
    lines.insert(1, f"X-Canned: {stem}".encode())
    return b"\r\n".join(lines) + sep + body


def send_all_vectors(
    up: CannedServer, proxy_args: list[str], confdir: str
) -> tuple[list[bytes], list[bytes], str]:
    """Every vector through a fresh reverse-mode mitmdump in front of ``up``: (what the client
    received, what the server received, mitmdump's output)."""
    first = len(up.received)
    m = start_mitmdump(
        "--mode", f"reverse:{up.url}", "--set", "connection_strategy=lazy", *proxy_args,
        confdir=confdir,
    )  # fmt: skip
    try:
        got = [raw_exchange(m.port, vector_request(stem, m.port)) for stem in stems()]
    finally:
        rc = m.stop()
    assert rc == 0, m.output()
    return got, list(up.received[first:]), m.output()
