"""``repltap serve``: the reference Exchange 2003/2007 WebDAV replication server.

What may live here: HTTP (http.server, HTTP/1.1, keep-alive), request checking, the method
semantics of spec §9 and the matrix of §6.4, and the ``serve`` sub-command. The world itself and
its manifests are store.py's; XML is read only with repltap.protocol (``xml.parse``,
``exchange.decode_request``) and written by render.py.

Readings of the spec's ambiguities (§13) chosen by this server; each is also commented where the
code makes it:
- §13.1 namespace: replies use ``http://schemas.microsoft.com/repl/``; requests in the https or
  slash-less spelling are accepted (and logged).
- §13.2 changetype: ``new`` for resources created since the collblob (what real Exchange sends),
  ``change`` for modified and moved-in ones, ``delete``.
- §13.4/§13.5 requests are read by the protocol core (names in any case; ``collblob`` and
  ``resourcetaglist`` together); replies use lowercase names.
- §13.3 ``R:changetype`` is written as a direct child of ``D:response`` after the propstats.
- §13.6 ``<R:collblob/>``, empty, whitespace-only and missing collblobs all mean initial sync.
- §13.7 nothing changed → ``<R:repl/>`` with no collblob; an initial sync always gets one.
- §13.8/§13.9 475 for a foreign or tampered collblob, one issued for another collection, one
  whose collection was deleted and re-created, and one bound to a different query (FROM/WHERE).
- §13.10 resourcetaglist: an entry is folded away only when its current tag is listed.
- §13.11 paging: rows count from the start of what remains after the collblob sent; the collblob
  returned covers exactly the rows returned, so the next ``rows=0-N`` with it continues. A range
  that does not start at 0 is answered too, and its collblob covers everything up to its end.
- §13.12 ranged manifests answer 207 with ``Content-Range: rows a-b; total=N`` (never 206);
  416 past the end. A page cap (``--page-cap``) truncates the same way, with Content-Range.
- §13.13 ``rows=-0``: no rows, and a collblob that skips everything up to now.
- §13.15 PROPFIND manifests (``D:propfind`` with ``R:repl``, Depth 1 or infinity) work like SEARCH.
- §13.14 the page cap is optional (``--page-cap``, off by default).
- §13.16 delete entries carry an empty ``D:href`` and the repl-uid.
- §13.17 ResourceTag and Repl-UID headers are sent in angle brackets, as the SDK shows them.
- §13.18 MOVE sends no Repl-UID (and no ResourceTag): the client must PROPFIND the destination.
- §13.19 DELETE sends a ResourceTag: the tag of the tombstone, which a client may acknowledge.
- §13.20 If on POST is ignored.
- §13.21 MKCOL on an existing collection: 409.
- §13.22 210 bodies: one plain-text line saying what the server changed.
- §13.23 manifest order is change order, which keeps integrity (store.py).
- §13.24 SHALLOW, DEEP and HIERARCHICAL traversal all work with collblobs, in any collection;
  a scope without a traversal keyword is shallow (sql.py).
- §13.25 a collblob is compared as the exact text sent, surrounding whitespace removed.
- §13.27 If: standard WebDAV semantics (any list may match; all conditions of a list must hold).
- COPY sends no ResourceTag (the SDK's "might not"); the copy has its own repl-uid.
- Destination headers are read for their path only: reverse proxies (mitmdump) don't rewrite the
  host part.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from lxml import etree

from ..protocol import exchange
from ..protocol import xml as safexml
from ..protocol.headers import HeaderSyntaxError, parse_if, parse_range_rows
from . import collblob, render
from . import sql as sqlmod
from .seed import guess_type
from .store import (
    DAV,
    PROTECTED,
    REPL_NS,
    DavError,
    RangeNotSatisfiable,
    Resource,
    Store,
    norm_path,
)

MAX_BODY = 64 * 1024 * 1024
ADMIN_PREFIX = "/_admin"
METHODS = [
    "OPTIONS",
    "GET",
    "HEAD",
    "PUT",
    "POST",
    "DELETE",
    "PROPFIND",
    "PROPPATCH",
    "SEARCH",
    "MKCOL",
    "MOVE",
    "COPY",
]
REASONS = {210: "Content Different", 475: "Invalid collblob", 207: "Multi-Status"}
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+$")
_DEFAULT_PROPS = [
    f"{{{DAV}}}displayname",
    f"{{{REPL_NS}}}resourcetag",
    f"{{{REPL_NS}}}repl-uid",
]


class Settings:
    """Runtime settings; the admin interface may change them (they are not persisted)."""

    def __init__(self, page_cap: int | None = None, transform: str = "off") -> None:
        self.page_cap = page_cap
        self.transform = transform

    def to_dict(self) -> dict[str, Any]:
        return {"page_cap": self.page_cap, "transform": self.transform}


def transform(content: bytes, content_type: str, mode: str) -> tuple[bytes, str | None]:
    """The optional server-side transformation (answered with 210, spec §9.2): with ``crlf``,
    text and message bodies are stored with CRLF line endings, as Exchange stores MIME."""
    if mode != "crlf":
        return content, None
    ct = content_type.lower()
    if not (ct.startswith("message/") or ct.startswith("text/")):
        return content, None
    fixed = re.sub(rb"(?<!\r)\n", b"\r\n", content)
    if fixed == content:
        return content, None
    return fixed, "the server converted bare LF line endings to CRLF"


class ReplServer(ThreadingHTTPServer):
    """The HTTP server: one thread per connection, the store shared under its lock."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        store: Store,
        settings: Settings | None = None,
        *,
        quiet: bool = False,
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.quiet = quiet
        self._log_lock = threading.Lock()
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        """The base URL the server listens on."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def log(self, line: str) -> None:
        if not self.quiet:
            with self._log_lock:
                print(line, file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    """One connection; ``do_<METHOD>`` all go through :meth:`dispatch`."""

    protocol_version = "HTTP/1.1"
    # Header and body go out as separate writes; without TCP_NODELAY delayed ACKs cost ~44 ms
    # per request (notes §3.4).
    disable_nagle_algorithm = True
    server_version = "repltap-sim/0.1"
    sys_version = ""
    timeout = 120  # an idle keep-alive connection must not pin its thread forever
    server: ReplServer

    def version_string(self) -> str:
        return self.server_version

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_") and name[3:] in METHODS:
            return self.dispatch
        raise AttributeError(name)

    # ---------------------------------------------------------------- plumbing
    @property
    def store(self) -> Store:
        return self.server.store

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(f"{self.address_string()} {format % args}")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # requestline, not command/path: a request line that cannot be parsed has neither.
        note = getattr(self, "_note", "")
        line = getattr(self, "requestline", "").rsplit(" ", 1)[0]
        self.server.log(f'"{line}" {code}' + (f" {note}" if note else ""))

    def send(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        content_type: str | None = None,
    ) -> None:
        """Send a complete response (Content-Length always, so keep-alive works)."""
        self.send_response(status, REASONS.get(status))
        for k, v in headers or []:
            self.send_header(k, v)
        if status not in (204, 304) and status >= 200:
            if body or content_type:
                self.send_header("Content-Type", content_type or "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, unknown method, huge headers) in the
        same one-line text form as ours, instead of its HTML page."""
        self.close_connection = True
        self.fail(code, message or explain or self.responses.get(code, ("error",))[0])

    def fail(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> None:
        """An error answer: the status and one line saying why (never a traceback)."""
        self._note = reason
        self.send(status, f"{status} {reason}\n".encode(), headers)

    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    self.close_connection = True
                    raise DavError(400, "malformed chunked body") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                if len(out) + size > MAX_BODY:
                    self.close_connection = True
                    raise DavError(413, f"the body is larger than {MAX_BODY} bytes")
                out += self.rfile.read(size)
                self.rfile.readline(1024)
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        if not cl.strip().isdigit():
            self.close_connection = True
            raise DavError(400, f"Content-Length {cl!r} is not a number")
        n = int(cl)
        if n > MAX_BODY:
            self.close_connection = True
            raise DavError(413, f"the body is larger than {MAX_BODY} bytes")
        data = self.rfile.read(n)
        if len(data) < n:
            self.close_connection = True
            raise DavError(400, "the body ended before Content-Length bytes arrived")
        return data

    def dispatch(self) -> None:
        self._note = ""
        try:
            self.body = self._read_body()
            raw = self.path
            if "://" in raw[:12]:  # absolute-form (a client that thinks we are a proxy)
                raw = urlsplit(raw).path or "/"
            self.raw_path = raw.split("?", 1)[0]
            if self.raw_path == ADMIN_PREFIX or self.raw_path.startswith(ADMIN_PREFIX + "/"):
                self._admin()
                return
            try:
                path = norm_path(self.raw_path)
            except UnicodeDecodeError:
                raise DavError(400, "the path is not valid UTF-8 after percent-decoding") from None
            getattr(self, "m_" + self.command)(path)
        except RangeNotSatisfiable as e:
            self.fail(416, e.reason, [("Content-Range", f"rows */{e.total}")])
        except DavError as e:
            self.fail(e.status, e.reason)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            # A bug of ours: say so without a traceback on the wire; the log keeps it.
            self.server.log(traceback.format_exc())
            self.close_connection = True
            self.fail(500, "internal error in the reference server (see its log)")

    def base(self) -> str:
        """``http://host[:port]`` for hrefs, from the Host header like Exchange does."""
        host = (self.headers.get("Host") or "").strip()
        if not host or not _HOST_RE.match(host):
            h, p = self.server.server_address[:2]
            host = f"{h!s}:{p}"
        return f"http://{host}"

    def url_of(self, r: Resource) -> str:
        return render.href(self.base(), r.path)

    def tag_headers(self, r: Resource, uid: bool = True) -> list[tuple[str, str]]:
        # Bracketed like the SDK's examples (§13.17); clients must accept bare values too.
        out = [("ResourceTag", f"<{r.tag}>")]
        if uid:
            out.append(("Repl-UID", f"<{r.uid}>"))
        return out

    # ---------------------------------------------------------------- conditions
    def check_if(self, r: Resource | None) -> None:
        """``If:`` by standard WebDAV semantics (spec §13.27): any list may match; every
        condition in a list must hold. rt:/rid: tokens compare with the resource's tag/uid;
        other state tokens (locks) never match, as this server has no locks."""
        values = self.headers.get_all("If")
        if not values:
            return
        raw = " ".join(values)
        try:
            parsed = parse_if(raw)
        except HeaderSyntaxError as e:
            raise DavError(400, str(e)) from None
        for lst in parsed.lists:
            target = r
            if lst.resource is not None:
                target = self.store.get(path_of(lst.resource, "the If header's tagged URL"))
            if all(self._holds(c.kind, c.value, c.negated, target) for c in lst.conditions):
                return
        what = r.path if r is not None else "the target (which does not exist)"
        raise DavError(412, f"If: {raw.strip()} does not match the current state of {what}")

    def _holds(self, kind: str, value: str, negated: bool, r: Resource | None) -> bool:
        if kind == "etag":
            ok = r is not None and self.store.prop(r, f"{{{DAV}}}getetag") == value
        elif value.lower().startswith("rt:"):
            ok = r is not None and r.tag == value
        elif value.lower().startswith("rid:"):
            ok = r is not None and r.uid == value
        else:
            ok = False
        return ok != negated

    def check_match(self, r: Resource | None) -> None:
        """If-Match / If-None-Match (Evolution's "must exist" / "must not exist")."""
        im, inm = self.headers.get("If-Match"), self.headers.get("If-None-Match")
        etag = self.store.prop(r, f"{{{DAV}}}getetag") if r is not None else None
        if im is not None:
            wanted = [v.strip() for v in im.split(",")]
            if r is None or ("*" not in wanted and etag not in wanted):
                raise DavError(412, f"If-Match: {im} does not hold")
        if inm is not None:
            wanted = [v.strip() for v in inm.split(",")]
            if r is not None and ("*" in wanted or etag in wanted):
                raise DavError(412, f"If-None-Match: {inm}: {r.path} exists")

    # ---------------------------------------------------------------- methods
    def m_OPTIONS(self, path: str) -> None:
        self.send(
            200,
            headers=[
                ("DAV", "1, 2"),
                ("MS-Author-Via", "DAV"),
                ("Allow", ", ".join(METHODS)),
                ("Public", ", ".join(METHODS)),
                ("Accept-Ranges", "rows"),
            ],
        )

    def m_GET(self, path: str) -> None:
        with self.store.lock:
            r = self.store.require(path)
            self.check_if(r)
            inm = self.headers.get("If-None-Match")
            etag = str(self.store.prop(r, f"{{{DAV}}}getetag"))
            if inm is not None and etag in [v.strip() for v in inm.split(",")]:
                self.send(304, headers=self.tag_headers(r, uid=False))
                return
            self.check_match(r)
            if r.collection:
                lines = [f"{c.path}\t{c.tag}" for c in self.store.children(r.path)]
                body, ctype = ("\n".join(lines) + "\n").encode(), "text/plain; charset=utf-8"
            else:
                body, ctype = r.content, r.content_type
            etag = str(self.store.prop(r, f"{{{DAV}}}getetag"))
            headers = [*self.tag_headers(r, uid=False), ("ETag", etag)]
        self.send(200, body, headers, ctype)

    m_HEAD = m_GET

    def _store_content(self, path: str, existing: Resource | None) -> tuple[Resource, str | None]:
        ctype = self.headers.get("Content-Type") or guess_type(path)
        content, changed = transform(self.body, ctype, self.server.settings.transform)
        if existing is None:
            return self.store.create_item(path, content, ctype), changed
        return self.store.update(path, content=content, content_type=ctype), changed

    def m_PUT(self, path: str) -> None:
        if path.endswith("/"):
            raise DavError(405, "PUT cannot create or replace a collection; use MKCOL")
        with self.store.lock:  # check and write as one step
            r = self.store.get(path)
            if r is not None and r.collection:
                raise DavError(405, f"{r.path} is a collection")
            self.check_if(r)
            self.check_match(r)
            created = r is None
            r, changed = self._store_content(path, r)
            headers = self.tag_headers(r)
        if created:
            headers.append(("Location", self.url_of(r)))
        if changed:
            self.send(210, (changed + "\n").encode(), headers)
        else:
            self.send(201 if created else 204, headers=headers)

    def m_POST(self, path: str) -> None:
        # If is ignored on POST: POST always creates (spec §9.3, §13.20).
        with self.store.lock:
            coll = self.store.require(path)
            if not coll.collection:
                raise DavError(405, f"POST needs a collection URL; {coll.path} is an item")
            ctype = self.headers.get("Content-Type") or "message/rfc822"
            name = self._free_name(coll.path, _post_name(self.body, ctype))
            content, changed = transform(self.body, ctype, self.server.settings.transform)
            r = self.store.create_item(coll.path + name, content, ctype)
            headers = [*self.tag_headers(r), ("Location", self.url_of(r))]
        if changed:
            self.send(210, (changed + "\n").encode(), headers)
        else:
            self.send(201, headers=headers)

    def _free_name(self, coll: str, name: str) -> str:
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        candidate, n = name, 1
        while self.store.get(coll + candidate) is not None:
            n += 1
            candidate = f"{stem}-{n}{dot}{ext}"
        return candidate

    def m_DELETE(self, path: str) -> None:
        with self.store.lock:
            r = self.store.require(path)
            self.check_if(r)
            self.check_match(r)
            tag = self.store.delete(r.path)
        # The tombstone's tag (spec §9.7: meaning undefined; clients should ignore it).
        self.send(204, headers=[("ResourceTag", f"<{tag}>")])

    def _destination(self) -> tuple[str, bool]:
        dest = self.headers.get("Destination")
        if not dest:
            raise DavError(400, f"{self.command} needs a Destination header")
        ow = (self.headers.get("Overwrite") or "T").strip().upper()
        if ow not in ("T", "F"):
            raise DavError(400, f"Overwrite must be T or F, not {ow!r}")
        # Only the path counts: a reverse proxy leaves the client's host in Destination.
        return path_of(dest, "the Destination"), ow == "T"

    def m_MOVE(self, path: str) -> None:
        dest, overwrite = self._destination()
        with self.store.lock:
            r = self.store.require(path)
            self.check_if(r)
            moved, existed = self.store.move(r.path, dest, overwrite=overwrite)
            location = self.url_of(moved)
        # No ResourceTag, no Repl-UID on MOVE (spec §9.8, §13.18).
        self.send(204 if existed else 201, headers=[("Location", location)])

    def m_COPY(self, path: str) -> None:
        dest, overwrite = self._destination()
        with self.store.lock:
            r = self.store.require(path)
            self.check_if(r)
            copied, existed = self.store.copy(r.path, dest, overwrite=overwrite)
            location = self.url_of(copied)
        self.send(204 if existed else 201, headers=[("Location", location)])

    def m_MKCOL(self, path: str) -> None:
        if self.body:
            raise DavError(415, "MKCOL with a body is not supported")
        with self.store.lock:
            existing = self.store.get(path) or self.store.get(path.rstrip("/"))
            if existing is not None:
                # 409 as the replication MKCOL topic says (the generic one says 405): §13.21.
                raise DavError(409, f"{existing.path} already exists")
            self.check_if(None)
            r = self.store.mkcol(path)
            headers = [*self.tag_headers(r), ("Location", self.url_of(r))]
        self.send(201, headers=headers)

    # ---------------------------------------------------------------- PROPFIND / PROPPATCH
    def _parse(self, what: str) -> etree._Element:
        try:
            return safexml.parse(self.body)
        except safexml.XmlProblem as e:
            raise DavError(400, f"the {what} body cannot be read: {e.detail}") from None

    def m_PROPFIND(self, path: str) -> None:
        names: list[str] | None = None  # None: allprop
        only_names = False
        if self.body.strip():
            root = self._parse("PROPFIND")
            if root.tag != f"{{{DAV}}}propfind":
                raise DavError(400, f"a PROPFIND body must be DAV:propfind, not {root.tag}")
            req = exchange.decode_request("PROPFIND", path, self.headers.items(), self.body)
            if req.manifest:  # the PROPFIND form of a manifest (§8.9, §13.15)
                self._manifest(path, req, None)
                return
            for child in root:
                if child.tag == f"{{{DAV}}}prop":
                    names = [p.tag for p in child if isinstance(p.tag, str)]
                elif child.tag == f"{{{DAV}}}propname":
                    only_names = True
        depth = (self.headers.get("Depth") or "infinity").strip().lower()
        if depth not in ("0", "1", "infinity"):
            raise DavError(400, f"Depth must be 0, 1 or infinity, not {depth!r}")
        with self.store.lock:
            r = self.store.require(path)
            self.check_if(r)
            targets = [r]
            if r.collection and depth == "1":
                targets += self.store.children(r.path)
            elif r.collection and depth == "infinity":
                targets = self.store.subtree(r.path)
            rows: list[
                tuple[str, list[tuple[str, str | None, Any]], list[tuple[str, str | None]]]
            ] = []
            for t in targets:
                wanted = names if names is not None else self.store.prop_names(t)
                found: list[tuple[str, str | None, Any]] = []
                missing: list[tuple[str, str | None]] = []
                for n in wanted:
                    v = self.store.prop(t, n) if n != f"{{{DAV}}}href" else None
                    if v is None:
                        missing.append((n, None))
                    else:
                        found.append((n, None, None if only_names else v))
                rows.append((self.url_of(t), found, missing))
        ms = render.Multistatus(
            [n for _, f, _ in rows for n, _, _ in f] + [n for _, _, m in rows for n, _ in m]
        )
        brief = (self.headers.get("Brief") or "").strip().lower() == "t"
        for url, found, missing in rows:
            ms.response(url, found, [] if brief else missing)
        self.send(207, ms.tobytes(), content_type='text/xml; charset="utf-8"')

    def m_PROPPATCH(self, path: str) -> None:
        root = self._parse("PROPPATCH")
        if root.tag != f"{{{DAV}}}propertyupdate":
            raise DavError(400, f"a PROPPATCH body must be DAV:propertyupdate, not {root.tag}")
        sets: dict[str, str] = {}
        removes: list[str] = []
        for op in root:
            if op.tag not in (f"{{{DAV}}}set", f"{{{DAV}}}remove"):
                continue
            for prop in op:
                if prop.tag != f"{{{DAV}}}prop":
                    continue
                for p in prop:
                    if not isinstance(p.tag, str):
                        continue
                    if op.tag.endswith("}set"):
                        # Values are kept as text; typed (b:dt) and structured values are stored
                        # as their text content.
                        sets[p.tag] = "".join(str(t) for t in p.itertext())
                        if p.tag in removes:
                            removes.remove(p.tag)
                    else:
                        removes.append(p.tag)
                        sets.pop(p.tag, None)
        if not sets and not removes:
            raise DavError(400, "the PROPPATCH sets and removes no property")
        forbidden = [n for n in [*sets, *removes] if n in PROTECTED]
        with self.store.lock:
            r = self.store.get(path)
            self.check_if(r)
            self.check_match(r)
            if forbidden:
                ok = [n for n in [*sets, *removes] if n not in PROTECTED]
                ms = render.Multistatus([*sets, *removes])
                target = self.url_of(r) if r else render.href(self.base(), path)
                ms.status_response(target, {403: forbidden, **({424: ok} if ok else {})})
                self._note = "protected properties"
                self.send(207, ms.tobytes(), content_type='text/xml; charset="utf-8"')
                return
            created = r is None
            if created:
                # Exchange creates an item on PROPPATCH of a missing URL (Evolution relies on it
                # for contacts, spec §9.5).
                r = self.store.create_item(path, b"", guess_type(path), sets)
            else:
                r = self.store.update(path, set_props=sets, remove_props=removes)
            headers = self.tag_headers(r)
            url = self.url_of(r)
        if (self.headers.get("Brief") or "").strip().lower() == "t":
            self.send(201 if created else 200, headers=headers)
            return
        ms = render.Multistatus([*sets, *removes])
        ms.status_response(url, {200: [*sets, *removes]})
        self.send(207, ms.tobytes(), headers, 'text/xml; charset="utf-8"')

    # ---------------------------------------------------------------- SEARCH and manifests
    def m_SEARCH(self, path: str) -> None:
        if not self.body.strip():
            raise DavError(400, "SEARCH needs a DAV:searchrequest body")
        root = self._parse("SEARCH")
        if root.tag != f"{{{DAV}}}searchrequest":
            raise DavError(400, f"a SEARCH body must be DAV:searchrequest, not {root.tag}")
        sql_el = root.find(f"{{{DAV}}}sql")
        sql_text = sql_el.text if sql_el is not None and sql_el.text else None
        req = exchange.decode_request("SEARCH", path, self.headers.items(), self.body)
        if req.manifest:
            self._manifest(path, req, sql_text)
            return
        if sql_text is None:
            raise DavError(400, "a SEARCH without R:repl needs D:sql")
        q = self._sql(sql_text)
        scope = self._scope(path, q.scope_url)
        first, last = self._range()
        rows = self.store.listing(scope, q.depth, self._where(q))
        total = len(rows)
        if first is None:
            lo, hi = max(0, total - (last or 0)), total - 1
        else:
            if first > 0 and first >= total:
                raise RangeNotSatisfiable(f"rows {first}- are past the end ({total} rows)", total)
            lo, hi = first, total - 1 if last is None else min(last, total - 1)
        page = rows[lo : hi + 1]
        ms = render.Multistatus(self._column_names(q.columns, page))
        brief = (self.headers.get("Brief") or "").strip().lower() == "t"
        with self.store.lock:
            for r in page:
                found, missing = self._columns(q.columns, r)
                ms.response(self.url_of(r), found, [] if brief else missing)
        headers = [("Accept-Ranges", "rows")]
        if self.headers.get("Range") is not None:
            headers.append(("Content-Range", _content_range(lo, hi, len(page), total)))
        self.send(207, ms.tobytes(), headers, 'text/xml; charset="utf-8"')

    def _sql(self, text: str) -> sqlmod.Query:
        try:
            return sqlmod.parse(text)
        except sqlmod.SqlError as e:
            raise DavError(400, f"SQL not understood: {e}") from None

    def _scope(self, path: str, url: str) -> str:
        if "://" not in url[:12] and not url.startswith("/"):
            url = urljoin(path if path.endswith("/") else path + "/", url)
        return path_of(url or path, "the scope URL")

    def _where(self, q: sqlmod.Query) -> Any:
        store = self.store
        return lambda r: q.matches(lambda name: store.prop(r, name))

    def _range(self) -> tuple[int | None, int | None]:
        """(first, last) of a ``Range: rows=`` header; (0, None) without one."""
        raw = self.headers.get("Range")
        if raw is None or not raw.strip().lower().startswith("rows"):
            return 0, None  # other units (bytes=…) are ignored, as HTTP allows
        try:
            ranges = parse_range_rows(raw)
        except HeaderSyntaxError as e:
            raise DavError(400, str(e)) from None
        if len(ranges) > 1:
            raise DavError(400, "this server answers one row range per request, not a list")
        return ranges[0].first, ranges[0].last

    def _columns(
        self, columns: list[sqlmod.Column] | None, r: Resource
    ) -> tuple[list[tuple[str, str | None, Any]], list[tuple[str, str | None]]]:
        cols = (
            columns if columns is not None else [sqlmod.Column(n) for n in self.store.prop_names(r)]
        )
        found: list[tuple[str, str | None, Any]] = []
        missing: list[tuple[str, str | None]] = []
        for c in cols:
            if c.prop == f"{{{DAV}}}href" and c.alias is None:
                continue  # the response's own D:href carries it
            v = self.store.prop(r, c.prop)
            if v is None:
                missing.append((c.prop, c.alias))
            else:
                found.append((c.prop, c.alias, v))
        return found, missing

    def _column_names(self, columns: list[sqlmod.Column] | None, rows: list[Any]) -> list[str]:
        if columns is not None:
            return [c.prop for c in columns if c.alias is None]
        names: list[str] = []
        for r in rows:
            res = r if isinstance(r, Resource) else r.resource
            if res is not None:
                names += [n for n in self.store.prop_names(res) if n not in names]
        return names

    def _manifest(self, path: str, req: Any, sql_text: str | None) -> None:
        """A manifest request, SEARCH or PROPFIND form (spec §8)."""
        # Accepted but logged: a missing R:collblob read as an initial sync (§13.6), the https
        # or slash-less repl namespace (§13.1; real Exchange would not recognise it), ...
        for note in req.notes:
            self.server.log(f"note: {self.command} {path}: {note}")
        since: collblob.State | None = None
        if req.token is not None:  # None covers every empty form of §13.6
            try:
                since = collblob.decode(req.token, self.store.key)
            except collblob.InvalidCollblob as e:
                self._invalid(str(e))
                return
        if req.method == "PROPFIND":
            depth_h = (self.headers.get("Depth") or "1").strip().lower()
            if depth_h not in ("1", "infinity"):
                raise DavError(400, "a PROPFIND manifest needs Depth: 1 or infinity")
            depth = "shallow" if depth_h == "1" else "deep"
            binding = f"PROPFIND Depth: {depth_h}"
            stored_sql = binding
            columns: list[sqlmod.Column] | None = [
                sqlmod.Column(p) for p in (req.props or _DEFAULT_PROPS)
            ]
            scope = path
        else:
            if sql_text is None or not sql_text.strip():
                if since is None:
                    raise DavError(400, "an initial manifest needs D:sql")
                sql_text = since.sql  # a collblob-only SEARCH reuses its query (spec §8.10)
            q = self._sql(sql_text)
            depth, binding, columns = q.depth, q.binding, q.columns
            stored_sql = q.text
            scope = self._scope(path, q.scope_url)
        first, last = self._range()
        with self.store.lock:
            coll = self.store.get(scope)
            if coll is None:
                raise DavError(404, f"the collection {scope} does not exist")
            if not coll.collection:
                raise DavError(409, f"{scope} is an item, not a collection")
            if since is not None:
                why = self._stale(since, coll, binding)
                if why:
                    self._invalid(why)
                    return
            where = (lambda r: True) if req.method == "PROPFIND" else self._where(q)
            result = self.store.manifest(
                scope=coll.path,
                depth=depth,
                sql=stored_sql,
                where=where,
                since=since,
                acks=req.acknowledged,
                first=first,
                last=last,
                cap=self.server.settings.page_cap,
            )
            token = (
                collblob.encode(result.state, self.store.key) if result.state is not None else None
            )
            ms = render.Multistatus(self._column_names(columns, result.rows))
            ms.repl(token)
            brief = (self.headers.get("Brief") or "").strip().lower() == "t"
            uid_name = f"{{{REPL_NS}}}repl-uid"
            for row in result.rows:
                if row.change == "delete":
                    # Keyed by repl-uid; the href of a deleted resource is not usable (§13.16).
                    alias = next((c.alias for c in columns or [] if c.prop == uid_name), None)
                    others = [
                        (c.prop, c.alias)
                        for c in columns or []
                        if c.prop not in (uid_name, f"{{{DAV}}}href")
                    ]
                    ms.response(
                        None, [(uid_name, alias, row.uid)], [] if brief else others, "delete"
                    )
                else:
                    assert row.resource is not None
                    found, missing = self._columns(columns, row.resource)
                    ms.response(
                        self.url_of(row.resource), found, [] if brief else missing, row.change
                    )
        # 207 + Content-Range for a ranged or capped manifest, never 206 (§13.12); a complete
        # answer to a request without Range needs none.
        headers = [("Accept-Ranges", "rows")]
        if self.headers.get("Range") is not None or result.partial:
            lo = result.first if result.first is not None else 0
            hi = result.last if result.last is not None else -1
            headers.append(
                ("Content-Range", _content_range(lo, hi, len(result.rows), result.total))
            )
        counts = {
            k: sum(1 for r in result.rows if r.change == k) for k in ("new", "change", "delete")
        }
        self._note = (
            "manifest: no changes"
            if token is None
            else "manifest: "
            + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
            + (f" ({len(result.rows)} of {result.total} rows)" if result.partial else "")
        )
        self.send(207, ms.tobytes(), headers, 'text/xml; charset="utf-8"')

    def _stale(self, since: collblob.State, coll: Resource, binding: str) -> str | None:
        """Why a well-signed collblob cannot be used here (→ 475, §13.8/§13.9), or None."""
        if since.scope != coll.path:
            return f"the collblob was issued for {since.scope}, not {coll.path}"
        if since.incarnation != coll.incarnation:
            return f"{coll.path} was deleted and re-created since the collblob was issued"
        if since.sql.startswith("PROPFIND"):
            old_binding = since.sql
        else:
            try:
                old_binding = sqlmod.parse(since.sql).binding
            except sqlmod.SqlError:
                old_binding = ""
        if old_binding != binding:
            return (
                "the query differs from the one the collblob is bound to (only SELECT may change)"
            )
        if since.watermark > self.store.seq:
            return (
                "the collblob is newer than this server's state (was the data directory restored?)"
            )
        return None

    def _invalid(self, why: str) -> None:
        # 475 with a one-line text body; the SDK's example has none, but a reason helps people
        # who develop clients against this server (spec §8.5).
        self._note = why
        self.send(475, f"475 Invalid collblob: {why}\n".encode())

    # ---------------------------------------------------------------- admin
    def _admin(self) -> None:
        from .admin import handle

        query = urlsplit(self.path).query
        status, doc = handle(self.server, self.command, self.raw_path, query, self.body)
        self._note = doc.get("error", "") if isinstance(doc, dict) else ""
        body = (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode()
        self.send(status, body, content_type="application/json")


def path_of(url: str, what: str) -> str:
    """The store path of an absolute URL or a path (host and port ignored); 400 if unusable."""
    u = url.strip()
    if "://" in u[:12]:
        u = urlsplit(u).path or "/"
    try:
        return norm_path(u)
    except UnicodeDecodeError:
        raise DavError(400, f"{what} is not valid UTF-8 after percent-decoding") from None
    except DavError as e:
        raise DavError(400, f"{what}: {e.reason}") from None


def _content_range(lo: int, hi: int, count: int, total: int) -> str:
    if count == 0:
        return f"rows *; total={total}"
    return f"rows {lo}-{hi}; total={total}"


def _post_name(body: bytes, ctype: str) -> str:
    """A server-chosen name for a POSTed item: its subject, like Exchange does."""
    subject = ""
    if ctype.lower().startswith("message/"):
        import email.parser
        import email.policy

        msg = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(body)
        subject = str(msg.get("Subject") or "")
    stem = re.sub(r"[^\w .,()'-]+", "", subject).strip()[:60] or "Untitled"
    ext = ".EML" if ctype.lower().startswith("message/") else ".dat"
    return stem + ext


# ------------------------------------------------------------------------------ command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``repltap serve``."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8090, help="port (0 picks a free one; default 8090)")
    p.add_argument(
        "--data",
        type=Path,
        default=Path("repltap-data"),
        help="directory holding the server's state (created if missing; default ./repltap-data)",
    )
    p.add_argument(
        "--seed",
        type=Path,
        help="YAML or JSON file with the initial resources, used when --data is new "
        "(default: the example mailbox of /exchange/alice/)",
    )
    p.add_argument(
        "--page-cap",
        type=int,
        default=0,
        metavar="N",
        help="answer at most N manifest rows at a time, like Exchange's cap of 512 (0: no cap)",
    )
    p.add_argument(
        "--transform",
        choices=("off", "crlf"),
        default="off",
        help="server-side transformation answered with 210: 'crlf' stores text with CRLF",
    )
    p.add_argument("--reset", action="store_true", help="wipe --data first and start afresh")
    p.add_argument("--quiet", action="store_true", help="do not log requests to stderr")
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="skip fsync on each state write (faster; a crash may lose the last change)",
    )


def run(args: argparse.Namespace) -> int:
    """``repltap serve``: serve until Ctrl-C or SIGTERM."""
    from . import seed as seedmod

    if args.page_cap < 0:
        print("repltap serve: --page-cap must be 0 or more", file=sys.stderr)
        return 2
    data: Path = args.data
    if args.reset:
        # Only our own files: --data might point at a directory holding other things too.
        for name in ("state.json", "secret.key"):
            (data / name).unlink(missing_ok=True)
    try:
        resources = seedmod.load(args.seed) if args.seed else seedmod.example()
        store, seeded = Store.open(data, resources, fsync=not args.no_fsync)
    except (seedmod.SeedError, DavError) as e:
        print(f"repltap serve: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 2
    settings = Settings(args.page_cap or None, args.transform)
    try:
        server = ReplServer((args.host, args.port), store, settings, quiet=args.quiet)
    except OSError as e:
        print(f"repltap serve: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        store.close()
        return 2
    print(f"listening on {server.url}/", flush=True)
    origin = "seeded from " + str(args.seed) if args.seed else "the example mailbox"
    state = f"new, {origin}" if seeded else "existing state"
    if args.seed and not seeded:
        state += f"; --seed {args.seed} ignored (use --reset to start afresh)"
    print(f"  data: {data.resolve()} ({state})", flush=True)
    for r in store.iter_all():
        if r.collection and r.path != "/":
            n = sum(1 for c in store.children(r.path) if not c.collection)
            items = f"{n} item" + ("" if n == 1 else "s")
            print(f"  collection {server.url}{render.href('', r.path)}  ({items})", flush=True)
    print(f"  admin: {server.url}{ADMIN_PREFIX}/  (JSON; see `repltap admin --help`)", flush=True)
    if settings.page_cap or settings.transform != "off":
        print(f"  settings: {settings.to_dict()}", flush=True)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
    return 0


def serve_in_thread(
    data: Path,
    seed: list[dict[str, Any]] | None = None,
    *,
    settings: Settings | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    fsync: bool = False,
) -> tuple[ReplServer, threading.Thread]:
    """Start a server in a background thread (tests, the demo); stop with :func:`stop_server`."""
    from . import seed as seedmod

    store, _ = Store.open(data, seedmod.example() if seed is None else seed, fsync=fsync)
    server = ReplServer((host, port), store, settings, quiet=True)
    # A short poll interval: shutdown() waits for it, and tests start and stop many servers.
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    return server, t


def stop_server(server: ReplServer, thread: threading.Thread) -> None:
    """Stop a server started by :func:`serve_in_thread` and release its data directory."""
    server.shutdown()
    server.server_close()
    thread.join(5)
    server.store.close()


__all__ = [
    "ReplServer",
    "Settings",
    "add_arguments",
    "run",
    "serve_in_thread",
    "stop_server",
    "transform",
]
