"""The manifest cache's storage: stored manifest answers and a replica of every collection.

What may live here: the identity of a manifest request, the rules deciding what may be stored,
and the SQLite database (answers keyed by identity; collections and their items as last seen on
the wire). What may not: mitmproxy, sockets, parsing bodies (everything is read from the flow
summaries of summary.py). The mitmproxy adapter is mitm/cache.py.

Threading: a CacheStore holds one sqlite3 connection and must be used from the thread that
created it (the adapter runs it on one worker thread). Several CacheStores, in this process or
in others, may share one database file: WAL lets readers go on while one writer commits, and
every write is one short ``BEGIN IMMEDIATE`` transaction that waits (busy_timeout) rather than
fails when another writer holds the lock.

Durability: ``journal_mode=WAL`` with ``synchronous=NORMAL``: a committed transaction survives
the process being killed (SIGKILL) at any point, because the WAL is written before COMMIT
returns; only a power loss or an OS crash may lose the last commits, never corrupt the file.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from .protocol.model import listed_beside_deletes, normalise_path

SCHEMA_VERSION = 1
# 2: tokens trimmed of XML whitespace only, %2F kept in collection paths (28 November 2026)
IDENTITY_VERSION = 2
MODES = ("observe", "serve", "offline")

# Headers that describe one connection or one transfer, not the answer: never stored or replayed.
# Content-Encoding goes too, because the body is stored decoded (every client accepts identity).
_NOT_STORED = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "content-encoding",
        "set-cookie",  # credentials never reach the database
        "set-cookie2",
        "www-authenticate",
        "authentication-info",
        "age",
    )
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,            -- sha256 of the canonical identity
    identity TEXT NOT NULL,          -- the identity as canonical JSON (credentials only hashed)
    upstream TEXT NOT NULL,
    collection TEXT NOT NULL,
    protocol TEXT NOT NULL,
    token TEXT,                      -- the token the request sent (NULL: initial sync)
    received TEXT,                   -- the token the answer carries (NULL: none, no changes)
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    headers TEXT NOT NULL,           -- JSON [[name, value], ...], latin-1 as on the wire
    body BLOB NOT NULL,              -- decoded (no Content-Encoding)
    entries INTEGER NOT NULL,
    stored REAL NOT NULL,            -- epoch seconds
    flow TEXT NOT NULL               -- the mitmproxy flow it was answered in
);
-- (upstream, collection, token): a miss asks whether the cache ever saw the token, which
-- must not scan a busy collection's answers (make bench: flat up to 1,000,000 answers)
CREATE INDEX IF NOT EXISTS answers_by_token ON answers (upstream, collection, token);
CREATE TABLE IF NOT EXISTS collections (
    upstream TEXT NOT NULL,
    collection TEXT NOT NULL,
    protocol TEXT NOT NULL,
    token TEXT,                      -- the newest token an answer from the server carried
    updated REAL NOT NULL,           -- last manifest or write applied to the replica
    changed REAL NOT NULL DEFAULT 0, -- last successful write seen through the proxy
    PRIMARY KEY (upstream, collection)
);
CREATE TABLE IF NOT EXISTS items (
    upstream TEXT NOT NULL,
    collection TEXT NOT NULL,
    key TEXT NOT NULL,               -- the repl-uid (Exchange) or the href path (RFC 6578)
    uid TEXT,
    href TEXT,                       -- normalised path
    tag TEXT,                        -- resourcetag or ETag, NULL when unknown
    props TEXT NOT NULL DEFAULT '{}',
    via TEXT NOT NULL,               -- "manifest" or the method of the write
    updated REAL NOT NULL,
    flow TEXT NOT NULL,
    PRIMARY KEY (upstream, collection, key)
);
CREATE INDEX IF NOT EXISTS items_by_href ON items (upstream, collection, href);
"""

# Entry fields that are the item's identity and state; any others are kept as its properties.
_ENTRY_CORE = frozenset(("type", "href", "tag", "uid", "implicit", "changetype_raw"))

_UPSERT_FROM_MANIFEST = """
INSERT INTO items (upstream, collection, key, uid, href, tag, props, via, updated, flow)
VALUES (?, ?, ?, ?, ?, ?, ?, 'manifest', ?, ?)
ON CONFLICT (upstream, collection, key) DO UPDATE SET
    uid = COALESCE(excluded.uid, items.uid),
    href = COALESCE(excluded.href, items.href),
    tag = COALESCE(excluded.tag, items.tag),
    props = excluded.props,
    via = 'manifest',
    updated = excluded.updated,
    flow = excluded.flow
"""
# A write's answer: its tag replaces the old one even when absent (the old one is stale then).
_UPSERT_FROM_WRITE = """
INSERT INTO items (upstream, collection, key, uid, href, tag, props, via, updated, flow)
VALUES (?, ?, ?, ?, ?, ?, '{}', ?, ?, ?)
ON CONFLICT (upstream, collection, key) DO UPDATE SET
    uid = COALESCE(excluded.uid, items.uid),
    href = excluded.href,
    tag = excluded.tag,
    via = excluded.via,
    updated = excluded.updated,
    flow = excluded.flow
"""
_MOVED_ITEM = """
INSERT OR REPLACE INTO items (upstream, collection, key, uid, href, tag, props, via, updated, flow)
VALUES (?, ?, ?, ?, ?, ?, '{}', 'MOVE', ?, ?)
"""
_COLLECTIONS = """
SELECT c.upstream, c.collection, c.protocol, c.token, c.updated, c.changed,
    (SELECT COUNT(*) FROM items i WHERE i.upstream = c.upstream AND i.collection = c.collection),
    (SELECT COUNT(*) FROM answers a WHERE a.upstream = c.upstream AND a.collection = c.collection)
FROM collections c ORDER BY c.upstream, c.collection
"""
_IN = "upstream = ? AND collection = ?"


class CacheError(Exception):
    """The database cannot be used; the message is one readable sentence."""


# --------------------------------------------------------------------------------------------
# Identities and rules (pure functions of flow summaries)


def identity(
    s: Mapping[str, Any],
    *,
    scheme: str,
    query_string: str = "",
    brief: str | None = None,
    auth: str | None = None,
) -> dict[str, Any]:
    """What makes two manifest requests the same request, from the request's summary.

    The issue's list (upstream, collection, protocol, token, query scope, range or limit,
    acknowledged tags) plus everything else that changes the answer's bytes: the method, the
    SELECT list or requested properties, Depth, sync-level, the Brief header, and who asks
    (``auth``: a salted hash of the credentials, so one user's answer never goes to another).
    Stricter than needed is safe: it can only turn a hit into a miss.
    """
    req = s["request"]
    return {
        "v": IDENTITY_VERSION,
        "upstream": s.get("upstream"),
        "scheme": scheme,
        "collection": s["collection"],
        "query_string": query_string,
        "protocol": s["protocol"],
        "method": s["method"],
        "token": req.get("token"),
        "query": req.get("query"),
        "select": list(req.get("select") or []),
        "props": list(req.get("props") or []),
        "depth": req.get("depth"),
        "sync_level": req.get("sync_level"),
        "range": req.get("range"),
        "limit": req.get("limit"),
        "acknowledged": list(req.get("acknowledged") or []),  # order kept: exact is safest
        "brief": brief,
        "auth": auth,
    }


def key_of(ident: Mapping[str, Any]) -> str:
    """The database key of an identity: sha256 of its canonical JSON."""
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_manifest_request(s: Any) -> TypeGuard[dict[str, Any]]:
    """Whether a flow summary is a decoded manifest request."""
    return (
        isinstance(s, dict)
        and s.get("kind") == "manifest"
        and isinstance(s.get("request"), dict)
        and bool(s["request"].get("manifest"))
        and s.get("collection") is not None
    )


def not_storable(
    s: Mapping[str, Any],
    *,
    streamed: bool,
    body: bytes | None,
    declared_length: str | None,
) -> str | None:
    """Why a manifest answer must not be stored, or None when it may be.

    Never 4xx/5xx (or anything but 2xx), never a body that did not arrive whole (streamed and not
    kept, or shorter or longer than its Content-Length), never an undecodable one, never one the
    server itself truncated (RFC 6578's 507 for the request-URI).
    """
    resp = s.get("response")
    if not isinstance(resp, dict):
        return "no answer"
    status = resp.get("status", 0)
    if not 200 <= status < 300:
        return f"status {status}: only 2xx answers are stored"
    if streamed or body is None:
        return "the body was streamed, so it may not be what the client received"
    if declared_length is not None:
        v = declared_length.strip()
        if not v.isdigit() or int(v) != len(body):
            return f"the body is {len(body)} bytes but Content-Length says {declared_length!r}"
    if resp.get("undecodable"):
        return f"the answer could not be decoded ({resp['undecodable'].get('reason')})"
    if not resp.get("manifest"):
        return "the answer is not a manifest"
    if resp.get("truncated"):
        return "the server truncated the answer (507 for the request-URI)"
    return None


def storable_headers(fields: Iterable[tuple[bytes, bytes]]) -> list[list[str]]:
    """The answer's headers worth replaying, in order, as on the wire (latin-1)."""
    out = []
    for name, value in fields:
        n = name.decode("latin-1")
        if n.lower() not in _NOT_STORED:
            out.append([n, value.decode("latin-1")])
    return out


def parent_of(path: str) -> str:
    """The collection a resource path belongs to: ``/a/b/c.EML`` → ``/a/b/``."""
    p = path[:-1] if path.endswith("/") else path
    i = p.rfind("/")
    return p[: i + 1] if i >= 0 else "/"


def _pairs(
    db: sqlite3.Connection, columns: str, by: str, where: tuple[str, str], values: set[str]
) -> dict[str, str]:
    """``columns`` (two) of a collection's items whose ``by`` is one of ``values``, as a dict;
    in chunks of 500, under SQLite's limit on parameters."""
    wanted = sorted(values)
    found: dict[str, str] = {}
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        marks = ",".join("?" * len(chunk))
        found.update(
            db.execute(
                f"SELECT {columns} FROM items WHERE {_IN} AND {by} IN ({marks})", (*where, *chunk)
            ).fetchall()
        )
    return found


def _complete_listing(s: Mapping[str, Any]) -> bool:
    """An initial sync answered in full: every member of the collection, nothing left out."""
    req, resp = s["request"], s["response"]
    if req.get("token") is not None or resp.get("truncated"):
        return False
    entries = resp.get("entries") or []
    limit = req.get("limit")
    if limit is not None and len(entries) >= limit:
        return False  # maybe more (a server that truncates without 507)
    cr = resp.get("content_range")
    if cr is None:
        return not req.get("range")  # a ranged request with no Content-Range: unknown
    total = cr.get("total")
    if total is None:
        return False
    if total == 0:
        return True
    first, last = cr.get("first"), cr.get("last")
    return first == 0 and last is not None and last + 1 >= total


# --------------------------------------------------------------------------------------------
# The database


@dataclass(frozen=True)
class Answer:
    """One stored manifest answer."""

    key: str
    identity: dict[str, Any]
    upstream: str
    collection: str
    protocol: str
    token: str | None
    received: str | None
    status: int
    reason: str
    headers: list[list[str]]
    body: bytes
    entries: int
    stored: float
    flow: str


@dataclass(frozen=True)
class Lookup:
    """The result of looking an identity up: the answer, if any, and why it may not be served."""

    answer: Answer | None
    changed: float  # the collection's last write seen through the proxy (0: none)
    token_seen: bool  # whether any stored answer was issued for this token


class CacheStore:
    """One connection to the cache database (see the module docstring for threading)."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise CacheError(f"the directory {self.path.parent} does not exist")
        try:
            # isolation_level=None: transactions are begun explicitly (BEGIN IMMEDIATE), so a
            # writer takes the lock at the start and never fails halfway on an upgrade.
            self.db = sqlite3.connect(
                self.path, isolation_level=None, timeout=busy_timeout_ms / 1000
            )
        except sqlite3.Error as e:
            raise CacheError(f"cannot open {self.path}: {e}") from e
        try:
            self.db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise CacheError(f"{self.path} cannot use write-ahead logging (got {mode})")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self._init_schema()
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise CacheError(f"{self.path} is not a usable SQLite database: {e}") from e
        except CacheError:
            self.db.close()
            raise

    # ---------------------------------------------------------------- plumbing

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            if exc_type is None:
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")

    def _write(self) -> CacheStore._Tx:
        return CacheStore._Tx(self.db)

    def _init_schema(self) -> None:
        with self._write() as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:
                raise CacheError(f"{self.path} is an SQLite database of something else")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            row = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                db.execute("INSERT INTO meta VALUES ('salt', ?)", (secrets.token_hex(16),))
            elif row[0] != str(SCHEMA_VERSION):
                raise CacheError(
                    f"{self.path} has cache schema {row[0]}, this repltap reads "
                    f"{SCHEMA_VERSION}: move it away or pick another path"
                )
            self.salt: str = db.execute("SELECT value FROM meta WHERE name = 'salt'").fetchone()[0]

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite when the last one closes)."""
        self.db.close()

    def auth_hash(self, credentials: Iterable[str]) -> str | None:
        """A salted hash naming who asks, so answers are never shared across users; None when
        the request carries no credentials. The credentials themselves are never stored."""
        values = [c for c in credentials if c]
        if not values:
            return None
        h = hashlib.sha256(self.salt.encode())
        for v in values:
            h.update(b"\0" + v.encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:32]

    # ---------------------------------------------------------------- answers

    def lookup(self, key: str, upstream: str, collection: str, token: str | None) -> Lookup:
        """The stored answer for ``key`` and what a caller needs to judge it."""
        row = self.db.execute(
            "SELECT key, identity, upstream, collection, protocol, token, received, status, "
            "reason, headers, body, entries, stored, flow FROM answers WHERE key = ?",
            (key,),
        ).fetchone()
        changed_row = self.db.execute(
            "SELECT changed FROM collections WHERE upstream = ? AND collection = ?",
            (upstream, collection),
        ).fetchone()
        changed = float(changed_row[0]) if changed_row else 0.0
        if row is not None:
            return Lookup(_answer(row), changed, True)
        seen = self.db.execute(
            "SELECT 1 FROM answers WHERE upstream = ? AND collection = ? AND token IS ? LIMIT 1",
            (upstream, collection, token),
        ).fetchone()
        return Lookup(None, changed, seen is not None)

    def record_manifest(
        self,
        s: Mapping[str, Any],
        answer: Answer | None,
        *,
        now: float | None = None,
        flow: str = "",
    ) -> int:
        """Apply one manifest answer from the server, in one transaction: the replica from its
        entries, the stored answer (``answer``, when storable), and on an invalid token the
        dropping of the collection's answers. Returns how many answers were dropped."""
        now = time.time() if now is None else now
        resp = s.get("response") or {}
        upstream = s.get("upstream") or "?"
        collection = s["collection"]
        dropped = 0
        with self._write() as db:
            if resp.get("invalid_token"):
                # The server no longer knows a token of this collection: whatever it said for
                # any of them may be about a collection that is gone (re-created, restored).
                dropped = db.execute(
                    "DELETE FROM answers WHERE upstream = ? AND collection = ?",
                    (upstream, collection),
                ).rowcount
                return dropped
            status = resp.get("status", 0)
            if resp.get("manifest") and 200 <= status < 300 and not resp.get("undecodable"):
                self._apply_manifest(db, s, upstream, collection, now, flow)
            if answer is not None:
                db.execute(
                    "INSERT OR REPLACE INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        answer.key,
                        json.dumps(answer.identity, sort_keys=True, ensure_ascii=False),
                        answer.upstream,
                        answer.collection,
                        answer.protocol,
                        answer.token,
                        answer.received,
                        answer.status,
                        answer.reason,
                        json.dumps(answer.headers, ensure_ascii=False),
                        answer.body,
                        answer.entries,
                        answer.stored,
                        answer.flow,
                    ),
                )
        return dropped

    def forget(self, key: str, flow: str) -> bool:
        """Remove the answer stored from ``flow`` (the flow ended in an error after all)."""
        with self._write() as db:
            return (
                db.execute("DELETE FROM answers WHERE key = ? AND flow = ?", (key, flow)).rowcount
                > 0
            )

    def answer_keys(self) -> set[str]:
        """Every stored answer's key."""
        return {r[0] for r in self.db.execute("SELECT key FROM answers")}

    # ---------------------------------------------------------------- the replica

    def _ensure_collection(
        self, db: sqlite3.Connection, upstream: str, collection: str, protocol: str, now: float
    ) -> None:
        db.execute(
            "INSERT INTO collections (upstream, collection, protocol, token, updated, changed) "
            "VALUES (?, ?, ?, NULL, ?, 0) "
            "ON CONFLICT (upstream, collection) DO UPDATE SET updated = excluded.updated",
            (upstream, collection, protocol, now),
        )

    def _apply_manifest(
        self,
        db: sqlite3.Connection,
        s: Mapping[str, Any],
        upstream: str,
        collection: str,
        now: float,
        flow: str,
    ) -> None:
        resp = s["response"]
        rfc = s["protocol"] == "rfc6578"
        where = (upstream, collection)
        self._ensure_collection(db, upstream, collection, s["protocol"], now)
        if resp.get("token") is not None and not resp.get("no_changes"):
            db.execute(f"UPDATE collections SET token = ? WHERE {_IN}", (resp["token"], *where))
        listed: set[str] = set()
        entries: list[dict[str, Any]] = resp.get("entries") or []
        paths = [normalise_path(e["href"]) if e.get("href") else None for e in entries]
        # Which key holds each href now, for this manifest's hrefs only: conflicts (a new
        # identity at an old href) are rare, so they are found here rather than by one DELETE
        # per entry. Entries are applied in order, in runs of deletes and runs of changes, each
        # run with executemany: one statement per entry made a 10,000-entry manifest ~3x slower.
        holder = _pairs(db, "href, key", "href", where, {p for p in paths if p is not None})
        # A rename within the collection is a delete of the repl-uid and a change of it at its
        # new href, in either order (spec §8.6), and the same manifest reaches every client that
        # syncs the collection. A delete is the old side of a rename, and leaves the item where
        # it is, when this manifest lists the item, or when it names an href other than the
        # item's, or an href another item holds (read as the tracker reads it). The uids listed
        # (when there are deletes), and the items' hrefs for the deletes that name one:
        listing = set() if rfc else listed_beside_deletes(entries, resp.get("changes"))
        named = {
            k
            for e, h in zip(entries, paths, strict=True)
            if not rfc and e["type"] == "delete" and h and (k := e.get("uid"))
        }
        at = _pairs(db, "key, href", "key", where, named)
        gone: list[tuple[str, str | None]] = []  # (key, href) of a run of deletes
        rows: list[tuple[Any, ...]] = []  # upsert rows of a run of changes

        def flush() -> None:
            if gone:
                db.executemany(
                    f"DELETE FROM items WHERE {_IN} AND key = ?", [(*where, k) for k, _ in gone]
                )
                # Two statements, not one with OR: each can use its index (an OR scans).
                db.executemany(
                    f"DELETE FROM items WHERE {_IN} AND href = ?",
                    [(*where, h) for k, h in gone if h is not None and h != k],
                )
                gone.clear()
            if rows:
                db.executemany(_UPSERT_FROM_MANIFEST, rows)
                rows.clear()

        for e, href in zip(entries, paths, strict=True):
            uid = e.get("uid")
            # RFC 6578 has no stable id: its items are their hrefs (the decoder's uid is the
            # href as written, which need not be normalised).
            key = href if rfc else (uid or href)
            if key is None:
                continue  # neither href nor uid: nothing to name the item by
            if e["type"] == "delete":
                if not rfc and (
                    key in listing
                    or at.get(key) not in (None, href)
                    or holder.get(href or "") not in (None, key)
                ):
                    continue  # the old side of a rename (the item lives on), or another's href
                if rows:
                    flush()
                gone.append((key, href))
                if href is not None:
                    holder.pop(href, None)
                continue
            if gone:
                flush()
            if href is not None:
                other = holder.get(href)
                if other is not None and other != key:
                    # A new identity at an old href replaces what was there.
                    flush()
                    db.execute(
                        f"DELETE FROM items WHERE {_IN} AND href = ? AND key <> ?",
                        (*where, href, key),
                    )
                holder[href] = key
            listed.add(key)
            props_json = "{}"
            if len(e) > 4 or e.get("props"):  # more than type, href, tag, uid
                props = dict(e.get("props") or {})  # filled once the decoder reads properties
                props.update(
                    {k: v for k, v in e.items() if k not in _ENTRY_CORE and k != "props" and v}
                )
                props_json = json.dumps(props, sort_keys=True, ensure_ascii=False)
            rows.append(
                (*where, key, href if rfc else uid, href, e.get("tag"), props_json, now, flow)
            )
        flush()
        if _complete_listing(s):
            # Everything that exists was listed: whatever else the replica holds is gone.
            db.execute("CREATE TEMP TABLE IF NOT EXISTS listed (key TEXT PRIMARY KEY)")
            db.execute("DELETE FROM listed")
            db.executemany("INSERT OR IGNORE INTO listed VALUES (?)", ((k,) for k in listed))
            db.execute(
                f"DELETE FROM items WHERE {_IN} AND key NOT IN (SELECT key FROM listed)", where
            )
            db.execute("DELETE FROM listed")

    def record_write(
        self, s: Mapping[str, Any], *, now: float | None = None, flow: str = ""
    ) -> bool:
        """Apply a successful write's answer (its ResourceTag/ETag, Repl-UID) to the replica of
        a collection already known. Returns whether a known collection was touched."""
        now = time.time() if now is None else now
        resp = s.get("response") or {}
        if not 200 <= resp.get("status", 0) < 300:
            return False
        upstream = s.get("upstream") or "?"
        method = s["method"]
        path = s["target"]
        if method == "POST" and resp.get("location"):
            path = normalise_path(resp["location"])
        collection = parent_of(path)
        rfc = s["protocol"] == "rfc6578"
        dest = s["request"].get("destination")
        dest = normalise_path(dest) if dest else None
        with self._write() as db:
            known = {
                r[0]
                for r in db.execute(
                    "SELECT collection FROM collections WHERE upstream = ?", (upstream,)
                )
            }
            touched = [c for c in (collection, parent_of(dest) if dest else None) if c in known]
            if method in ("MOVE", "COPY") and dest is None:
                touched = []
            for c in touched:
                db.execute(
                    f"UPDATE collections SET changed = ?, updated = ? WHERE {_IN}",
                    (now, now, upstream, c),
                )
            if collection not in known:
                return bool(touched)
            where = (upstream, collection)
            old = db.execute(
                f"SELECT key, uid, tag FROM items WHERE {_IN} AND href = ?", (*where, path)
            ).fetchone()
            if method in ("PUT", "POST", "PROPPATCH"):
                uid, tag = resp.get("uid"), resp.get("tag")
                key = path if rfc else (uid or (old[0] if old else path))
                if old is not None and old[0] != key:
                    db.execute(f"DELETE FROM items WHERE {_IN} AND key = ?", (*where, old[0]))
                db.execute(
                    _UPSERT_FROM_WRITE,
                    (
                        *where,
                        key,
                        path if rfc else (uid or (old[1] if old else None)),
                        path,
                        tag,
                        method,
                        now,
                        flow,
                    ),
                )
            elif method == "DELETE":
                db.execute(f"DELETE FROM items WHERE {_IN} AND href = ?", (*where, path))
                db.execute(f"DELETE FROM items WHERE {_IN} AND key = ?", (*where, path))
            elif method == "MOVE" and dest is not None and old is not None:
                db.execute(f"DELETE FROM items WHERE {_IN} AND key = ?", (*where, old[0]))
                if parent_of(dest) in known:
                    # The item keeps its repl-uid and tag (spec §9.8); an RFC 6578 item is its href.
                    db.execute(
                        _MOVED_ITEM,
                        (
                            upstream,
                            parent_of(dest),
                            dest if rfc else old[0],
                            dest if rfc else old[1],
                            dest,
                            old[2],
                            now,
                            flow,
                        ),
                    )
            # COPY and MKCOL: something new is there, and only the next manifest tells its tag.
            return True

    # ---------------------------------------------------------------- views

    def collections(self) -> list[dict[str, Any]]:
        """Every collection the cache knows, with counts."""
        rows = self.db.execute(_COLLECTIONS).fetchall()
        return [
            {
                "upstream": r[0],
                "collection": r[1],
                "protocol": r[2],
                "token": r[3],
                "updated": r[4],
                "changed": r[5] or None,
                "items": r[6],
                "answers": r[7],
            }
            for r in rows
        ]

    def replica(self, upstream: str, collection: str) -> list[dict[str, Any]]:
        """The items of one collection, by href."""
        rows = self.db.execute(
            "SELECT key, uid, href, tag, props, via, updated, flow FROM items "
            "WHERE upstream=? AND collection=? ORDER BY href, key",
            (upstream, collection),
        ).fetchall()
        return [
            {
                "key": r[0],
                "uid": r[1],
                "href": r[2],
                "tag": r[3],
                "props": json.loads(r[4]),
                "via": r[5],
                "updated": r[6],
                "flow": r[7],
            }
            for r in rows
        ]

    def answers(self, upstream: str, collection: str) -> list[dict[str, Any]]:
        """The stored answers of one collection (without their bodies), oldest first."""
        rows = self.db.execute(
            "SELECT key, identity, token, received, status, entries, stored, flow, length(body) "
            "FROM answers WHERE upstream=? AND collection=? ORDER BY stored",
            (upstream, collection),
        ).fetchall()
        return [
            {
                "key": r[0],
                "identity": json.loads(r[1]),
                "token": r[2],
                "received": r[3],
                "status": r[4],
                "entries": r[5],
                "stored": r[6],
                "flow": r[7],
                "bytes": r[8],
            }
            for r in rows
        ]

    def export(self, upstream: str, collection: str) -> dict[str, Any]:
        """One collection as plain data: the replica and what is stored for it."""
        info = next(
            (
                c
                for c in self.collections()
                if (c["upstream"], c["collection"]) == (upstream, collection)
            ),
            None,
        )
        if info is None:
            raise CacheError(f"no collection {upstream}{collection} in the cache")
        return {
            "v": 1,
            **info,
            "items": self.replica(upstream, collection),
            "stored_answers": self.answers(upstream, collection),
        }

    def clear(self) -> tuple[int, int, int]:
        """Forget everything: (answers, items, collections) removed."""
        with self._write() as db:
            a = db.execute("DELETE FROM answers").rowcount
            i = db.execute("DELETE FROM items").rowcount
            c = db.execute("DELETE FROM collections").rowcount
        return a, i, c

    def integrity(self) -> str:
        """SQLite's own check of the file: ``ok`` when intact."""
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])


def _answer(row: tuple[Any, ...]) -> Answer:
    return Answer(
        key=row[0],
        identity=json.loads(row[1]),
        upstream=row[2],
        collection=row[3],
        protocol=row[4],
        token=row[5],
        received=row[6],
        status=row[7],
        reason=row[8],
        headers=json.loads(row[9]),
        body=bytes(row[10]),
        entries=row[11],
        stored=row[12],
        flow=row[13],
    )
