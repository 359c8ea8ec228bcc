"""The manifest cache addon: stores every manifest answer and a replica of every collection, and
answers from them (``repl_cache_mode=serve`` or ``offline``) without breaking a token chain.

Storage and the rules of what may be stored are cachestore.py's; this adapter decides when to
look up and when to answer, marks the flows, and emits ``cache`` events through the tracker's
sinks. The database lives on one worker thread, so that the event loop only waits for it in
``await`` (other flows go on) and never blocks on a commit; all its calls go through ``_Db``.

Hook order (addons/repl.py): after Decode, so a request is decoded before it is looked up and a
response before it is stored; before Track, so the tracker sees the answer the client gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, TypeVar

import mitmproxy.types
from mitmproxy import command, ctx, exceptions, http

from ..cachestore import (
    MODES,
    Answer,
    CacheError,
    CacheStore,
    Lookup,
    identity,
    is_manifest_request,
    key_of,
    not_storable,
    storable_headers,
)
from ..protocol.model import normalise_path
from .decode import META_KEY
from .suite import may_wait

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TTL = 300
# A TCP connect to the upstream that takes longer than this counts as "cannot be reached" in
# offline mode; a refused connection is known at once.
PROBE_TIMEOUT = 2.0
# Per-flow state between the request and response hooks, bounded against flows that never end.
_MAX_PENDING = 10_000
_MAX_JUST_STORED = 1_000
COMMENT_MARK = "⛁"
# Set (to the addon's name) on a flow an addon answered itself, in the request phase: that
# answer is not the upstream's, so it must never be stored, nor taken for the upstream's 5xx.
# Server replay says the same with ``flow.is_replay == "response"``.
SYNTHETIC_KEY = "repl.synthetic"


class _Db:
    """A CacheStore confined to one worker thread."""

    def __init__(self, path: str) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="repltap-cache")
        try:
            self.store: CacheStore = self.pool.submit(CacheStore, path).result()
        except BaseException:
            self.pool.shutdown(wait=False)
            raise
        self.path = path

    async def run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn`` on the worker; the event loop serves other flows meanwhile."""
        return await asyncio.wrap_future(self.pool.submit(fn, *args, **kw))

    def run_sync(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn`` on the worker and wait (commands, shutdown: not on a flow's path)."""
        return self.pool.submit(fn, *args, **kw).result()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pool.submit(self.store.close).result()
        self.pool.shutdown(wait=True)


def _credentials(flow: http.HTTPFlow) -> list[str]:
    h = flow.request.headers
    return [*h.get_all("authorization"), *h.get_all("cookie")]


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h"


class Cache:
    """Store manifest answers and a replica of every collection; answer from them when asked."""

    def __init__(self) -> None:
        self.db: _Db | None = None
        self.mode = "observe"
        self.ttl = DEFAULT_TTL
        self.pending: dict[str, dict[str, Any]] = {}  # flow id -> the flow's cache record
        self.just_stored: dict[str, dict[str, Any]] = {}  # the records of flows just stored

    # ---------------------------------------------------------------- options

    def load(self, loader: Any) -> None:
        loader.add_option(
            "repl_cache",
            Optional[str],  # noqa: UP045 - mitmproxy's option type check needs typing.Optional
            None,
            "SQLite database (created if absent) where repltap keeps every manifest answer and "
            "a replica of every collection.",
        )
        loader.add_option(
            "repl_cache_mode",
            str,
            "observe",
            "observe: store only; serve: answer a manifest request from the cache when the very "
            "same request was answered within repl_cache_ttl; offline: answer from the cache "
            "only when the upstream cannot be reached or answers 5xx.",
            choices=MODES,
        )
        loader.add_option(
            "repl_cache_ttl",
            int,
            DEFAULT_TTL,
            "In serve mode, the age in seconds beyond which a stored answer is no longer served.",
        )

    def configure(self, updated: set[str]) -> None:
        if not updated & {"repl_cache", "repl_cache_mode", "repl_cache_ttl"}:
            if "connection_strategy" in updated or "mode" in updated:
                self._warn_eager()
            return
        mode = ctx.options.repl_cache_mode
        if mode not in MODES:
            raise exceptions.OptionsError(
                f"repl_cache_mode must be one of {', '.join(MODES)}, not {mode!r}"
            )
        ttl = ctx.options.repl_cache_ttl
        if ttl <= 0:
            raise exceptions.OptionsError(
                f"repl_cache_ttl must be a positive number of seconds, not {ttl}"
            )
        path = ctx.options.repl_cache
        if mode != "observe" and not path:
            raise exceptions.OptionsError(
                f"repl_cache_mode={mode} needs a database: set repl_cache=PATH too"
            )
        if path:
            path = os.path.abspath(os.path.expanduser(path))
        if (path or None) != (self.db.path if self.db else None):
            new = None
            if path:
                try:
                    new = _Db(path)
                except CacheError as e:
                    raise exceptions.OptionsError(f"repl_cache: {e}") from e
            old, self.db = self.db, new
            if old is not None:
                old.close()
        self.mode, self.ttl = mode, ttl
        self._warn_eager()

    def _warn_eager(self) -> None:
        if self.db is None or self.mode == "observe":
            return
        # Both options belong to mitmproxy's proxy server, which a bare test context lacks.
        modes = getattr(ctx.options, "mode", None) or []
        reverse = any(str(m).startswith("reverse:") for m in modes)
        if reverse and getattr(ctx.options, "connection_strategy", None) == "eager":
            logger.warning(
                "repl_cache_mode=%s in reverse proxy mode: add --set connection_strategy=lazy, "
                "or mitmproxy connects to the upstream before repltap can answer (and drops "
                "the client when the upstream is down)",
                self.mode,
            )

    def done(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    # ---------------------------------------------------------------- hooks
    #
    # Each hook is a plain function that hands back a coroutine only when there is something to
    # wait for (the database): on most flows there is not, and a coroutine made and awaited for
    # nothing on every flow showed in the proxy's cost. _request takes what its gate found;
    # _response and _error look again at the state their gates only glanced at.

    @may_wait
    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        db = self.db
        if db is None or self.mode == "observe":
            return None
        if flow.response or flow.error or not flow.live:
            return None
        s = flow.metadata.get(META_KEY)
        if not is_manifest_request(s):
            return None  # only manifests are looked up
        return self._request(flow, s, db)

    @may_wait
    def response(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if self.db is None and flow.id not in self.pending:
            return None  # what _response does then: nothing
        return self._response(flow)

    @may_wait
    def error(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if flow.id not in self.pending and flow.id not in self.just_stored:
            return None  # what _error does then: nothing
        return self._error(flow)

    async def _request(self, flow: http.HTTPFlow, s: dict[str, Any], db: _Db) -> None:
        ident = self._identity(flow, s, db)
        key = key_of(ident)
        rec = self._record(flow, key)
        upstream, collection = ident["upstream"], ident["collection"]
        token = ident["token"]
        if self.mode == "serve":
            if _no_cache(flow):
                self._miss(flow, s, rec, "the client asked for no-cache")
                return
            found = await db.run(db.store.lookup, key, upstream, collection, token)
            why = self._unservable(found)
            if why is None and found.answer is not None:
                self._serve(flow, s, rec, found.answer, "hit", "the upstream was not asked")
            else:
                self._miss(flow, s, rec, why or "")
            return
        # offline: the upstream first, the cache only when it cannot be reached.
        down = await _unreachable(flow)
        if down is None:
            return
        found = await db.run(db.store.lookup, key, upstream, collection, token)
        if found.answer is not None:
            self._serve(
                flow,
                s,
                rec,
                found.answer,
                "offline-serve",
                f"the upstream cannot be reached ({down})",
                cause=down,
            )
            return
        token_word = "collblob" if s["protocol"] == "exchange" else "sync-token"
        if found.token_seen:
            why = (
                f"the cache saw this {token_word} but never this exact request (range, limit, "
                "acknowledged tags, query or properties differ)"
            )
        elif token is None:
            why = "the cache never saw an initial sync of this collection asked this way"
        else:
            why = f"the cache never saw this {token_word}"
        # The first line says it all: clients tend to show only that.
        body = (
            f"repltap's cache cannot answer: the upstream {upstream} cannot be reached "
            f"({down}), and {why}.\n"
            f"{token_word}: {token!r}; collection: {collection}; mode: offline.\n"
            "A made-up manifest would break the client's token chain; try again when the "
            "server is back.\n"
        )
        flow.response = http.Response.make(
            503, body.encode(), {"Content-Type": "text/plain; charset=utf-8", "Retry-After": "30"}
        )
        flow.metadata[SYNTHETIC_KEY] = "cache"
        rec["answered_by_cache"] = True
        self._miss(flow, s, rec, f"the upstream cannot be reached ({down}) and {why}", status=503)
        self._comment(flow, f"{COMMENT_MARK} cache miss (offline): {why}; answered 503")

    async def _response(self, flow: http.HTTPFlow) -> None:
        db = self.db
        rec = self.pending.get(flow.id)
        s = flow.metadata.get(META_KEY)
        if rec is not None and rec.get("answered_by_cache"):
            self._attach(flow, rec)  # the decoder replaced the summary: put the mark back
            self.pending.pop(flow.id, None)
            return
        if db is None or flow.response is None or not isinstance(s, dict):
            self.pending.pop(flow.id, None)
            return
        if not from_upstream(flow):
            self.pending.pop(flow.id, None)
            return  # only what the upstream really answered teaches the cache
        offline_5xx = self.mode == "offline" and flow.response.status_code >= 500
        if offline_5xx and is_manifest_request(s) and await self._offline_5xx(flow, s, db):
            return
        if is_manifest_request(s):
            await self._store(flow, s, db)
            rec = self.pending.get(flow.id)
            if rec is not None and rec.get("kind") == "store":
                # Kept until the flow is over: a later addon may still kill it (see error()).
                if len(self.just_stored) >= _MAX_JUST_STORED:
                    self.just_stored.pop(next(iter(self.just_stored)))
                self.just_stored[flow.id] = rec
        elif s.get("response") is not None and s.get("kind") in (
            "upload",
            "delete",
            "move",
            "copy",
            "mkcol",
        ):
            await db.run(db.store.record_write, s, now=time.time(), flow=flow.id)
        self.pending.pop(flow.id, None)

    async def _error(self, flow: http.HTTPFlow) -> None:
        rec = self.pending.pop(flow.id, None) or self.just_stored.pop(flow.id, None)
        db = self.db
        if rec is None or db is None:
            return
        # A later addon killed the flow after we stored its answer: the client never got it.
        if rec.get("kind") == "store" and await db.run(db.store.forget, rec["key"], flow.id):
            rec["kind"] = "not-stored"
            rec["reason"] = "the flow ended in an error after all"
        self._attach(flow, rec)

    # ---------------------------------------------------------------- helpers

    @staticmethod
    def _identity(flow: http.HTTPFlow, s: dict[str, Any], db: _Db) -> dict[str, Any]:
        # auth_hash only reads the salt: safe to call from the event loop's thread.
        auth = db.store.auth_hash(_credentials(flow))
        q = flow.request.path.partition("?")[2]
        return identity(
            s,
            scheme=flow.request.scheme,
            query_string=q,
            brief=flow.request.headers.get("brief"),
            auth=auth,
        )

    def _record(self, flow: http.HTTPFlow, key: str) -> dict[str, Any]:
        rec = self.pending.get(flow.id)
        if rec is None:
            if len(self.pending) >= _MAX_PENDING:
                self.pending.pop(next(iter(self.pending)))
            rec = self.pending[flow.id] = {"mode": self.mode, "key": key}
        return rec

    def _unservable(self, found: Lookup) -> str | None:
        """Why a serve-mode lookup must not answer, or None."""
        a = found.answer
        if a is None:
            return "never asked before" if not found.token_seen else "never asked this way"
        age = time.time() - a.stored
        if age > self.ttl:
            return f"stored {_age(age)} ago, older than repl_cache_ttl ({self.ttl} s)"
        if found.changed and found.changed >= a.stored:
            return "a write to the collection went through the proxy since it was stored"
        return None

    def _serve(
        self,
        flow: http.HTTPFlow,
        s: dict[str, Any],
        rec: dict[str, Any],
        a: Answer,
        kind: str,
        why: str,
        cause: str | None = None,
    ) -> None:
        age = max(0.0, time.time() - a.stored)
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in a.headers]
        headers.append((b"Age", str(int(age)).encode()))
        resp = http.Response.make(a.status, a.body, headers)
        resp.reason = a.reason
        flow.response = resp
        flow.metadata[SYNTHETIC_KEY] = "cache"
        rec.update(
            kind=kind,
            answered_by_cache=True,
            stored=a.stored,
            age=round(age, 3),
            from_flow=a.flow,
            status=a.status,
            received=a.received,
        )
        if cause is not None:
            rec["cause"] = cause
        self._emit(
            flow,
            s,
            kind,
            key=a.key,
            sent=a.token,
            received=a.received,
            status=a.status,
            age=round(age, 3),
            from_flow=a.flow,
            **({"cause": cause} if cause is not None else {}),
        )
        self._attach(flow, rec)
        self._comment(
            flow,
            f"{COMMENT_MARK} cache {kind}: {why}; answered from the cache "
            f"(stored {_age(age)} ago in flow {a.flow[:8]})",
        )

    def _miss(
        self,
        flow: http.HTTPFlow,
        s: dict[str, Any],
        rec: dict[str, Any],
        reason: str,
        status: int | None = None,
    ) -> None:
        rec.update(kind="miss", reason=reason)
        fields: dict[str, Any] = {
            "key": rec["key"],
            "sent": s["request"].get("token"),
            "reason": reason,
        }
        if status is not None:
            rec["status"] = status
            fields["status"] = status
        self._emit(flow, s, "miss", **fields)
        self._attach(flow, rec)

    async def _offline_5xx(self, flow: http.HTTPFlow, s: dict[str, Any], db: _Db) -> bool:
        """The upstream answered 5xx in offline mode: serve the stored answer if there is one."""
        ident = self._identity(flow, s, db)
        key = key_of(ident)
        rec = self._record(flow, key)
        assert flow.response is not None
        status = flow.response.status_code
        found = await db.run(
            db.store.lookup, key, ident["upstream"], ident["collection"], ident["token"]
        )
        if found.answer is None:
            # The server's own error goes through: it is the truth, and no manifest is made up.
            self._miss(
                flow,
                s,
                rec,
                f"the upstream answered {status} and nothing is stored for this request",
            )
            return False
        cause = f"the upstream answered {status}"
        self._serve(flow, s, rec, found.answer, "offline-serve", cause, cause=cause)
        decode = ctx.master.addons.get("decode")
        if decode is not None:
            decode.refresh(flow)  # so that what is summarised and tracked is what is sent
            self._attach(flow, rec)  # onto the new summary
        self.pending.pop(flow.id, None)
        return True

    async def _store(self, flow: http.HTTPFlow, s: dict[str, Any], db: _Db) -> None:
        resp = flow.response
        assert resp is not None
        ident = self._identity(flow, s, db)
        key = key_of(ident)
        rec = self._record(flow, key)
        body = resp.raw_content
        why = not_storable(
            s,
            streamed=bool(resp.stream),
            body=body,
            declared_length=resp.headers.get("content-length"),
        )
        content: bytes | None = None
        if why is None:
            try:
                content = resp.get_content(strict=True)
            except ValueError as e:
                why = f"the Content-Encoding cannot be decoded: {e}"
        answer = None
        if why is None and content is not None:
            r = s["response"]
            answer = Answer(
                key=key,
                identity=ident,
                upstream=ident["upstream"],
                collection=ident["collection"],
                protocol=s["protocol"],
                token=ident["token"],
                received=r.get("token"),
                status=resp.status_code,
                reason=resp.reason,
                headers=storable_headers(resp.headers.fields),
                body=content,
                entries=len(r.get("entries") or []),
                stored=time.time(),
                flow=flow.id,
            )
        dropped = await db.run(db.store.record_manifest, s, answer, now=time.time(), flow=flow.id)
        r = s.get("response") or {}
        if r.get("invalid_token"):
            rec.update(kind="drop", dropped=dropped, not_stored=why)
            if dropped:
                self._emit(
                    flow,
                    s,
                    "drop",
                    key=key,
                    sent=ident["token"],
                    status=r.get("status"),
                    dropped=dropped,
                )
        elif answer is not None:
            miss = rec.get("reason") if rec.get("kind") == "miss" else None
            rec.update(kind="store", stored=answer.stored)
            rec.pop("reason", None)
            if miss:
                rec["miss"] = miss
            self._emit(
                flow,
                s,
                "store",
                key=key,
                sent=answer.token,
                received=answer.received,
                status=answer.status,
                entries=answer.entries,
                bytes=len(answer.body),
            )
        elif rec.get("kind") != "miss":
            rec.update(kind="not-stored", reason=why)
        else:
            rec["not_stored"] = why
        self._attach(flow, rec)

    def _emit(self, flow: http.HTTPFlow, s: dict[str, Any], kind: str, **fields: Any) -> None:
        where: dict[str, Any] = {"collection": s.get("collection"), "upstream": s.get("upstream")}
        track = ctx.master.addons.get("track")
        if track is not None:
            track.emit(flow, "cache", kind=kind, **where, **fields)
        else:
            logger.debug("cache %s %s%s %s", kind, where["upstream"], where["collection"], fields)

    def _attach(self, flow: http.HTTPFlow, rec: dict[str, Any]) -> None:
        s = flow.metadata.get(META_KEY)
        if isinstance(s, dict):
            s["cache"] = dict(rec)

    @staticmethod
    def _comment(flow: http.HTTPFlow, line: str) -> None:
        if line not in (flow.comment or ""):
            flow.comment = f"{flow.comment}\n{line}" if flow.comment else line

    # ---------------------------------------------------------------- commands

    def _need_db(self) -> _Db:
        if self.db is None:
            raise exceptions.CommandError("no cache: set repl_cache=PATH first")
        return self.db

    def _resolve(self, db: _Db, name: str) -> list[dict[str, Any]]:
        """The known collections ``name`` designates: a path, ``host:port/path`` or a URL."""
        known = db.run_sync(db.store.collections)
        text = name.strip()
        upstream = None
        if "://" in text:
            text = text.split("://", 1)[1]
        if not text.startswith("/"):
            upstream, slash, rest = text.partition("/")
            text = slash + rest if slash else "/"
        path = normalise_path(text)
        paths = {path, path if path.endswith("/") else path + "/"}
        found = [
            c
            for c in known
            if c["collection"] in paths and (upstream is None or c["upstream"] == upstream)
        ]
        if not found:
            names = ", ".join(f"{c['upstream']}{c['collection']}" for c in known) or "none yet"
            raise exceptions.CommandError(f"no collection {name!r} in the cache; known: {names}")
        return found

    @command.command("repl.cache.show")
    def show(self, collection: str) -> str:
        """The replica of a collection (a path, or host:port/path) as a table."""
        db = self._need_db()
        out: list[str] = []
        for c in self._resolve(db, collection):
            items = db.run_sync(db.store.replica, c["upstream"], c["collection"])
            out.append(
                f"{c['upstream']}{c['collection']} ({c['protocol']}): {len(items)} items, "
                f"{c['answers']} stored answers, newest token {c['token'] or '-'}"
            )
            rows = [("key", "href", "tag", "via")] + [
                (
                    i["key"] if i["key"] != i["href"] else "(href)",
                    i["href"] or "-",
                    i["tag"] or "-",
                    i["via"],
                )
                for i in items
            ]
            widths = [max(len(r[k]) for r in rows) for k in range(4)]
            for n, r in enumerate(rows):
                out.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
                if n == 0:
                    out.append("  ".join("-" * w for w in widths))
            out.append("")
        return "\n".join(out).rstrip()

    @command.command("repl.cache.clear")
    def clear(self) -> str:
        """Forget every stored answer and every replica."""
        db = self._need_db()
        a, i, c = db.run_sync(db.store.clear)
        return f"cleared {a} stored answers and {i} items of {c} collections"

    @command.command("repl.cache.export")
    def export(self, collection: str, path: mitmproxy.types.Path) -> str:
        """Write a collection's replica and stored answers (without bodies) to PATH as JSON."""
        db = self._need_db()
        found = self._resolve(db, collection)
        if len(found) > 1:
            names = ", ".join(f"{c['upstream']}{c['collection']}" for c in found)
            raise exceptions.CommandError(
                f"{collection!r} is ambiguous ({names}): use host:port/path"
            )
        c = found[0]
        doc = db.run_sync(db.store.export, c["upstream"], c["collection"])
        target = Path(os.path.expanduser(str(path)))
        try:
            target.write_text(
                json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
            )
        except OSError as e:
            raise exceptions.CommandError(f"cannot write {target}: {e.strerror}") from e
        return f"exported {len(doc['items'])} items of {c['upstream']}{c['collection']} to {target}"


def from_upstream(flow: http.HTTPFlow) -> bool:
    """Whether the flow's answer is the upstream's own, live: not from a recording, a server
    replay, or an addon that answered in the request phase (see SYNTHETIC_KEY)."""
    return flow.live and flow.is_replay != "response" and not flow.metadata.get(SYNTHETIC_KEY)


def _no_cache(flow: http.HTTPFlow) -> bool:
    h = flow.request.headers
    cc = ",".join(h.get_all("cache-control")).lower()
    return "no-cache" in cc or "no-store" in cc or "no-cache" in h.get("pragma", "").lower()


async def _unreachable(flow: http.HTTPFlow) -> str | None:
    """Why the upstream cannot be reached right now, or None when it accepts a connection.

    mitmproxy gives an addon no way to answer after its own connection attempt failed (the
    client gets a 502 and the flow an error), so offline mode asks first with a bare TCP
    connect. A connection mitmproxy already holds open to the upstream counts as reachable.
    """
    sc = flow.server_conn
    if sc is not None and sc.connected:
        return None
    via = sc.via if sc is not None else None  # upstream-proxy mode: (scheme, (host, port))
    host, port = via[1] if via is not None else (flow.request.host, flow.request.port)
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT)
    except TimeoutError:
        return f"no connection to {host}:{port} within {PROBE_TIMEOUT:g} s"
    except OSError as e:
        # asyncio's strerror is "Connect call failed (...)"; the errno says what happened.
        what = os.strerror(e.errno) if e.errno else str(e) or type(e).__name__
        return f"{what}: {host}:{port}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


__all__ = ["Cache"]
