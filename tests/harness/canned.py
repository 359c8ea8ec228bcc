"""A canned HTTP/1.1 upstream that records requests byte for byte and answers from a routing table.

The HTTP parsing is done here on top of socketserver.StreamRequestHandler rather than with
http.server.BaseHTTPRequestHandler, because the latter does not keep the raw header bytes and
rejects nothing we care about; this way any method (PROPFIND, SEARCH, ...) and any header casing
or order reaches the test unchanged.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import socket
import socketserver
import ssl
import tempfile
import threading
import traceback
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

__all__ = ["CannedServer", "RawResponse", "ReceivedRequest"]


class RawResponse(NamedTuple):
    """Sent as "HTTP/1.1 {status} {reason}", one "Name: value" line per header, then body."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


class ReceivedRequest(NamedTuple):
    """A parsed view of one received request; `raw` is exactly what came off the wire."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes  # de-chunked if the request was chunked
    raw: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for n, v in self.headers if n.lower() == name), None)


def _not_found(text: str) -> RawResponse:
    return RawResponse(404, "Not Found", [("Content-Type", "text/plain")], text.encode() + b"\n")


class _Incomplete(Exception):
    """The client closed (or timed out) in the middle of a request."""


class _Malformed(Exception):
    """The request could not be parsed; answered with 400 and the connection closed."""


_MAX_LINE = 65536


class _Handler(socketserver.StreamRequestHandler):
    # Header and body are separate writes on the client side; without TCP_NODELAY delayed ACKs
    # cost a fixed ~44 ms per request (notes §3.4).
    disable_nagle_algorithm = True
    timeout = 30  # an idle keep-alive connection must not pin its thread forever
    server: _Server

    def setup(self) -> None:
        owner = self.server.owner
        ctx = self.server.ssl_context
        if ctx is not None:
            # Handshake here, in the per-connection thread, not in accept() of the serving loop.
            self.request.settimeout(self.timeout)
            self.request = ctx.wrap_socket(self.request, server_side=True)
        with owner._lock:
            owner._conns.add(self.request)
        super().setup()

    def finish(self) -> None:
        owner = self.server.owner
        with owner._lock:
            owner._conns.discard(self.request)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        owner = self.server.owner
        while True:
            self._raw = bytearray()
            try:
                req = self._read_request()
            except _Malformed as e:
                owner._record_raw(bytes(self._raw))
                self._send(
                    RawResponse(400, "Bad Request", [("Connection", "close")], f"{e}\n".encode()),
                    "GET",
                )
                return
            except (
                _Incomplete,
                OSError,
            ):  # OSError covers timeouts, resets and TLS errors
                if self._raw:
                    owner._record_raw(bytes(self._raw))
                return
            if req is None:
                return  # clean close between requests
            owner._record(req)
            resp = owner._pick(req)
            try:
                self._send(resp, req.method)
            except OSError:
                return
            if not _keep_alive(req, resp):
                return

    def _readline(self) -> bytes:
        line = self.rfile.readline(_MAX_LINE + 1)
        self._raw += line
        if len(line) > _MAX_LINE:
            raise _Malformed("line too long")
        return line

    def _read_request(self) -> ReceivedRequest | None:
        line = self.rfile.readline(_MAX_LINE + 1)
        while line in (
            b"\r\n",
            b"\n",
        ):  # stray blank lines before a request are ignored (RFC 9112 §2.2)
            line = self.rfile.readline(_MAX_LINE + 1)
        if not line:
            return None
        self._raw += line
        if not line.endswith(b"\n"):
            raise (_Incomplete() if len(line) <= _MAX_LINE else _Malformed("request line too long"))
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3:
            raise _Malformed(f"bad request line {line!r}")
        method, target, version = parts
        headers: list[tuple[str, str]] = []
        while True:
            line = self._readline()
            if not line.endswith(b"\n"):
                raise _Incomplete()
            if line in (b"\r\n", b"\n"):
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise _Malformed(f"bad header line {line!r}")
            headers.append((name, value.strip()))
        req_headers = ReceivedRequest(method, target, version, headers, b"", b"")
        if (req_headers.header("Expect") or "").lower() == "100-continue":
            # The client waits for this before sending the body.
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        te = req_headers.header("Transfer-Encoding")
        cl = req_headers.header("Content-Length")
        if te is not None and "chunked" in te.lower():
            body = self._read_chunked()
        elif cl is not None:
            try:
                n = int(cl)
            except ValueError:
                raise _Malformed(f"bad Content-Length {cl!r}") from None
            body = self.rfile.read(n)
            self._raw += body
            if len(body) < n:
                raise _Incomplete()
        else:
            body = b""
        return ReceivedRequest(method, target, version, headers, body, bytes(self._raw))

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self._readline()
            if not line.endswith(b"\n"):
                raise _Incomplete()
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _Malformed(f"bad chunk size line {line!r}") from None
            if size == 0:
                while True:  # trailers until the empty line
                    line = self._readline()
                    if not line.endswith(b"\n"):
                        raise _Incomplete()
                    if line in (b"\r\n", b"\n"):
                        return bytes(body)
            data = self.rfile.read(size + 2)
            self._raw += data
            if len(data) < size + 2:
                raise _Incomplete()
            body += data[:size]

    def _send(self, resp: RawResponse, method: str) -> None:
        status, reason, headers, body = resp
        names = {n.lower() for n, _ in headers}
        out = bytearray(f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1"))
        headers = list(headers)
        if (
            not _bodyless(status)
            and "content-length" not in names
            and "transfer-encoding" not in names
        ):
            headers.append(("Content-Length", str(len(body))))
        for name, value in headers:
            out += f"{name}: {value}\r\n".encode("latin-1")
        out += b"\r\n"
        if (
            method != "HEAD"
        ):  # a HEAD response never carries the body; its Content-Length still describes it
            out += body
        self.wfile.write(
            bytes(out)
        )  # one write: header and body leave in as few segments as possible


def _bodyless(status: int) -> bool:
    return 100 <= status < 200 or status in (204, 304)


def _keep_alive(req: ReceivedRequest, resp: RawResponse) -> bool:
    req_conn = (req.header("Connection") or "").lower()
    resp_conn = next((v for n, v in resp.headers if n.lower() == "connection"), "").lower()
    if "close" in req_conn or "close" in resp_conn:
        return False
    if req.version == "HTTP/1.0":
        return "keep-alive" in req_conn
    return True


class _Server(socketserver.ThreadingTCPServer):
    # Not ThreadingHTTPServer: its server_bind() calls socket.getfqdn(), which can stall on DNS.
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: CannedServer, ssl_context: ssl.SSLContext | None) -> None:
        self.owner = owner
        self.ssl_context = ssl_context
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        self.owner.errors.append(traceback.format_exc())


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1/localhost; returns (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(san, critical=False)
        # CA:TRUE so the same file can serve as its own trust anchor (cafile=server.cert_file).
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class CannedServer:
    """Upstream on 127.0.0.1:<free port>, serving in a background thread until close().

    - `routes[(method, target)]`: responses served in order, the last one repeated. The target is
      the origin-form request target; an exact match (with query) wins over the path without query.
    - A request header `X-Canned: <key>` answers `by_key[key]` instead (404 if missing).
    - Anything else gets a 404 with a short text body.
    - `received`: each request's raw bytes; `requests`: the same parsed (ReceivedRequest).
    - `tls=True`: HTTPS with a fresh self-signed certificate (`cert_file`, usable as a cafile).
    """

    def __init__(
        self,
        routes: dict[tuple[str, str], list[RawResponse]] | None = None,
        by_key: dict[str, RawResponse] | None = None,
        *,
        tls: bool = False,
    ) -> None:
        self.routes: dict[tuple[str, str], list[RawResponse]] = dict(routes or {})
        self.by_key: dict[str, RawResponse] = dict(by_key or {})
        self.received: list[bytes] = []
        self.requests: list[ReceivedRequest] = []
        self.errors: list[str] = []  # tracebacks from handler threads, if any
        self._served: dict[tuple[str, str], int] = {}
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._tmpdir: Path | None = None
        self.cert_file: str | None = None
        ctx = None
        if tls:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="canned-tls-"))
            cert_file, key_file = _self_signed(self._tmpdir)
            self.cert_file = str(cert_file)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert_file, key_file)
        self._server = _Server(self, ctx)
        self.port: int = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"canned-{self.port}",
            daemon=True,
        )
        self._closed = False
        self._thread.start()

    def route(self, method: str, target: str, *responses: RawResponse) -> None:
        """Set the responses for (method, target) and restart its sequence."""
        with self._lock:
            self.routes[(method, target)] = list(responses)
            self._served.pop((method, target), None)

    def _record(self, req: ReceivedRequest) -> None:
        with self._lock:
            self.received.append(req.raw)
            self.requests.append(req)

    def _record_raw(self, raw: bytes) -> None:
        with self._lock:
            self.received.append(raw)

    def _pick(self, req: ReceivedRequest) -> RawResponse:
        key = req.header("X-Canned")
        if key is not None:
            return self.by_key.get(key) or _not_found(f"no canned response for key {key!r}")
        target = req.target
        if "://" in target:  # absolute-form (a client talking to us as if we were a proxy)
            parts = urllib.parse.urlsplit(target)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        with self._lock:
            for k in ((req.method, target), (req.method, target.split("?", 1)[0])):
                responses = self.routes.get(k)
                if responses:
                    i = self._served.get(k, 0)
                    self._served[k] = i + 1
                    return responses[min(i, len(responses) - 1)]
        return _not_found(f"no canned route for {req.method} {req.target}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # wake handler threads blocked on idle keep-alive connections
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join(timeout=5)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
