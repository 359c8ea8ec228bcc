"""``repltap sync``: the reference Exchange WebDAV replication client, one round per run.

What may live here: the client side of spec §3, the plain-directory store, HTTP on
``http.client`` (directly or through an HTTP proxy). What may not: anything from the reference
server's modules (store, server, sql, collblob, render, seed, admin). Client and server are
independent implementations of the spec so each can catch the other's mistakes; both read
messages with repltap.protocol (``exchange.decode_request``/``decode_response``, ``xml.parse``,
``headers.strip_coded_url``).

The store is a directory a person can read and edit: one file per item (named after the last
segment of its URL) and a state file ``.repltap-sync.json`` (collection URL, SQL, collblob, and
per repl-uid: file name, href, resourcetag, content hash, content type, properties). Editing a
file is a local change, deleting one a local delete, a new file a local create, renaming one (same
content under a new name) a local move; the next round uploads them.

One round:
1. no collblob yet: the initial manifest (empty collblob), page by page, then downloads;
2. uploads of local changes, each conditional on the last known tag (``If: (<rt:…>)``); a 412 is
   a conflict: the server's version is fetched, and only once it is in hand is the local version
   copied next to it as ``NAME (conflict N).ext`` (uploaded as a new item) and the item's file
   replaced by the server's, so both versions survive whatever fails in between;
   a write is never sent twice: each is noted in the state file until its answer is in, and when
   an answer was lost the next round reads the updated manifest first, which tells whether the
   server applied the write (the store then has its result) or not (the change is uploaded);
3. the updated manifest with the collblob and a ``resourcetaglist`` of the tags this round
   obtained out of band (from uploads and out-of-manifest GETs), page by page until a short page;
4. a 475 at any manifest: drop the collblob, fetch the full manifest again and reconcile the store
   by repl-uid (same tag: keep the file; other tag: download; absent: remove).

Readings of the spec's ambiguities (§13) chosen by this client:
- §13.6 the first manifest sends ``<R:collblob/>``.
- §13.7 an empty ``<R:repl/>`` keeps the stored collblob; a manifest never overwrites it with none.
- §13.10 the resourcetaglist is sent on updated manifests only, never on an initial or resync
  manifest: a server that folds those entries away would make the reconciliation remove the files.
- §13.11 paging: ``Range: rows=0-(N-1)`` with the newest collblob each time; more pages while
  ``Content-Range`` says rows remain (``last+1 < total``), or, without it, while a page is full;
  416 and the empty ``<R:repl/>`` also end it.
- §13.14 with ``--page-size 0`` (no Range) and no Content-Range, a silent server cap is possible:
  the client asks again until a manifest brings no entry.
- §13.16 deletes are applied by repl-uid; their href is never used.
- §13.17 ResourceTag/Repl-UID headers with or without angle brackets. A GET answer without
  ResourceTag takes the manifest's tag; a refetch (after a 412 or 210) has none to take: its
  content is kept and the item marked stale (its last known tag kept), so that the next
  manifest, which lists the item with its tag, settles it, and a conditional write with the old
  tag meets a 412 rather than overwriting what it has not seen.
- §13.18 after a MOVE the destination is read with PROPFIND (``If: (<rid:…>)``) for its tag and uid.
- §13.19 the ResourceTag of a DELETE answer is ignored.
- §13.21 MKCOL is not used (the store is one flat collection).
- §13.22 a 210 answer's body is ignored; the item is downloaded again, and until it is, the
  item is stale: the tag the 210 gave names the server's version, not the one here.
- hrefs are used for their path only, joined to the URL the client was given, so that a reverse
  proxy (whose upstream's host appears in the hrefs) stays in the path.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import select
import ssl
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, quote, unquote, urlsplit

from lxml import etree

from ..protocol import exchange
from ..protocol import xml as safexml
from ..protocol.headers import strip_coded_url
from ..protocol.model import Entry, Response, normalise_path, short_token

STATE_FILE = ".repltap-sync.json"
STATE_VERSION = 1
DAV = "DAV:"
REPL = "http://schemas.microsoft.com/repl/"
TAG = f"{{{REPL}}}resourcetag"
UID = f"{{{REPL}}}repl-uid"
SUBJECT = "{urn:schemas:httpmail:}subject"
FILEAS = "{urn:schemas:contacts:}fileas"
CONTENT_TYPE = f"{{{DAV}}}getcontenttype"
USER_AGENT = "repltap-sync/0.1"
# Sent once more when a kept-alive connection closes under them; writes never are.
IDEMPOTENT = frozenset({"GET", "HEAD", "PROPFIND", "SEARCH", "OPTIONS"})
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_TYPES = {
    ".eml": "message/rfc822",
    ".vcf": "text/vcard",
    ".ics": "text/calendar",
    ".txt": "text/plain",
}


class SyncError(Exception):
    """A failure that ends the round; the message is one readable sentence."""


class AnswerLost(SyncError):
    """A write went out and its answer never came: the server may or may not have applied it."""


class InvalidCollblob(Exception):
    """The server answered 475."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------------------ HTTP


@dataclass
class Reply:
    """A complete HTTP response."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        n = name.lower()
        return next((v for k, v in self.headers if k.lower() == n), None)

    def first_line(self) -> str:
        """The body's first line, for error messages."""
        return (
            self.body.decode("utf-8", "replace").strip().splitlines()[0][:200]
            if (self.body.strip())
            else ""
        )


def open_connection(
    scheme: str, host: str, port: int | None, proxy: SplitResult | None, timeout: float
) -> http.client.HTTPConnection:
    """A connection (not yet open) to ``host``:``port``, or to the HTTP proxy ``proxy`` in
    front of it: a CONNECT tunnel through it for https. Shared with ``repltap replay-client``."""
    if proxy is not None:
        phost, pport = proxy.hostname or "", proxy.port or 8080
        if scheme == "https":
            conn = http.client.HTTPSConnection(
                phost, pport, timeout=timeout, context=ssl.create_default_context()
            )
            conn.set_tunnel(host, port)
            return conn
        return http.client.HTTPConnection(phost, pport, timeout=timeout)
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout)
    return http.client.HTTPConnection(host, port, timeout=timeout)


class Http:
    """One keep-alive connection to the server, or to an HTTP proxy in front of it."""

    def __init__(self, base_url: str, proxy: str | None = None, timeout: float = 30) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise SyncError(f"{base_url!r} is not an http:// or https:// URL")
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.origin = f"{u.scheme}://{u.netloc}"
        self.proxy = urlsplit(proxy) if proxy else None
        if self.proxy is not None and (self.proxy.scheme != "http" or not self.proxy.hostname):
            raise SyncError(f"--proxy {proxy!r}: expected http://host:port")
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        return open_connection(self.scheme, self.host, self.port, self.proxy, self.timeout)

    def _idle_closed(self) -> bool:
        """The kept-alive connection is readable while no answer is due: the server closed it
        (or sent something unasked for); either way it cannot carry another request."""
        sock = self.conn.sock if self.conn is not None else None
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Reply:
        """Send a request for ``path`` (on the server's origin) and read the whole answer.

        When the connection closes under a request before its answer (a kept-alive one the
        server closed meanwhile, or one a proxy or the network dropped), an idempotent request
        (GET, HEAD, PROPFIND, SEARCH, OPTIONS) is sent once more on a new connection. A write
        is never sent again: the server may have applied it before the connection went, and a
        second copy could be applied twice. Its failure raises AnswerLost, and the round ends
        there."""
        url = self.origin + path
        # Through a plain-HTTP proxy the request line carries the absolute URL.
        target = url if self.proxy is not None and self.scheme == "http" else path
        h = {"User-Agent": USER_AGENT, **(headers or {})}
        idempotent = method.upper() in IDEMPOTENT
        where = f"the proxy {self.proxy.geturl()}" if self.proxy else self.origin
        for attempt in range(2):
            if self.conn is not None and not idempotent and self._idle_closed():
                self.close()  # closed while idle: a write goes on a new connection instead
            if self.conn is None:
                self.conn = self._connect()
                try:
                    self.conn.connect()  # nothing is sent yet: a failure here is no lost answer
                except (OSError, http.client.HTTPException) as e:
                    self.close()
                    raise SyncError(f"{method} {url}: cannot talk to {where}: {e}") from None
            try:
                self.conn.request(method, target, body=body or None, headers=h)
                resp = self.conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                self.close()
                closed = isinstance(
                    e, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
                )
                if not idempotent:
                    how = "the connection was closed" if closed else "the exchange failed"
                    raise AnswerLost(
                        f"{method} {url}: {how} before its answer came ({e}); the server may or "
                        "may not have applied it, so it is not sent again: the next round reads "
                        "the manifest first to learn which"
                    ) from None
                if not closed:
                    raise SyncError(f"{method} {url}: cannot talk to {where}: {e}") from None
                if attempt:
                    raise SyncError(f"{method} {url}: the connection was closed ({e})") from None
                # A kept-alive connection the server closed meanwhile, or a new one dropped on
                # the way (a proxy, a network): a read asks once more, on a new connection.
                continue
            if resp.will_close:
                self.close()
            return Reply(resp.status, resp.reason, resp.getheaders(), data)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ------------------------------------------------------------------------------ the store


@dataclass
class Item:
    """What the client knows about one item, keyed by repl-uid."""

    uid: str
    name: str  # the file in the store
    href: str  # the server path (percent-encoded, normalised)
    tag: str
    sha256: str  # of the file as last synchronised
    content_type: str = "application/octet-stream"
    props: dict[str, str] = field(default_factory=dict)
    # The file is not known to be the version ``tag`` names: its answer came without a
    # ResourceTag (the tag is the last one known), or it was sent and the server changed it
    # (210) and its version is not here yet. The next manifest that lists the item downloads it
    # whatever tag it gives; a conditional write with the old tag gets 412 if it is outdated.
    stale: bool = False


@dataclass
class State:
    """The state file."""

    url: str
    sql: str
    collblob: str | None = None
    items: dict[str, Item] = field(default_factory=dict)
    # Writes sent and not yet answered ("PUT /path"): written down before each write goes out
    # and cleared once its answer is in, so that after a round that ended without the answer
    # (a lost connection, a timeout, a killed process) the next one knows to read the manifest
    # before it writes again.
    unsure: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> State | None:
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("version") != STATE_VERSION:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            items = {uid: Item(**d) for uid, d in doc["items"].items()}
            unsure = doc.get("unsure", [])
            if not isinstance(unsure, list) or not all(isinstance(w, str) for w in unsure):
                raise ValueError("unsure: not a list of strings")
            return cls(doc["url"], doc["sql"], doc.get("collblob"), items, unsure)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SyncError(
                f"the state file {path} cannot be read ({e}); move it away to start afresh"
            ) from None

    def save(self, path: Path) -> None:
        doc = {
            "version": STATE_VERSION,
            "url": self.url,
            "sql": self.sql,
            "collblob": self.collblob,
            "items": {uid: _item_doc(i) for uid, i in sorted(self.items.items())},
        }
        if self.unsure:
            doc["unsure"] = self.unsure
        _atomic_write(path, (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode())


def _item_doc(item: Item) -> dict[str, object]:
    doc = asdict(item)
    if not item.stale:
        del doc["stale"]  # the usual case says nothing
    return doc


def _atomic_write(path: Path, data: bytes) -> None:
    # Dot-named, so a scan never mistakes a half-written file for a local change.
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_name(href: str) -> str:
    """The store's file name for an item URL: its decoded last segment, made safe."""
    seg = href.rstrip("/").rsplit("/", 1)[-1]
    name = unquote(seg)
    unsafe = (
        not name
        or name.startswith(".")
        or any(c in name for c in "/\\\x00")
        or any(ord(c) < 32 for c in name)
    )
    if unsafe:
        name = quote(name, safe=" ").replace(".", "%2E", 1) if name else "%00"
    return name


def guess_type(name: str) -> str:
    """A content type for a new local file, from its extension."""
    return _TYPES.get(os.path.splitext(name)[1].lower(), "application/octet-stream")


# ------------------------------------------------------------------------------ messages


def build_sql(path: str) -> str:
    """The query this client replicates with (spec §8.1's shape)."""
    scope = path.replace("'", "%27").replace('"', "%22")
    return (
        'SELECT "DAV:href", "DAV:getcontenttype", "urn:schemas:httpmail:subject", '
        '"urn:schemas:contacts:fileas", "http://schemas.microsoft.com/repl/resourcetag", '
        '"http://schemas.microsoft.com/repl/repl-uid" '
        f"FROM SCOPE('SHALLOW TRAVERSAL OF \"{scope}\"') "
        'WHERE "DAV:isfolder" = false AND "DAV:ishidden" = false'
    )


def manifest_body(sql: str, collblob: str | None, acks: list[str]) -> bytes:
    """A ``D:searchrequest`` carrying ``R:repl`` (spec §8.1–§8.3)."""
    root = etree.Element(f"{{{DAV}}}searchrequest", nsmap={"D": DAV, "R": REPL})
    repl = etree.SubElement(root, f"{{{REPL}}}repl")
    cb = etree.SubElement(repl, f"{{{REPL}}}collblob")
    if collblob:
        cb.text = collblob
    if acks:
        lst = etree.SubElement(repl, f"{{{REPL}}}resourcetaglist")
        for t in acks:
            etree.SubElement(lst, f"{{{REPL}}}resourcetag").text = t
    etree.SubElement(root, f"{{{DAV}}}sql").text = sql
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


def propfind_body(names: list[str]) -> bytes:
    root = etree.Element(f"{{{DAV}}}propfind", nsmap={"D": DAV, "R": REPL})
    prop = etree.SubElement(root, f"{{{DAV}}}prop")
    for n in names:
        etree.SubElement(prop, n)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


def props_of_responses(body: bytes) -> list[dict[str, str]]:
    """The 200-status properties of each ``D:response``, in document order."""
    try:
        root = safexml.parse(body)
    except safexml.XmlProblem:
        return []
    out = []
    for resp in root.iter(f"{{{DAV}}}response"):
        d: dict[str, str] = {}
        for ps in resp.iter(f"{{{DAV}}}propstat"):
            status = exchange.parse_status_line(ps.findtext(f"{{{DAV}}}status"))
            if status != 200:
                continue
            for prop in ps.iter(f"{{{DAV}}}prop"):
                for p in prop:
                    if isinstance(p.tag, str):
                        d[p.tag] = "".join(str(t) for t in p.itertext()).strip()
        out.append(d)
    return out


@dataclass
class Page:
    """One manifest answer, decoded."""

    response: Response
    props: list[dict[str, str]]
    status: int

    @property
    def entries(self) -> list[Entry]:
        return self.response.entries


# ------------------------------------------------------------------------------ the round


@dataclass
class Report:
    """What a round did."""

    downloaded: int = 0
    uploaded: int = 0  # PUTs and MOVEs
    removed_local: int = 0
    deleted_remote: int = 0  # DELETEs
    moved: int = 0  # moves made on the server, applied here
    resyncs: int = 0
    conflicts: list[str] = field(default_factory=list)
    manifests: int = 0


class Sync:
    """One replication round of one collection into one store directory."""

    def __init__(
        self,
        url: str,
        store: Path,
        *,
        proxy: str | None = None,
        page_size: int = 100,
        out: Callable[[str], None] = print,
    ) -> None:
        if not url.endswith("/"):
            url += "/"  # a collection URL
        self.url = url
        self.http = Http(url, proxy)
        self.path = normalise_path(urlsplit(url).path or "/")
        self.dir = store
        self.page_size = page_size
        self.out = out
        self.report = Report()
        self.acks: list[str] = []
        self.state_path = store / STATE_FILE
        self.creates: list[str] = []  # names of local files to upload as new items

    # ---------------------------------------------------------------- helpers
    def say(self, line: str) -> None:
        self.out(line)

    def save(self) -> None:
        self.state.save(self.state_path)

    def file(self, name: str) -> Path:
        return self.dir / name

    def tracked(self) -> dict[str, Item]:
        return {i.name: i for i in self.state.items.values()}

    def dirty(self, item: Item) -> bool:
        p = self.file(item.name)
        return not p.exists() or _sha(p.read_bytes()) != item.sha256

    def free_name(self, name: str, label: str) -> str:
        stem, ext = os.path.splitext(name)
        taken = set(self.tracked()) | {p.name for p in self.dir.iterdir()}
        n = 1
        while True:
            candidate = f"{stem} ({label} {n}){ext}" if label else f"{stem} ({n + 1}){ext}"
            if candidate not in taken:
                return candidate
            n += 1

    def ack(self, tag: str | None) -> None:
        if tag and tag not in self.acks:
            self.acks.append(tag)

    def label(self, item: Item) -> str:
        title = item.props.get(SUBJECT) or item.props.get(FILEAS)
        return f"{item.name}" + (f"  “{title}”" if title else "")

    # ---------------------------------------------------------------- the round
    def run(self) -> Report:
        """One round (spec §3); raises SyncError on failure."""
        self.dir.mkdir(parents=True, exist_ok=True)
        sql = build_sql(self.path)
        state = State.load(self.state_path)
        if state is not None and normalise_path(urlsplit(state.url).path) != self.path:
            raise SyncError(
                f"the store {self.dir} replicates {state.url}, not {self.url}; use another --store"
            )
        if state is None:
            state = State(self.url, sql)
        if state.sql != sql:
            state.collblob = None  # another query needs a new initial sync (spec §8.2)
            state.sql = sql
        state.url = self.url
        self.state = state
        self.say(f"sync {self.url} ⇄ {self.dir}")
        try:
            if state.collblob is None:
                self.full_sync("initial")
            elif state.unsure:
                self.say(
                    f"the answer to {', '.join(state.unsure)} was lost last round: the manifest "
                    "first, to learn whether the server applied it"
                )
                self.update()
            if state.unsure:
                state.unsure = []  # what the server applied is in the store now
                self.save()
            self.upload()
            self.update()
        finally:
            self.save()
            self.http.close()
        r = self.report
        n_items = len(state.items)
        bits = [f"{n_items} item{'' if n_items == 1 else 's'} in the store"]
        for n, word in (
            (r.downloaded, "downloaded"),
            (r.uploaded, "uploaded"),
            (r.moved, "moved on the server"),
            (r.deleted_remote, "deleted on the server"),
            (r.removed_local, "removed locally"),
            (len(r.conflicts), "conflict" if len(r.conflicts) == 1 else "conflicts"),
            (r.resyncs, "full resync" if r.resyncs == 1 else "full resyncs"),
        ):
            if n:
                bits.append(f"{n} {word}")
        self.say("done: " + ", ".join(bits))
        return r

    # ---------------------------------------------------------------- manifests
    def fetch(self, collblob: str | None, acks: list[str]) -> Page:
        body = manifest_body(self.state.sql, collblob, acks)
        headers = {"Content-Type": 'text/xml; charset="utf-8"', "Translate": "f"}
        if self.page_size > 0:
            headers["Range"] = f"rows=0-{self.page_size - 1}"
        rep = self.http.request("SEARCH", self.path, headers, body)
        self.report.manifests += 1
        req = exchange.decode_request("SEARCH", self.path, headers, body)
        resp = exchange.decode_response(req, rep.status, rep.headers, rep.body)
        if rep.status == 475:
            why = rep.first_line()
            if why.startswith("475"):  # "475 Invalid collblob: <reason>" from some servers
                why = why.partition(":")[2].strip()
            raise InvalidCollblob(why or "no reason given")
        if rep.status == 416:
            return Page(resp, [], 416)  # past the end: nothing more (Evolution's reading)
        if rep.status != 207:
            raise SyncError(f"manifest: {rep.status} {rep.reason} {rep.first_line()}".strip())
        if resp.problem is not None:
            raise SyncError(f"manifest: the answer cannot be read: {resp.problem.detail}")
        if not resp.manifest:
            raise SyncError("manifest: the 207 answer carries no R:repl (not a manifest)")
        props = props_of_responses(rep.body)
        if len(props) != len(resp.entries):
            props = [{} for _ in resp.entries]
        return Page(resp, props, 207)

    def more(self, page: Page) -> bool:
        if page.status != 207 or page.response.no_changes:
            return False
        cr = page.response.content_range
        if cr is not None and cr.total is not None:
            return cr.last is not None and cr.last + 1 < cr.total
        if self.page_size > 0:
            return len(page.entries) >= self.page_size  # a full page: there may be more
        # No Range sent, no Content-Range back: a server cap (Exchange's 512) would be silent,
        # so loop until a manifest brings nothing (spec §13.14).
        return bool(page.entries)

    def describe(self, kind: str, n: int, page: Page) -> str:
        r = page.response
        head = f"manifest ({kind}" + (f", page {n}" if n > 1 else "") + ")"
        if page.status == 416:
            return f"{head}: 416, no more rows"
        if r.no_changes:
            return f"{head}: no changes (collblob kept)"
        parts = []
        cr = r.content_range
        if cr is not None and cr.last is not None:
            parts.append(f"rows {cr.first}-{cr.last} of {cr.total}")
        c = r.changes
        parts.append(
            ", ".join(f"{c[k]} {k}" for k in ("new", "change", "delete") if c[k])
            or "0 entries (a new collblob only)"
        )
        return f"{head}: " + ", ".join(parts) + f"; collblob → {short_token(r.token, 4)}"

    def full_sync(self, kind: str) -> None:
        """The manifest from an empty collblob, all pages, then reconciliation by repl-uid."""
        for _attempt in range(3):
            known = set(self.state.items)
            seen: set[str] = set()
            token: str | None = None
            n = 0
            try:
                while True:
                    n += 1
                    page = self.fetch(token, [])  # never acks here: see the module docstring
                    self.say(self.describe(kind, n, page))
                    self.apply(page, seen)
                    if page.response.token:
                        token = self.state.collblob = page.response.token
                    self.save()
                    if not self.more(page):
                        break
            except InvalidCollblob as e:
                # The collection was re-created while we paged: start over.
                self.say(f"collblob rejected during the full sync ({e.reason}); starting over")
                continue
            if token is None:
                raise SyncError("the full manifest came back without a collblob")
            gone = [u for u in known - seen if u in self.state.items]
            for uid in gone:
                self.remove_local(self.state.items[uid], "no longer on the server")
            self.save()
            return
        raise SyncError("the collection kept changing identity during the full sync")

    def update(self) -> None:
        """The updated manifest with our acknowledged tags, page by page (spec §3 steps 5–8)."""
        n = 0
        while True:
            n += 1
            try:
                page = self.fetch(self.state.collblob, self.acks)
            except InvalidCollblob as e:
                self.say(f"manifest (update): 475 Invalid collblob: {e.reason}")
                self.say("  → discarding the collblob; full resync, reconciling by repl-uid")
                self.report.resyncs += 1
                self.state.collblob = None
                self.save()
                self.full_sync("resync")
                return
            label = "update" + (f", {len(self.acks)} acknowledged" if self.acks else "")
            self.say(self.describe(label, n, page))
            self.apply(page, set())
            if page.response.token:  # never overwrite with none (spec §13.7)
                self.state.collblob = page.response.token
            self.save()
            if not self.more(page):
                return

    # ---------------------------------------------------------------- applying a manifest
    def apply(self, page: Page, seen: set[str]) -> None:
        """Apply entries in server order (spec §3 step 7)."""
        for entry, props in zip(page.entries, page.props, strict=True):
            if entry["uid"] is None:
                self.say(f"  ! an entry without repl-uid ignored (href {entry['href']!r})")
                continue
            if entry["type"] == "delete":
                item = self.state.items.get(entry["uid"])
                if item is not None:
                    self.remove_local(item, "deleted on the server")
                else:
                    self.say(f"  = {short_token(entry['uid'], 6)}  deleted, and not here anyway")
                continue
            if not entry["href"]:
                self.say(f"  ! a {entry['type']} entry without href ignored ({entry['uid']})")
                continue
            path = normalise_path(entry["href"])
            if path.endswith("/"):
                continue  # a folder: this client replicates items only
            seen.add(entry["uid"])
            self.apply_change(entry, entry["uid"], path, props)

    def apply_change(self, entry: Entry, uid: str, path: str, props: dict[str, str]) -> None:
        item = self.state.items.get(uid)
        name = file_name(path)
        if item is not None and item.tag == entry["tag"] and not item.stale:
            # Client-side conflict avoidance: the same state is here already (spec §11).
            if item.href != path and (not self.dirty(item) or self.renamed_here(item, name)):
                self.move_local(item, name, path)
                self.say(f"  ↷ {self.label(item)}  moved on the server (same repl-uid and tag)")
                self.report.moved += 1
            else:
                self.say(f"  = {self.label(item)}  already here (same tag)")
            return
        # The server's version first: the local file is not touched until it is in hand.
        got = self.download(path, entry["tag"])
        if got is None:
            self.say(f"  ? {name}: gone before it could be downloaded")
            return
        content, tag, ctype, fresh = got
        if tag is None and item is None:
            raise SyncError(f"GET {path}: no ResourceTag header and no tag in the manifest")
        same = False
        if item is not None and self.dirty(item) and self.file(item.name).exists():
            local = self.file(item.name).read_bytes()
            same = local == content  # e.g. our own upload, whose answer was lost
            if not same:
                keep = self.keep_aside(item, local)
                self.report.conflicts.append(
                    f"{item.name} changed on the server and here; your version is kept as "
                    f"“{keep}” and will be uploaded as a new item"
                )
                self.say(f"  ! conflict: {self.report.conflicts[-1]}")
        merged = {**props, **fresh}
        ctype = ctype or merged.get(CONTENT_TYPE)
        if tag is None:  # no tag in the manifest nor the answer: the item's stays, as stale
            assert item is not None
            self.place(uid, name, path, content, item.tag, ctype, merged, stale=True)
        else:
            self.place(uid, name, path, content, tag, ctype, merged)
        item = self.state.items[uid]
        self.report.downloaded += 1
        word = entry["type"]
        if same:
            self.say(f"  = {self.label(item)}  {word}, {short_token(tag, 6)}: the version here")
        else:
            self.say(f"  ↓ {self.label(item)}  {word}, {short_token(tag, 6)}")

    def renamed_here(self, item: Item, name: str) -> bool:
        """The item's file was renamed here to ``name`` (same bytes as last synchronised): the
        rename the server reports is this one (e.g. our MOVE, whose answer was lost)."""
        p = self.file(name)
        return (
            not self.file(item.name).exists()
            and name not in self.tracked()
            and p.is_file()
            and _sha(p.read_bytes()) == item.sha256
        )

    def keep_aside(self, item: Item, local: bytes) -> str:
        """Copy the local version of an item to a free ``NAME (conflict N).ext``, to be uploaded
        as a new item; the caller then puts the server's version (already in hand) in the item's
        file. The item's file exists at every moment: nothing that fails or stops the round in
        between leaves it missing, which the next round would read as a local delete (a kill
        leaves at worst the local version twice)."""
        keep = self.free_name(item.name, "conflict")
        _atomic_write(self.file(keep), local)
        return keep

    def place(
        self,
        uid: str,
        name: str,
        path: str,
        content: bytes,
        tag: str,
        ctype: str | None,
        props: dict[str, str],
        *,
        stale: bool = False,
    ) -> None:
        """Write an item's file and record it, making room if another file has its name."""
        old = self.state.items.get(uid)
        self.make_room(name, uid, _sha(content))
        _atomic_write(self.file(name), content)
        if old is not None and old.name != name and self.file(old.name).exists():
            self.file(old.name).unlink()
        keep = {k: v for k, v in props.items() if k in (SUBJECT, FILEAS)}
        self.state.items[uid] = Item(
            uid, name, path, tag, _sha(content), ctype or guess_type(name), keep, stale
        )

    def make_room(self, name: str, uid: str, sha256: str) -> None:
        """A file called ``name`` that is not item ``uid``'s is moved aside, unless it is an
        untracked file with the item's very bytes (``sha256``): that one is the item already
        (e.g. our upload of it, whose answer was lost)."""
        p = self.file(name)
        if not p.exists():
            return
        owner = self.tracked().get(name)
        if owner is not None and owner.uid == uid:
            return
        if owner is None and p.is_file() and _sha(p.read_bytes()) == sha256:
            return
        aside = self.free_name(name, "local" if owner is None else "renamed")
        os.replace(p, self.file(aside))
        if owner is not None:
            owner.name = aside  # fixed when that item's own entry arrives
        else:
            self.say(f"  ! {name} exists here but not on the server: kept as “{aside}”")

    def move_local(self, item: Item, name: str, path: str) -> None:
        self.make_room(name, item.uid, item.sha256)
        if self.file(item.name).exists():
            os.replace(self.file(item.name), self.file(name))
        item.name, item.href = name, path

    def remove_local(self, item: Item, why: str) -> None:
        p = self.file(item.name)
        del self.state.items[item.uid]
        if p.exists() and _sha(p.read_bytes()) != item.sha256:
            self.report.conflicts.append(
                f"{item.name} was {why} but changed here; kept, it will be uploaded as a new "
                "item next round"
            )
            self.say(f"  ! conflict: {self.report.conflicts[-1]}")
            return
        if p.exists():
            p.unlink()
        self.report.removed_local += 1
        self.say(f"  ✗ {self.label(item)}  {why}")

    # ---------------------------------------------------------------- downloads
    def download(
        self, path: str, expected: str | None
    ) -> tuple[bytes, str | None, str | None, dict[str, str]] | None:
        """GET an item (spec §3 step 2). When its tag is not the manifest's, the item changed
        in between: its properties are read with PROPFIND ``If: (<rt:tag>)`` so that they
        belong to the content just downloaded (412: it changed again; try again). An answer
        without ResourceTag takes the manifest's tag (``expected``), or, when there is none
        (a refetch), none: the content is kept and the caller leaves the tag to the next
        manifest."""
        for _ in range(3):
            rep = self.http.request("GET", path, {"Translate": "f"})
            if rep.status == 404:
                return None
            if rep.status != 200:
                raise SyncError(f"GET {path}: {rep.status} {rep.reason} {rep.first_line()}")
            tag = strip_coded_url(rep.header("ResourceTag") or "") or expected
            ctype = rep.header("Content-Type")
            if tag is None or tag == expected:
                return rep.body, tag, ctype, {}
            props = self.propfind(path, f"(<{tag}>)", [SUBJECT, FILEAS, TAG, UID, CONTENT_TYPE])
            if props is not None:
                return rep.body, tag, ctype, props
        raise SyncError(f"{path} keeps changing while it is downloaded")

    def propfind(self, path: str, condition: str, names: list[str]) -> dict[str, str] | None:
        """Depth-0 PROPFIND under ``If: condition``; None on 412."""
        rep = self.http.request(
            "PROPFIND",
            path,
            {"Depth": "0", "If": condition, "Content-Type": 'text/xml; charset="utf-8"'},
            propfind_body(names),
        )
        if rep.status == 412:
            return None
        if rep.status != 207:
            raise SyncError(f"PROPFIND {path}: {rep.status} {rep.reason} {rep.first_line()}")
        found = props_of_responses(rep.body)
        return found[0] if found else {}

    # ---------------------------------------------------------------- uploads
    def scan(self) -> tuple[list[Item], list[tuple[Item, str]], list[Item], list[str]]:
        """Local changes: (deleted items, renamed (item, new name), edited items, new files)."""
        files = {p.name for p in self.dir.iterdir() if p.is_file() and not p.name.startswith(".")}
        tracked = self.tracked()
        missing = [i for n, i in tracked.items() if n not in files]
        edited = [i for n, i in tracked.items() if n in files and self.dirty(i)]
        new = sorted(files - set(tracked))
        by_sha: dict[str, list[str]] = {}
        for n in new:
            by_sha.setdefault(_sha(self.file(n).read_bytes()), []).append(n)
        renamed = []
        for item in list(missing):
            cands = by_sha.get(item.sha256, [])
            if len(cands) == 1:
                renamed.append((item, cands[0]))
                missing.remove(item)
                new.remove(cands[0])
                del by_sha[item.sha256]
        return missing, renamed, edited, new

    def upload(self) -> None:
        """Upload local changes, each conditional on the last known tag (spec §3 step 4)."""
        deleted, renamed, edited, new = self.scan()
        if not (deleted or renamed or edited or new):
            self.say("upload: no local changes")
            return
        self.say(
            f"upload: {len(edited)} edited, {len(new)} new, {len(deleted)} deleted, "
            f"{len(renamed)} renamed"
        )
        for item in deleted:
            self.up_delete(item)
        for item, name in renamed:
            self.up_move(item, name)
        for item in edited:
            self.up_edit(item)
        self.creates += new
        while self.creates:
            self.up_create(self.creates.pop(0))

    def write(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Reply:
        """A write, noted in the state file before it goes out and struck off once its answer
        is in. Without an answer (AnswerLost, a timeout, a killed process) the note stays: the
        next round reads the manifest before it writes, and finds there whether the server
        applied the write (a change, new item, move or delete with the content the store
        already has) or not (nothing: the local change is still there to upload)."""
        what = f"{method} {path}"
        self.state.unsure.append(what)
        self.save()
        try:
            rep = self.http.request(method, path, headers, body)
        except AnswerLost:
            raise
        except SyncError:
            self.state.unsure.remove(what)  # never sent (no connection): nothing to learn
            raise
        self.state.unsure.remove(what)
        return rep

    def tag_of(self, rep: Reply) -> tuple[str | None, str | None]:
        tag = strip_coded_url(rep.header("ResourceTag") or "") or None
        uid = strip_coded_url(rep.header("Repl-UID") or "") or None
        return tag, uid

    def refetch(self, item: Item) -> bool:
        """Fetch the server's version into the item's file; False when it is gone there."""
        got = self.download(item.href, None)
        if got is None:
            return False
        self.take(item, got)
        return True

    def take(self, item: Item, got: tuple[bytes, str | None, str | None, dict[str, str]]) -> None:
        """Put a downloaded server version of ``item`` in its file and record it. Without a
        tag (the answer lost its ResourceTag) the item keeps the one it had, as stale, and it is
        not acknowledged: the manifest then lists the item, and that settles its tag."""
        content, tag, ctype, props = got
        self.place(
            item.uid,
            item.name,
            item.href,
            content,
            tag or item.tag,
            ctype or item.content_type,
            {**item.props, **props},
            stale=tag is None,
        )
        self.ack(tag)  # obtained out of band: must not come back in the manifest
        self.report.downloaded += 1

    def up_delete(self, item: Item) -> None:
        rep = self.write("DELETE", item.href, {"If": f"(<{item.tag}>)"})
        if rep.status in (200, 204, 404):
            # The DELETE's ResourceTag is ignored (spec §13.19).
            del self.state.items[item.uid]
            self.report.deleted_remote += 1
            self.say(f"  ✗ DELETE {item.name} if {short_token(item.tag, 6)} → {rep.status}")
        elif rep.status == 412:
            restored = self.refetch(item)
            msg = (
                f"{item.name} changed on the server since you deleted it here (412): "
                "the server's version is back"
                if restored
                else f"{item.name} is gone on the server too"
            )
            if not restored:
                del self.state.items[item.uid]
            self.report.conflicts.append(msg)
            self.say(f"  ! DELETE {item.name} → 412; conflict: {msg}")
        else:
            raise SyncError(f"DELETE {item.href}: {rep.status} {rep.reason} {rep.first_line()}")
        self.save()

    def up_move(self, item: Item, name: str) -> None:
        dest = self.path + quote(name, safe=_PATH_SAFE.replace("/", ""))
        rep = self.write(
            "MOVE",
            item.href,
            {"Destination": self.http.origin + dest, "Overwrite": "F", "If": f"(<{item.tag}>)"},
        )
        if rep.status in (201, 204):
            # MOVE answers without ResourceTag: read the destination, guarded by the repl-uid so
            # that we learn about our object and not about something else now at that URL.
            props = self.propfind(dest, f"(<{item.uid}>)", [TAG, UID, SUBJECT, FILEAS])
            old = item.name
            item.name, item.href = name, normalise_path(dest)
            if props is not None and props.get(TAG):
                item.tag = props[TAG]
                self.ack(item.tag)
            if props is not None and props.get(UID) and props[UID] != item.uid:
                # The server gave the moved resource a new repl-uid (the SDK allows it).
                self.state.items.pop(item.uid)
                item.uid = props[UID]
                self.state.items[item.uid] = item
            self.report.uploaded += 1
            self.say(
                f"  ↷ MOVE {old} → {name} if {short_token(item.tag, 6)} → {rep.status}; "
                f"PROPFIND → {short_token(item.tag, 6)}"
            )
        elif rep.status in (412, 404):
            # The source changed (or is gone), or the name is taken: keep both versions.
            restored = self.refetch(item) if rep.status == 412 else False
            if not restored:
                del self.state.items[item.uid]
            msg = (
                f"{item.name} could not be renamed to {name} on the server ({rep.status}); "
                + ("the server's version is back as " + item.name + ", and " if restored else "")
                + f"{name} is uploaded as a new item"
            )
            self.report.conflicts.append(msg)
            self.say(f"  ! MOVE {item.name} → {name} → {rep.status}; conflict: {msg}")
            self.creates.append(name)
        else:
            raise SyncError(f"MOVE {item.href}: {rep.status} {rep.reason} {rep.first_line()}")
        self.save()

    def up_edit(self, item: Item) -> None:
        content = self.file(item.name).read_bytes()
        rep = self.write(
            "PUT",
            item.href,
            {"If": f"(<{item.tag}>)", "Content-Type": item.content_type, "Translate": "f"},
            content,
        )
        if rep.status in (200, 201, 204, 210):
            tag, _ = self.tag_of(rep)
            old = item.tag
            item.tag, item.sha256 = tag or item.tag, _sha(content)
            # After a 210 the tag names the server's changed version, which is not here until
            # the refetch brings it: stale till then (and not acknowledged), so that a refetch
            # that fails leaves a state the next manifest mends instead of one that calls our
            # own version the server's.
            item.stale = tag is None or rep.status == 210
            if not item.stale:
                self.ack(tag)
            self.report.uploaded += 1
            self.say(
                f"  ↑ PUT {item.name} if {short_token(old, 6)} → {rep.status}, "
                f"tag {short_token(tag, 6)}"
            )
            if rep.status == 210:
                self.save()
                self.refetch(item)
                self.say(
                    f"    210 Content Different: the server changed {item.name}; "
                    "downloaded its version"
                )
        elif rep.status == 412:
            old = item.tag
            # The server's version first, and only then is the local one set aside: should the
            # GET fail, the round ends with the local edit where it was, and the next round
            # sends the PUT again (a spurious 412, injected on the way, must not turn into a
            # DELETE of the server's version because the item's file went missing).
            got = self.download(item.href, None)
            local = self.file(item.name).read_bytes()
            if got is not None and got[0] == local:
                self.take(item, got)  # the server has this very version: nothing to keep apart
                self.say(f"  = PUT {item.name} if {short_token(old, 6)} → 412: the same content")
                self.save()
                return
            if got is not None:
                keep = self.keep_aside(item, local)
                self.take(item, got)
                msg = (
                    f"{item.name} changed on the server since your edit (412): the server's "
                    f"version is in {item.name}, yours in “{keep}”, uploaded as a new item"
                )
                self.creates.append(keep)
            else:
                del self.state.items[item.uid]
                msg = (
                    f"{item.name} was deleted on the server while you edited it (412): "
                    "your version is uploaded as a new item"
                )
                self.creates.append(item.name)
            self.report.conflicts.append(msg)
            self.say(f"  ! PUT {item.name} if {short_token(old, 6)} → 412; conflict: {msg}")
        else:
            raise SyncError(f"PUT {item.href}: {rep.status} {rep.reason} {rep.first_line()}")
        self.save()

    def up_create(self, name: str) -> None:
        content = self.file(name).read_bytes()
        ctype = guess_type(name)
        for _ in range(20):
            path = self.path + quote(name, safe=_PATH_SAFE.replace("/", ""))
            rep = self.write(
                "PUT",
                path,
                {"If-None-Match": "*", "Content-Type": ctype, "Translate": "f"},
                content,
            )
            if rep.status == 412:  # the name is taken on the server: pick another (Evolution)
                other = self.free_name(name, "")
                os.replace(self.file(name), self.file(other))
                self.say(f"  ↑ PUT {name} (new) → 412: the name is taken; trying {other}")
                name = other
                continue
            if rep.status not in (200, 201, 204, 210):
                raise SyncError(f"PUT {path}: {rep.status} {rep.reason} {rep.first_line()}")
            tag, uid = self.tag_of(rep)
            if uid is None or tag is None:
                raise SyncError(f"PUT {path}: {rep.status} without ResourceTag and Repl-UID")
            stale = rep.status == 210  # as for an edit: the server's version is still to come
            item = Item(uid, name, normalise_path(path), tag, _sha(content), ctype, {}, stale)
            self.state.items[uid] = item
            if not stale:
                self.ack(tag)
            self.report.uploaded += 1
            self.say(
                f"  ↑ PUT {name} (new, If-None-Match: *) → {rep.status}, "
                f"tag {short_token(tag, 6)}, uid {short_token(uid, 6)}"
            )
            if rep.status == 210:
                self.save()
                self.refetch(item)
                self.say(
                    f"    210 Content Different: the server changed {name}; downloaded its version"
                )
            self.save()
            return
        raise SyncError(f"no free name on the server for {name}")


def sync(
    url: str,
    store: Path,
    *,
    proxy: str | None = None,
    page_size: int = 100,
    out: Callable[[str], None] = print,
) -> Report:
    """Run one round; raises SyncError on failure."""
    return Sync(url, store, proxy=proxy, page_size=page_size, out=out).run()


# ------------------------------------------------------------------------------ command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``repltap sync``."""
    p.add_argument(
        "url",
        metavar="URL",
        help="the collection, e.g. http://127.0.0.1:8090/exchange/alice/Inbox/",
    )
    p.add_argument("--store", type=Path, required=True, help="the local store directory")
    p.add_argument("--proxy", help="an HTTP proxy, e.g. http://127.0.0.1:8080 (mitmdump)")
    p.add_argument(
        "--page-size",
        type=int,
        default=100,
        metavar="N",
        help="manifest rows per request (Range: rows=0-N-1); 0 sends no Range (default 100)",
    )


def run(args: argparse.Namespace) -> int:
    """``repltap sync``."""
    if args.page_size < 0:
        print("repltap sync: --page-size must be 0 or more", file=sys.stderr)
        return 2
    try:
        sync(
            args.url,
            args.store,
            proxy=args.proxy,
            page_size=args.page_size,
            out=lambda line: print(line, flush=True),
        )
    except SyncError as e:
        print(f"repltap sync: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"repltap sync: error: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = ["Report", "State", "Sync", "SyncError", "file_name", "sync"]
