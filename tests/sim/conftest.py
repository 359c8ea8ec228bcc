"""Fixtures for the reference server and client: an in-process server on a free port."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from repltap.protocol import exchange
from repltap.protocol.model import Request, Response
from repltap.sim.admin import AdminClient
from repltap.sim.server import ReplServer, Settings, serve_in_thread, stop_server

INBOX = "/exchange/alice/Inbox/"
REPL = "http://schemas.microsoft.com/repl/"
SQL = (
    'SELECT "DAV:href", "urn:schemas:httpmail:subject", "DAV:getcontentlength", '
    '"http://schemas.microsoft.com/repl/resourcetag", '
    '"http://schemas.microsoft.com/repl/repl-uid" '
    "FROM SCOPE('SHALLOW TRAVERSAL OF \"{path}\"') "
    'WHERE "DAV:ishidden" = false AND "DAV:isfolder" = false'
)


@dataclass
class Answer:
    """A response as a test sees it."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        n = name.lower()
        return next((v for k, v in self.headers if k.lower() == n), None)


class Peer:
    """A running in-process reference server plus helpers to talk to it."""

    def __init__(self, server: ReplServer) -> None:
        self.server = server
        self.url = server.url
        self.admin = AdminClient(server.url)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body or None, headers=headers or {})
            r = conn.getresponse()
            return Answer(r.status, r.reason, r.getheaders(), r.read())
        finally:
            conn.close()

    def manifest(
        self,
        path: str = INBOX,
        collblob: str | None = None,
        acks: tuple[str, ...] = (),
        *,
        rows: str | None = None,
        sql: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[Answer, Response]:
        """A manifest SEARCH, decoded with the protocol core."""
        body = manifest_body(sql if sql is not None else SQL.format(path=path), collblob, acks)
        h = {"Content-Type": "text/xml", **(headers or {})}
        if rows is not None:
            h["Range"] = f"rows={rows}"
        ans = self.request("SEARCH", path, body, h)
        return ans, decode(ans, "SEARCH", path, h, body)


def manifest_body(sql: str | None, collblob: str | None, acks: tuple[str, ...] = ()) -> bytes:
    blob = f"<R:collblob>{collblob}</R:collblob>" if collblob else "<R:collblob/>"
    taglist = ""
    if acks:
        taglist = (
            "<R:resourcetaglist>"
            + "".join(f"<R:resourcetag>{t}</R:resourcetag>" for t in acks)
            + "</R:resourcetaglist>"
        )
    sql_el = f"<D:sql>{sql}</D:sql>" if sql is not None else ""
    return (
        f'<?xml version="1.0"?><D:searchrequest xmlns:D="DAV:" xmlns:R="{REPL}">'
        f"<R:repl>{blob}{taglist}</R:repl>{sql_el}</D:searchrequest>"
    ).encode()


def decode(ans: Answer, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
    req: Request = exchange.decode_request(method, path, headers, body)
    return exchange.decode_response(req, ans.status, ans.headers, ans.body)


def by_name(resp: Response) -> dict[str, Any]:
    """Manifest entries keyed by the last segment of their href (deletes by uid)."""
    out = {}
    for e in resp.entries:
        key = e["href"].rsplit("/", 1)[-1] if e["href"] else e["uid"]
        out[key] = e
    return out


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    """A fresh reference server with the example mailbox."""
    server, thread = serve_in_thread(tmp_path / "data", settings=Settings())
    try:
        yield Peer(server)
    finally:
        stop_server(server, thread)
