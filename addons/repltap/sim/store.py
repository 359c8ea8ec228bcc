"""The reference server's world: collections and items, their tags and uids, and manifests.

What may live here: the data model, every mutation (each one a numbered change event), the
manifest computation (changes since a collblob's watermark, folded per repl-uid, minus what the
client acknowledged, paged) and persistence. What may not: HTTP, XML, SQL parsing.

How change tracking works (the design behind every manifest):
- One global, monotonically increasing sequence number. Every event on a resource (create,
  modify, move, copy, restore) takes the next number and stores it in ``Resource.seq``; a delete
  or a move out leaves a :class:`Tombstone` at the old path with its own number. Folding per
  repl-uid is therefore free: a resource's latest event is the only one kept.
- A manifest for (scope, watermark W) is: live resources in scope with ``seq > W`` (``new`` if
  created after W, else ``change``; ``delete`` if they no longer match the WHERE clause), plus
  the latest tombstone in scope per repl-uid with ``seq > W`` whose resource is not live in scope
  and which the client can have known (created at or before W). Rows are ordered by sequence
  number, which keeps integrity (a folder is created before its children, a child is deleted
  before its folder, a delete comes before a re-create at the same URL): spec §3 step 7.
- Each row has its own sequence number, so a page of rows 0..k is covered exactly by the
  watermark "just before row k+1" (spec §8.7, §13.11).
- A collblob also carries the scope collection's incarnation id, new on every (re-)creation, so
  a collection deleted and re-created at the same URL invalidates old collblobs (475).

Token shapes follow real Exchange (spec §1.1): a repl-uid is ``rid:`` + 32 hex digits of this
server's replica id + a 12-hex-digit counter (44 hex digits, a MAPI source key); a resourcetag is
``rt:`` + the repl-uid's 44 digits + the replica id + the 12-digit number of the change that
produced the state (88 digits: source key + change key).
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import fcntl
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from . import collblob

DAV = "DAV:"
REPL_NS = "http://schemas.microsoft.com/repl/"
HTTPMAIL = "urn:schemas:httpmail:"
CONTACTS = "urn:schemas:contacts:"
STATE_FILE = "state.json"
KEY_FILE = "secret.key"
LOCK_FILE = ".lock"
FORMAT = 1

Value = str | int | float | bool | None


class DavError(Exception):
    """A request the store refuses: an HTTP status and one readable sentence."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class RangeNotSatisfiable(DavError):
    """Rows past the end of a manifest or result set (416)."""

    def __init__(self, reason: str, total: int) -> None:
        super().__init__(416, reason)
        self.total = total


# --------------------------------------------------------------------------------------------
# Paths


def norm_path(path: str) -> str:
    """A request path as the store keys it: percent-decoded, one slash between segments, no dot
    segments; a trailing slash is kept because it names a collection. Raises DavError(400),
    also for an escaped slash (%2F), which would make one segment two (web servers refuse it by
    default; repltap's tracker keeps ``/a%2Fb`` and ``/a/b`` apart)."""
    raw = path.split("?", 1)[0].split("#", 1)[0]
    if "%2f" in raw.lower():
        raise DavError(400, f"the path {path[:80]!r} holds an escaped slash (%2F)")
    p = unquote(raw, errors="strict")
    if not p.startswith("/"):
        raise DavError(400, f"the path {path[:80]!r} does not start with '/'")
    if "\x00" in p:
        raise DavError(400, "the path contains a NUL character")
    trailing = p.endswith("/")
    segs = [s for s in p.split("/") if s]
    if any(s in (".", "..") for s in segs):
        raise DavError(400, f"the path {path[:80]!r} contains '.' or '..' segments")
    out = "/" + "/".join(segs)
    return out + "/" if trailing and out != "/" else out


def parent_of(path: str) -> str:
    """``/a/b/c`` and ``/a/b/c/`` → ``/a/b/``; ``/`` → ``/``."""
    p = path.rstrip("/")
    return p[: p.rfind("/") + 1] or "/"


def name_of(path: str) -> str:
    """The last segment, without a trailing slash."""
    return path.rstrip("/").rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------
# Model


@dataclass
class Resource:
    """A collection or an item."""

    path: str
    uid: str
    tag: str
    collection: bool
    content: bytes = b""
    content_type: str = ""
    props: dict[str, str] = field(default_factory=dict)  # dead properties, Clark notation
    created_seq: int = 0
    seq: int = 0  # the latest event on this resource
    tag_seq: int = 0  # the event that produced ``tag`` (a move changes seq, not the tag)
    created: float = 0.0
    modified: float = 0.0
    incarnation: str = ""  # collections: new on every (re-)creation
    content_seq: int = 0  # collections: the latest event on a child (the contenttag)


@dataclass
class Tombstone:
    """A resource that left ``path`` (deleted, or moved away) at event ``seq``."""

    uid: str
    path: str
    seq: int
    created_seq: int
    tag: str  # the tag a DELETE answers with; acknowledging it folds the delete away
    collection: bool


@dataclass
class Row:
    """One manifest entry."""

    seq: int
    change: str  # new | change | delete
    resource: Resource | None  # the live resource (None for a tombstone)
    uid: str


@dataclass
class ManifestResult:
    """What a manifest request gets."""

    rows: list[Row]  # the rows of this answer
    total: int  # reportable rows in the whole (remaining) manifest
    first: int | None  # index of rows[0] in the whole manifest, None when no row is returned
    last: int | None
    state: collblob.State | None  # None: nothing changed (the empty <R:repl/>)
    partial: bool  # fewer rows than the whole manifest (a range or the page cap)


# --------------------------------------------------------------------------------------------
# The store


class Store:
    """All state of one server; every public method is thread-safe and persists before return."""

    def __init__(self, data_dir: Path, *, fsync: bool = True) -> None:
        self.dir = data_dir
        self.fsync = fsync
        self.lock = threading.RLock()
        self.replica = ""
        self.seq = 0
        self.counter = 0
        self.resources: dict[str, Resource] = {}
        self.tombstones: list[Tombstone] = []
        self.key = b""
        self._lock_fd: int | None = None

    # ---------------------------------------------------------------- opening and persistence
    @classmethod
    def open(
        cls,
        data_dir: Path,
        seed: Iterable[dict[str, Any]] | None = None,
        *,
        fsync: bool = True,
    ) -> tuple[Store, bool]:
        """Open (or create and seed) the store in ``data_dir``; returns (store, seeded now)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        s = cls(data_dir, fsync=fsync)
        s._take_dir_lock()
        s.key = s._load_key()
        state = data_dir / STATE_FILE
        if state.exists():
            s._load(state)
            return s, False
        s.replica = secrets.token_hex(16)
        with s.lock:
            s._add_collection("/", created_seq=0)
            if seed is not None:
                from . import seed as seedmod

                seedmod.apply(s, seed)
            s._commit()
        return s, True

    def close(self) -> None:
        """Release the data directory lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _take_dir_lock(self) -> None:
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DavError(
                503, f"another repltap server is already using the data directory {self.dir}"
            ) from None
        self._lock_fd = fd

    def _load_key(self) -> bytes:
        path = self.dir / KEY_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return bytes.fromhex(path.read_text().strip())
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
        return key

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("format") != FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            self.replica = doc["replica"]
            self.seq = int(doc["seq"])
            self.counter = int(doc["counter"])
            for d in doc["resources"]:
                content = d.pop("content", None)
                r = Resource(**{k: v for k, v in d.items() if k != "content"})
                r.content = _content_from_json(content)
                self.resources[r.path] = r
            self.tombstones = [Tombstone(**t) for t in doc["tombstones"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DavError(500, f"cannot read {path}: {e}") from None

    def _commit(self) -> None:
        """Write the whole state atomically: a temporary file, fsync, then os.replace."""
        doc = {
            "format": FORMAT,
            "replica": self.replica,
            "seq": self.seq,
            "counter": self.counter,
            "resources": [_resource_to_json(r) for r in self.resources.values()],
            "tombstones": [t.__dict__ for t in self.tombstones],
        }
        data = json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8")
        tmp = self.dir / f".{STATE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.dir / STATE_FILE)

    # ---------------------------------------------------------------- ids
    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _new_uid(self) -> str:
        self.counter += 1
        return f"rid:{self.replica}{self.counter:012x}"

    def _tag(self, uid: str, seq: int) -> str:
        return f"rt:{uid[4:]}{self.replica}{seq:012x}"

    # ---------------------------------------------------------------- lookups
    def get(self, path: str) -> Resource | None:
        """The resource at a normalised path; a collection may be named without its slash."""
        with self.lock:
            r = self.resources.get(path)
            if r is None and not path.endswith("/"):
                r = self.resources.get(path + "/")
            return r

    def require(self, path: str) -> Resource:
        """Like :meth:`get`, but a missing resource is a 404."""
        r = self.get(path)
        if r is None:
            raise DavError(404, f"{path} does not exist")
        return r

    def children(self, path: str) -> list[Resource]:
        """Direct members of a collection, in path order."""
        with self.lock:
            return sorted(
                (r for p, r in self.resources.items() if p != path and parent_of(p) == path),
                key=lambda r: r.path,
            )

    def subtree(self, path: str) -> list[Resource]:
        """The resource at ``path`` and everything below it, parents before children."""
        with self.lock:
            if not path.endswith("/"):
                r = self.resources.get(path)
                return [r] if r else []
            return sorted(
                (r for p, r in self.resources.items() if p.startswith(path)),
                key=lambda r: (r.path.count("/"), r.path),
            )

    # ---------------------------------------------------------------- properties
    def prop(self, r: Resource, name: str) -> Value:
        """A property value (live or dead) by Clark name; None when the resource has none."""
        if name in r.props and name not in _LIVE_READONLY:
            v = r.props[name]
            if name in _BOOLEAN_PROPS:
                return v.strip().lower() in ("1", "true", "t")
            return v
        getter = _LIVE.get(name)
        return getter(self, r) if getter else None

    def prop_names(self, r: Resource) -> list[str]:
        """Every property the resource has (for allprop and propname)."""
        names = [n for n in _LIVE if self.prop(r, n) is not None]
        return names + [n for n in r.props if n not in _LIVE]

    # ---------------------------------------------------------------- mutations (internal)
    def _add_collection(
        self, path: str, *, created_seq: int | None = None, uid: str | None = None
    ) -> Resource:
        seq = self._next() if created_seq is None else created_seq
        uid = uid or self._new_uid()
        now = time.time()
        r = Resource(
            path=path,
            uid=uid,
            tag=self._tag(uid, seq),
            collection=True,
            created_seq=seq,
            seq=seq,
            tag_seq=seq,
            created=now,
            modified=now,
            incarnation=secrets.token_hex(8),
            content_seq=seq,
        )
        self.resources[path] = r
        self._touch_parent(path, seq)
        return r

    def _touch_parent(self, path: str, seq: int) -> None:
        if path == "/":
            return
        p = self.resources.get(parent_of(path))
        if p is not None:
            p.content_seq = seq

    def _check_parent(self, path: str) -> None:
        p = self.resources.get(parent_of(path))
        if p is None:
            raise DavError(409, f"the parent collection {parent_of(path)} does not exist")
        if not p.collection:
            raise DavError(409, f"the parent {parent_of(path)} is not a collection")

    def _remove(self, path: str) -> str:
        """Delete a resource and everything below it, children first; returns the tombstone tag
        of the resource itself."""
        victims = self.subtree(path)
        last_tag = ""
        for r in reversed(victims):  # children before their collection
            seq = self._next()
            last_tag = self._tag(r.uid, seq)
            self.tombstones.append(
                Tombstone(r.uid, r.path, seq, r.created_seq, last_tag, r.collection)
            )
            del self.resources[r.path]
            self._touch_parent(r.path, seq)
        return last_tag

    def _set_content(self, r: Resource, content: bytes, content_type: str | None) -> None:
        r.content = content
        if content_type:
            r.content_type = content_type
        _promote(r)

    # ---------------------------------------------------------------- mutations (public)
    def create_item(
        self,
        path: str,
        content: bytes,
        content_type: str,
        props: dict[str, str] | None = None,
        *,
        uid: str | None = None,
        tag: str | None = None,
    ) -> Resource:
        """A new item; ``uid``/``tag`` are given only when restoring one (recreate)."""
        with self.lock:
            r = self._create_item(path, content, content_type, props, uid=uid, tag=tag)
            self._commit()
            return r

    def _create_item(
        self,
        path: str,
        content: bytes,
        content_type: str,
        props: dict[str, str] | None = None,
        *,
        uid: str | None = None,
        tag: str | None = None,
    ) -> Resource:
        if path.endswith("/"):
            raise DavError(405, f"{path} names a collection; items have no trailing slash")
        if self.get(path) is not None:
            raise DavError(405, f"{path} already exists")
        self._check_parent(path)
        seq = self._next()
        uid = uid or self._new_uid()
        now = time.time()
        r = Resource(
            path=path,
            uid=uid,
            tag=tag or self._tag(uid, seq),
            collection=False,
            content_type=content_type or "application/octet-stream",
            props=dict(props or {}),
            created_seq=seq,
            seq=seq,
            tag_seq=seq,
            created=now,
            modified=now,
        )
        self._set_content(r, content, None)
        self.resources[path] = r
        self._touch_parent(path, seq)
        return r

    def update(
        self,
        path: str,
        *,
        content: bytes | None = None,
        content_type: str | None = None,
        set_props: dict[str, str] | None = None,
        remove_props: Iterable[str] = (),
    ) -> Resource:
        """Change content and/or dead properties: a new event and a new resourcetag."""
        with self.lock:
            r = self.require(path)
            if content is not None:
                if r.collection:
                    raise DavError(405, f"{r.path} is a collection and has no content")
                self._set_content(r, content, content_type)
            for name in remove_props:
                r.props.pop(name, None)
            r.props.update(set_props or {})
            seq = self._next()
            r.seq = r.tag_seq = seq
            r.tag = self._tag(r.uid, seq)
            r.modified = time.time()
            self._touch_parent(r.path, seq)
            self._commit()
            return r

    def mkcol(self, path: str, *, parents: bool = False) -> Resource:
        """A new collection (409 if it exists, as the replication MKCOL topic says: §13.21)."""
        with self.lock:
            path = path if path.endswith("/") else path + "/"
            if self.get(path) is not None:
                raise DavError(409, f"{path} already exists")
            if parents:
                self._ensure_parents(path)
            self._check_parent(path)
            r = self._add_collection(path)
            self._commit()
            return r

    def _ensure_parents(self, path: str) -> None:
        missing = []
        p = parent_of(path)
        while p != "/" and p not in self.resources:
            missing.append(p)
            p = parent_of(p)
        for q in reversed(missing):
            if q.rstrip("/") in self.resources:
                raise DavError(409, f"{q.rstrip('/')} is an item, not a collection")
            self._add_collection(q)

    def delete(self, path: str) -> str:
        """Delete a resource (a collection with everything in it); returns the tombstone tag."""
        with self.lock:
            r = self.require(path)
            if r.path == "/":
                raise DavError(403, "the root collection cannot be deleted")
            tag = self._remove(r.path)
            self._commit()
            return tag

    def _target(self, src: Resource, dst: str) -> str:
        dst = dst.rstrip("/") + "/" if src.collection else dst.rstrip("/")
        if dst == src.path:
            raise DavError(403, "the source and the destination are the same")
        if src.collection and dst.startswith(src.path):
            raise DavError(403, "a collection cannot be moved or copied into itself")
        if dst == "/" or not dst.strip("/"):
            raise DavError(403, "the destination is the root collection")
        return dst

    def _clear_destination(self, dst: str, overwrite: bool) -> bool:
        existing = self.get(dst) or self.get(dst.rstrip("/"))
        if existing is None:
            return False
        if not overwrite:
            raise DavError(412, f"the destination {dst} exists and Overwrite is F")
        self._remove(existing.path)
        return True

    def move(
        self, src_path: str, dst_path: str, *, overwrite: bool = True
    ) -> tuple[Resource, bool]:
        """MOVE: same repl-uids and resourcetags at the destination (a move changes where a
        resource is, not its state, so a client can correlate by repl-uid without re-downloading:
        spec §3 step 7); a tombstone at every old path. Returns (resource, destination existed)."""
        with self.lock:
            src = self.require(src_path)
            if src.path == "/":
                raise DavError(403, "the root collection cannot be moved")
            dst = self._target(src, dst_path)
            self._check_parent(dst)
            existed = self._clear_destination(dst, overwrite)
            for r in self.subtree(src.path):  # parents first
                seq = self._next()
                old = r.path
                self.tombstones.append(
                    Tombstone(r.uid, old, seq, r.created_seq, self._tag(r.uid, seq), r.collection)
                )
                del self.resources[old]
                self._touch_parent(old, seq)
                r.path = dst + old[len(src.path) :] if old != src.path else dst
                r.seq = seq
                self.resources[r.path] = r
                self._touch_parent(r.path, seq)
            self._commit()
            return self.resources[dst], existed

    def copy(
        self, src_path: str, dst_path: str, *, overwrite: bool = True
    ) -> tuple[Resource, bool]:
        """COPY: new resources with new repl-uids and tags (spec §8.6 [INF])."""
        with self.lock:
            src = self.require(src_path)
            dst = self._target(src, dst_path)
            self._check_parent(dst)
            existed = self._clear_destination(dst, overwrite)
            for r in self.subtree(src.path):
                path = dst + r.path[len(src.path) :] if r.path != src.path else dst
                if r.collection:
                    self._add_collection(path)
                    self.resources[path].props = dict(r.props)
                else:
                    self._create_item(path, r.content, r.content_type, r.props)
            self._commit()
            return self.resources[dst], existed

    def recreate(self, path: str, keep: bool | list[str] = True) -> Resource:
        """Delete a collection and create it again at the same URL (a new incarnation, so every
        old collblob gets 475), then restore its items as from a backup: same repl-uids, same
        resourcetags, same content. ``keep``: True (all items), False (none) or item names."""
        with self.lock:
            coll = self.require(path)
            if not coll.collection or coll.path == "/":
                raise DavError(409, f"{path} is not a collection that can be re-created")
            items = [r for r in self.children(coll.path) if not r.collection]
            if keep is not True:
                wanted = set(keep or [])
                unknown = wanted - {name_of(r.path) for r in items}
                if unknown:
                    raise DavError(404, f"no such item(s) to keep: {', '.join(sorted(unknown))}")
                items = [r for r in items if name_of(r.path) in wanted]
            self._remove(coll.path)
            new = self._add_collection(coll.path)
            new.props = dict(coll.props)
            for r in items:
                self._create_item(r.path, r.content, r.content_type, r.props, uid=r.uid, tag=r.tag)
            self._commit()
            return new

    # ---------------------------------------------------------------- manifests
    def manifest(
        self,
        *,
        scope: str,
        depth: str,
        sql: str,
        where: Callable[[Resource], bool],
        since: collblob.State | None,
        acks: Iterable[str] = (),
        first: int | None = 0,
        last: int | None = None,
        cap: int | None = None,
    ) -> ManifestResult:
        """The manifest of ``scope`` since ``since`` (None: initial sync).

        ``first``/``last`` are a row range (``first=None`` with ``last=n`` is the suffix range
        ``rows=-n``); ``cap`` is the server's page cap.
        """
        with self.lock:
            coll = self.require(scope)
            if not coll.collection:
                raise DavError(409, f"{scope} is not a collection")
            rows, consumed = self._changes(coll, depth, where, since, set(acks))
            total = len(rows)
            if since is not None and not rows and not consumed:
                # Nothing happened in this scope: the empty <R:repl/> (spec §8.4). An initial
                # sync always gets a collblob, even for an empty collection.
                return ManifestResult([], 0, None, None, None, False)
            if first is None:  # rows=-n: the last n rows, and a collblob covering everything
                lo, hi = max(0, total - (last or 0)), total - 1
            else:
                if first > 0 and first >= total:
                    raise RangeNotSatisfiable(
                        f"rows {first}- are past the end of a manifest of {total} rows", total
                    )
                lo, hi = first, total - 1 if last is None else min(last, total - 1)
            if cap and hi - lo + 1 > cap:
                hi = lo + cap - 1
            page = rows[lo : hi + 1]
            partial = len(page) < total
            if hi >= total - 1:
                # Everything up to the end is covered (a range starting past row 0 reads rows
                # 0..first-1 as fetched earlier with the same collblob: spec §13.11's second
                # reading, tolerated).
                watermark, acked = self.seq, tuple[int, ...]()
            else:
                # The collblob covers exactly the rows returned and everything before them:
                # the next page continues with row hi+1 (spec §8.7, §13.11's recommended reading).
                watermark = rows[hi + 1].seq - 1
                acked = tuple(s for s in consumed if s > watermark)
            state = collblob.State(
                incarnation=coll.incarnation,
                scope=coll.path,
                depth=depth,
                sql=sql,
                watermark=watermark,
                acked=acked,
            )
            return ManifestResult(
                page, total, lo if page else None, hi if page else None, state, partial
            )

    def _in_scope(self, scope: str, depth: str, path: str, is_collection: bool) -> bool:
        if path == scope or not path.startswith(scope):
            return False
        if depth == "shallow":
            return parent_of(path) == scope
        if depth == "hierarchical":
            return is_collection
        return True  # deep

    def _changes(
        self,
        coll: Resource,
        depth: str,
        where: Callable[[Resource], bool],
        since: collblob.State | None,
        acks: set[str],
    ) -> tuple[list[Row], list[int]]:
        """(reportable rows in sequence order, sequence numbers consumed without a row)."""
        w = since.watermark if since else 0
        acked = set(since.acked) if since else set()
        rows: list[Row] = []
        consumed: list[int] = []
        live: set[str] = set()
        for r in self.resources.values():
            if not self._in_scope(coll.path, depth, r.path, r.collection):
                continue
            live.add(r.uid)
            if r.seq <= w:
                continue
            if where(r):
                # §13.2: "new" for what was created since the collblob, as real Exchange says.
                change = "new" if r.created_seq > w else "change"
            elif r.created_seq > w:
                continue  # never matched as far as this client knows
            else:
                change = "delete"  # left the query's WHERE filter (spec §10 [INF])
            if r.seq in acked or (change != "delete" and r.tag in acks):
                # resourcetaglist folding, spec §13.10's reading: an entry is left out when its
                # current tag is listed; if it changed again since, its tag differs and it is
                # reported. A move keeps the tag (see move()), so a listed tag also covers a
                # move made after it: the tag names a state, not a location.
                consumed.append(r.seq)
                continue
            rows.append(Row(r.seq, change, r, r.uid))
        latest: dict[str, Tombstone] = {}
        for t in self.tombstones:
            if t.seq <= w or t.uid in live or t.created_seq > w:
                continue  # a client that never saw the resource needs no delete
            if not self._in_scope(coll.path, depth, t.path, t.collection):
                continue
            prev = latest.get(t.uid)
            if prev is None or t.seq > prev.seq:
                latest[t.uid] = t
        for t in latest.values():
            if t.seq in acked or t.tag in acks:
                consumed.append(t.seq)
            else:
                rows.append(Row(t.seq, "delete", None, t.uid))
        rows.sort(key=lambda row: row.seq)
        return rows, consumed

    def listing(self, scope: str, depth: str, where: Callable[[Resource], bool]) -> list[Resource]:
        """A plain (non-replication) SEARCH result: matching resources in path order."""
        with self.lock:
            coll = self.require(scope)
            if not coll.collection:
                raise DavError(409, f"{scope} is not a collection")
            return sorted(
                (
                    r
                    for r in self.resources.values()
                    if self._in_scope(coll.path, depth, r.path, r.collection) and where(r)
                ),
                key=lambda r: r.path,
            )

    def iter_all(self) -> Iterator[Resource]:
        """Every resource, in path order (a snapshot)."""
        with self.lock:
            return iter(sorted(self.resources.values(), key=lambda r: r.path))


# --------------------------------------------------------------------------------------------
# Live properties


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _contentclass(r: Resource) -> str:
    if r.collection:
        return "urn:content-classes:folder"
    ct = r.content_type.lower()
    if ct.startswith("message/"):
        return "urn:content-classes:message"
    if "vcard" in ct:
        return "urn:content-classes:person"
    if "calendar" in ct:
        return "urn:content-classes:appointment"
    return "urn:content-classes:document"


def _count(pred: Callable[[Resource], bool]) -> Callable[[Store, Resource], Value]:
    def get(s: Store, r: Resource) -> Value:
        if not r.collection:
            return None
        return sum(1 for c in s.children(r.path) if pred(c))

    return get


def _etag(r: Resource) -> str:
    return '"' + hashlib.sha1(r.tag.encode()).hexdigest()[:20] + '"'


_LIVE: dict[str, Callable[[Store, Resource], Value]] = {
    f"{{{DAV}}}displayname": lambda s, r: name_of(r.path),
    f"{{{DAV}}}getcontentlength": lambda s, r: 0 if r.collection else len(r.content),
    f"{{{DAV}}}getcontenttype": lambda s, r: None if r.collection else r.content_type,
    f"{{{DAV}}}getlastmodified": lambda s, r: _iso(r.modified),
    f"{{{DAV}}}creationdate": lambda s, r: _iso(r.created),
    f"{{{DAV}}}getetag": lambda s, r: _etag(r),
    f"{{{DAV}}}isfolder": lambda s, r: r.collection,
    f"{{{DAV}}}iscollection": lambda s, r: r.collection,
    f"{{{DAV}}}ishidden": lambda s, r: False,
    f"{{{DAV}}}isreadonly": lambda s, r: False,
    f"{{{DAV}}}contentclass": lambda s, r: _contentclass(r),
    f"{{{DAV}}}resourcetype": lambda s, r: "collection" if r.collection else "",
    f"{{{DAV}}}parentname": lambda s, r: parent_of(r.path),
    f"{{{DAV}}}hassubs": lambda s, r: (
        any(c.collection for c in s.children(r.path)) if r.collection else None
    ),
    f"{{{DAV}}}nosubs": lambda s, r: (
        not any(c.collection for c in s.children(r.path)) if r.collection else None
    ),
    f"{{{DAV}}}childcount": _count(lambda c: True),
    f"{{{DAV}}}objectcount": _count(lambda c: not c.collection),
    f"{{{DAV}}}subcount": _count(lambda c: c.collection),
    f"{{{REPL_NS}}}resourcetag": lambda s, r: r.tag,
    f"{{{REPL_NS}}}repl-uid": lambda s, r: r.uid,
    f"{{{REPL_NS}}}contenttag": lambda s, r: (
        f"ct:{s.replica}{r.content_seq:012x}" if r.collection else None
    ),
}
# Live properties a dead property may not shadow, and that PROPPATCH refuses with 403.
_LIVE_READONLY = frozenset(_LIVE) - {
    f"{{{DAV}}}displayname",
    f"{{{DAV}}}ishidden",
    f"{{{DAV}}}contentclass",
}
PROTECTED = _LIVE_READONLY | {
    f"{{{REPL_NS}}}changetype",
    f"{{{REPL_NS}}}collblob",
    f"{{{DAV}}}href",
}
_BOOLEAN_PROPS = frozenset(
    n for n in _LIVE if n.rsplit("}", 1)[1] in ("isfolder", "iscollection", "ishidden")
) | {f"{{{HTTPMAIL}}}read", f"{{{HTTPMAIL}}}hasattachment"}
DATE_PROPS = frozenset((f"{{{DAV}}}getlastmodified", f"{{{DAV}}}creationdate"))
PROMOTED = frozenset((f"{{{HTTPMAIL}}}subject", f"{{{CONTACTS}}}fileas"))


def _promote(r: Resource) -> None:
    """Property promotion: Exchange derives some properties from the content (the subject of a
    message, the file-as name of a contact), so uploading content changes them too."""
    ct = r.content_type.lower()
    if ct.startswith("message/"):
        msg = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(r.content)
        subject = msg.get("Subject")
        if subject is not None:
            r.props[f"{{{HTTPMAIL}}}subject"] = str(subject)
    elif "vcard" in ct:
        for line in r.content.decode("utf-8", "replace").splitlines():
            if line.upper().startswith("FN:"):
                r.props[f"{{{CONTACTS}}}fileas"] = line[3:].strip()
                break


# --------------------------------------------------------------------------------------------
# JSON forms


def _resource_to_json(r: Resource) -> dict[str, Any]:
    d = dict(r.__dict__)
    d["content"] = _content_to_json(r.content)
    return d


def _content_to_json(data: bytes) -> dict[str, str]:
    # Text stays readable in state.json; anything else is base64.
    with contextlib.suppress(UnicodeDecodeError):
        return {"text": data.decode("utf-8")}
    return {"base64": base64.b64encode(data).decode("ascii")}


def _content_from_json(d: dict[str, str] | None) -> bytes:
    if not d:
        return b""
    if "text" in d:
        return d["text"].encode("utf-8")
    return base64.b64decode(d["base64"])
