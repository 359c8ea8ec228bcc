"""The reference server in a thread, counting the requests it answers (admin calls aside), so
a test can tell whether a request reached it or was answered by the cache."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from repltap.sim import seed as seedmod
from repltap.sim.server import ReplServer, Settings, stop_server
from repltap.sim.store import Store


class CountingServer(ReplServer):
    """A ReplServer that keeps the request line of every answer it sends, and counts the TCP
    connections it accepts."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.requests: list[str] = []
        self.connections = 0
        self._count_lock = threading.Lock()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._count_lock:
            self.connections += 1
        return True

    def log(self, line: str) -> None:
        # Handler.log_request writes '"METHOD /path" status' for every answer sent.
        if line.startswith('"') and " /_admin" not in line:
            with self._count_lock:
                self.requests.append(line)

    def count(self, method: str | None = None) -> int:
        with self._count_lock:
            return sum(1 for r in self.requests if method is None or r.startswith(f'"{method} '))


@contextmanager
def counting_server(
    data: Path, seed: list[dict[str, Any]] | None = None
) -> Iterator[CountingServer]:
    """The reference server on a free loopback port, seeded with the example mailbox."""
    store, _ = Store.open(data, seedmod.example() if seed is None else seed, fsync=False)
    server = CountingServer(("127.0.0.1", 0), store, Settings(), quiet=True)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    try:
        yield server
    finally:
        stop_server(server, t)
