"""The fault injector addon: breaks the transport, HTTP or the replication protocol itself, as a
YAML scenario (``repl_faults``) says, and records every fault it injects.

What may live here: the mitmproxy side of faults: hooks, the socket trick for TCP resets, the
continuation of split manifests, counters and commands. What to inject and when is decided by
repltap.faults.scenario; answers are rewritten by repltap.faults.rewrite.

What is kept between flows is bounded by what it costs, for sessions that never end: split
answers (their follow-up pages) within 64 MiB and 256 answers, least recently used let go first,
and of those served to their last page only the latest 16 (for a retry of it);
the server's answers kept for stale_token within another 64 MiB; tokens counted or watched for
only as far as the scenario's ``after_token`` asks (from the moment it is loaded). A client that
comes back for a page of an answer let go gets the rejection the server gives a token it no
longer knows (475, or 403/412 + valid-sync-token), answered here and recorded as a ``paginate``
fault with ``evicted: true``: it starts over, as after any expired token.

Where each fault happens (hooks run in the order of ``addons`` in repl.py: Decode, then the
cache, then this addon, then Track, so each flow is decoded before it is faulted, the cache keeps
the server's own answers, and the tracker sees what the client receives; after changing an
answer this addon asks Decode to read it again):
- ``request``: delay, drop, reset, hang, status (phase request), conflict, and the follow-up pages
  of a split manifest, answered without the server;
- ``responseheaders``: truncate (streams the body through a cutter), slow_first_byte;
- ``response``: delay, drop, reset, hang and status with ``phase: response`` (the server has
  done the work), and every rewrite of a replication answer.

An answer this addon makes up itself (a status, a 412, a follow-up page) is the fault: no other
rule applies to it, and it carries ``flow.metadata["repl.synthetic"] = "faults"`` so that the
cache never stores it as the server's. A flow's faults are logged when the flow ends, before the
tracker's events of the same flow; a recording read again (``mitmdump -nr``) logs them again.

With no scenario, or with every rule disabled, each hook returns at its first lines: the traffic
is byte-identical to running without repltap (tests/e2e/test_faults_e2e.py checks it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Optional

from mitmproxy import command, ctx, exceptions, http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import status_codes

from ..faults import rewrite
from ..faults.scenario import (
    REQUEST,
    RESPONSE,
    RESPONSEHEADERS,
    FlowView,
    RuleState,
    Scenario,
    ScenarioError,
)
from ..faults.scenario import load as load_scenario
from ..protocol import exchange
from ..protocol.model import normalise_path
from ..summary import SUMMARY_KEYS
from .cache import SYNTHETIC_KEY, from_upstream
from .decode import META_KEY, summary_now, upstream_of
from .suite import may_wait

logger = logging.getLogger(__name__)

MARK = ":zap:"
MiB = 1024 * 1024
# Bounds on what is remembered between flows, against sessions that never end: by what it costs,
# as one kept answer may be a multi-megabyte body.
_MAX_FLOWS = 10_000
_MAX_COLLECTIONS = 1_000
_MAX_UPSTREAMS = 1_000
# Split answers kept for their follow-up pages may cost this much; as much again the server's
# answers kept for stale_token and swap_token.
_KEEP_BYTES = 64 * MiB
_MAX_SPLITS = 256  # clients in the middle of a split answer at once
_MAX_DONE = 16  # split answers served to their last page, kept for a retry of it
_MAX_GONE = 1_000  # split answers let go whose page tokens are still recognised
_COUNT_RECENT = 64  # a collection's latest tokens, told apart from new ones when counting
_MAX_STYLE_BODY = 64 * 1024  # a server's own rejection larger than this is not copied
_OVERHEAD = 512  # bytes a kept answer costs beyond its body and headers (objects, slots)
_HANG_POLL = 0.05  # seconds between looks at whether a hung client has given up
_REASONS = {210: "Content Different", 412: "Precondition Failed", 475: "Invalid collblob"}
_WRITES = frozenset(("upload", "delete", "move", "copy", "mkcol"))


@dataclass
class _Split:
    """A manifest answer this addon split (paginate): page k is served when the client comes
    back with the token page k - 1 handed out."""

    rule: str
    target: str
    protocol: str
    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]
    body: bytes  # the server's whole answer
    rows: int
    count: int  # its entries
    total: int  # rows in all (the server's Content-Range total, or the count)
    pages: int
    final: str  # the server's own token, handed out with the last page
    server: str  # its Server header: the style of the rejection once the answer is let go
    dav_prefix: str | None  # RFC 6578: its DAV: prefix, for that rejection (read once, here)
    size: int = 0  # what keeping it costs, in bytes


@dataclass(frozen=True, slots=True)
class _Gone:
    """A split answer let go (the budget, or a reload): its page tokens are still recognised, and
    rejected the way a server rejects a token it no longer knows."""

    rule: str
    target: str
    protocol: str
    server: str
    dav_prefix: str | None
    why: str


class _Count:
    """The distinct tokens handed out for one collection, counted only as far as an
    ``after_token: N`` of the scenario needs (``upto``): past that, no rule learns anything
    more. Told apart by the collection's latest tokens, which is where a repeated one is."""

    __slots__ = ("n", "recent")

    def __init__(self) -> None:
        self.n = 0
        self.recent: dict[int, None] = {}  # hashes of the latest tokens, oldest first

    def add(self, token: str, upto: int) -> None:
        h = hash(token)
        if self.n >= upto or h in self.recent:
            return
        self.n += 1
        if self.n >= upto:
            self.recent.clear()  # counted far enough: nothing left to tell apart
            return
        self.recent[h] = None
        if len(self.recent) > _COUNT_RECENT:
            del self.recent[next(iter(self.recent))]


class _Cutter:
    """A stream callable passing the first bytes of a body (all at once for a fraction, as the
    length is only known at the end of a chunked body)."""

    def __init__(self, limit: int | None, fraction: float | None) -> None:
        self.limit = limit
        self.fraction = fraction
        self.seen = 0
        self.passed = bytearray()
        self._held = bytearray()

    def __call__(self, chunk: bytes) -> bytes:
        self.seen += len(chunk)
        if self.limit is not None:
            out = chunk[: max(0, self.limit - len(self.passed))]
            self.passed += out
            return out
        if chunk:
            self._held += chunk
            return b""
        out = bytes(self._held[: int(len(self._held) * (self.fraction or 0))])
        self.passed += out
        return out


class Faults:
    """Inject the faults of the ``repl_faults`` scenario."""

    def __init__(self) -> None:
        self.scenario: Scenario | None = None
        self.states: dict[str, RuleState] = {}
        self.by_phase: dict[str, list[RuleState]] = {
            p: [] for p in (REQUEST, RESPONSEHEADERS, RESPONSE)
        }
        self.generation = 0  # bumped on every (re)load: hung flows let go
        self.records: dict[str, list[dict[str, Any]]] = {}  # faults of flows still running
        self.ended: set[str] = set()  # flows a terminal fault ended: later phases leave them
        self.ours: set[str] = set()  # flows this addon answered itself
        self.cutters: dict[str, tuple[RuleState, int, _Cutter, bool]] = {}
        # Split answers by the id their page tokens carry, least recently used first, within
        # _KEEP_BYTES and _MAX_SPLITS; those let go are remembered (small) as gone.
        self.splits: OrderedDict[str, _Split] = OrderedDict()
        self.split_bytes = 0
        self.served_out: OrderedDict[str, None] = OrderedDict()  # those served to their last page
        self.gone: OrderedDict[str, _Gone] = OrderedDict()
        # (collection, initial or incremental) -> the server's own answers, oldest first:
        # (flow id, answer, its size), all within _KEEP_BYTES
        self.history: OrderedDict[str, deque[tuple[str, http.Response, int]]] = OrderedDict()
        self.history_bytes = 0
        self.last_tokens: OrderedDict[str, str] = OrderedDict()  # collection -> server's token
        # after_token: only what the loaded scenario asks about is counted or watched for.
        self.count_to = 0  # its largest number
        self.watched: frozenset[str] = frozenset()  # its tokens
        self.coll_tokens: OrderedDict[str, _Count] = OrderedDict()
        self.tokens_seen: set[str] = set()  # the watched tokens seen on the wire
        self.upstream_protocol: OrderedDict[str, str] = OrderedDict()
        # upstream -> its own rejection of a sync-token
        self.styles: OrderedDict[str, tuple[int, str, bytes, str]] = OrderedDict()
        self.keep_history = 0

    # ---------------------------------------------------------------- options
    def load(self, loader: Any) -> None:
        loader.add_option(
            "repl_faults",
            Optional[str],  # noqa: UP045 - mitmproxy's option type check needs typing.Optional
            None,
            "A fault scenario (YAML; see config/faults/) to inject into the traffic: delays, "
            "drops, resets, truncation, error statuses, rejected or corrupted tokens, changed "
            "manifests. Unset: no fault, and not a byte changed.",
        )

    def configure(self, updated: set[str]) -> None:
        if "repl_faults" not in updated:
            return
        path = ctx.options.repl_faults
        if not path:
            self._install(None)
            return
        try:
            sc = load_scenario(os.path.expanduser(path))
        except ScenarioError as e:
            raise exceptions.OptionsError(f"repl_faults: {e}") from None
        self._install(sc)

    def _install(self, sc: Scenario | None) -> None:
        self.generation += 1
        self.scenario = sc
        self.states = {r.name: RuleState(r) for r in sc.rules} if sc else {}
        for sid, split in list(self.splits.items()):
            self._let_go(sid, split, "the fault scenario was changed")
        self.splits.clear()
        self.served_out.clear()
        self.split_bytes = 0
        self.history.clear()
        self.history_bytes = 0
        self.last_tokens.clear()
        # Tokens are counted and watched for from the moment a scenario is loaded, like its
        # rules' counters: what the new one asks about may not be what the old one did.
        afters = [r.match.after_token for r in sc.rules] if sc else []
        self.count_to = max([a for a in afters if isinstance(a, int)] or [0])
        self.watched = frozenset(a for a in afters if isinstance(a, str))
        self.coll_tokens.clear()
        self.tokens_seen.clear()
        self._index()
        kinds = {s.rule.action.type for s in self.states.values()}
        self.keep_history = max(
            [
                s.rule.action.params["back"] + 1
                for s in self.states.values()
                if s.rule.action.type == "stale_token"
            ]
            or [0]
        )
        if "swap_token" in kinds:
            self.keep_history = max(self.keep_history, 1)
        if sc is not None:
            on = sum(s.enabled for s in self.states.values())
            logger.info(f"repl_faults: {len(sc.rules)} rules from {sc.path} ({on} enabled)")

    def _index(self) -> None:
        """Rules by the hook they act in, enabled ones only: a hook with none returns at once."""
        self.by_phase = {p: [] for p in (REQUEST, RESPONSEHEADERS, RESPONSE)}
        for st in self.states.values():
            if st.enabled:
                self.by_phase[st.rule.action.phase].append(st)

    # ---------------------------------------------------------------- hooks
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.live:
            return
        # A flow read from a recording (mitmdump -nr): its faults were recorded with it. They are
        # logged again, so the offline log tells what the live one told. (Decode replaces the
        # summary in the next hook, which is why they are picked up here.)
        s = flow.metadata.get(META_KEY)
        recorded = s.get("fault") if isinstance(s, dict) else None
        if isinstance(recorded, list) and recorded:
            self.records[flow.id] = [dict(r) for r in recorded if isinstance(r, dict)]

    # The hooks below are plain functions that hand back a coroutine only when a scenario may
    # act on the flow: without one (most proxies), no coroutine is made and awaited per flow.

    @may_wait
    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if self.scenario is None or not (self.by_phase[REQUEST] or self.splits or self.gone):
            return None
        if flow.response or flow.error or not flow.live:
            return None  # answered or killed by someone else, or read from a file
        return self._request(flow)

    async def _request(self, flow: http.HTTPFlow) -> None:
        view = self._view(flow, REQUEST)
        await self._run(flow, REQUEST, view)
        if (self.splits or self.gone) and not (flow.response or flow.error or not flow.live):
            self._continue_split(flow, view)
        self._attach(flow)

    @may_wait
    def responseheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if self.scenario is None or not self.by_phase[RESPONSEHEADERS]:
            return None
        if flow.response is None or flow.error or not flow.live or flow.id in self.ended:
            return None
        return self._responseheaders(flow)

    async def _responseheaders(self, flow: http.HTTPFlow) -> None:
        await self._run(flow, RESPONSEHEADERS, self._view(flow, RESPONSEHEADERS))
        self._attach(flow)

    @may_wait
    def response(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if self.scenario is None:
            if flow.id in self.records:  # read from a recording
                self._finish(flow)
            else:
                self._forget(flow)  # in case the scenario went while the flow was under way
            return None
        return self._response(flow)

    async def _response(self, flow: http.HTTPFlow) -> None:
        if flow.id in self.cutters:
            self._finish_truncation(flow)
        elif (
            (self.by_phase[RESPONSE] or self.keep_history)
            and flow.response is not None
            and flow.live
            and flow.id not in self.ended
        ):
            view = self._view(flow, RESPONSE)
            self._remember(flow, view)
            await self._run(flow, RESPONSE, view)
        self._learn(flow)
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if self.scenario is None and flow.id not in self.records:
            self._forget(flow)  # in case the scenario went while the flow was under way
            return
        self._finish(flow)

    def done(self) -> None:
        self.generation += 1  # let hung flows go

    # ---------------------------------------------------------------- the rules
    async def _run(self, flow: http.HTTPFlow, phase: str, view: FlowView) -> None:
        for st in self.by_phase[phase]:
            if flow.error or not flow.live or flow.id in self.ended:
                return
            n = st.consider(view, time.monotonic())
            if n is None:
                continue
            changed = await self._apply(flow, st, n, view)
            if changed and phase == RESPONSE:
                self._refresh(flow)  # the summary and the tracker see what the client gets
            if st.rule.action.spec.terminal:
                self.ended.add(flow.id)
                return
            if changed and phase == RESPONSE:
                view = self._view(flow, RESPONSE)

    async def _apply(self, flow: http.HTTPFlow, st: RuleState, n: int, view: FlowView) -> bool:
        """Inject one fault; True when the answer changed."""
        a = st.rule.action
        p = a.params
        t = a.type
        if t in ("delay", "slow_first_byte"):
            secs = st.jitter(p["ms"], p["jitter_ms"])
            where = "before its first byte" if t == "slow_first_byte" else f"at {a.phase}"
            ms = round(secs * 1000, 3)
            self._record(flow, st, n, f"held {ms:.0f} ms {where}", delay_ms=ms)
            await asyncio.sleep(secs)
            return False
        if t == "drop":
            self._record(flow, st, n, "closed the client connection without a byte")
            self._kill(flow)
            return False
        if t == "reset":
            rst = self._linger0(flow)
            how = (
                "reset the client connection (TCP RST)"
                if rst
                else ("closed the client connection (a TCP RST is not possible here)")
            )
            self._record(flow, st, n, how, rst=rst)
            self._kill(flow)
            return False
        if t == "hang":
            started = time.monotonic()
            why = await self._hang(flow, p["seconds"])
            held = time.monotonic() - started
            self._record(
                flow,
                st,
                n,
                f"answered nothing for {held:.1f} s, then {why}",
                held_s=round(held, 3),
                ended=why,
            )
            self._kill(flow)
            return False
        if t == "status":
            self._answer(flow, p["code"], p["body"], p["retry_after"], p["headers"])
            self._record(
                flow, st, n, f"answered {p['code']} instead of the server", status=p["code"]
            )
            return True
        if t == "conflict":
            self._answer(
                flow,
                412,
                "412 Precondition Failed: the resource changed (repltap "
                f"fault rule {st.rule.name})",
                None,
                None,
            )
            self._record(
                flow,
                st,
                n,
                "answered 412 to the conditional write; the server never saw it",
                status=412,
            )
            return True
        if t == "truncate":
            assert flow.response is not None
            length = _content_length(flow.response)
            frac = p["fraction"]
            limit = (
                p["bytes"]
                if p["bytes"] is not None
                else (int(length * frac) if length is not None else None)
            )
            cutter = _Cutter(limit, None if limit is not None else frac)
            flow.response.stream = cutter
            self.cutters[flow.id] = (st, n, cutter, p["rst"])
            return False  # recorded when the body has passed (response hook)
        return self._rewrite(flow, st, n, view)

    def _rewrite(self, flow: http.HTTPFlow, st: RuleState, n: int, view: FlowView) -> bool:
        """The replication faults: change the server's answer."""
        assert flow.response is not None
        a = st.rule.action
        p = a.params
        t = a.type
        resp = flow.response
        if t == "invalid_token":
            self._reject_token(flow, st, n, view)
            return True
        if t == "content_different":
            was = resp.status_code
            resp.status_code = 210
            resp.reason = _REASONS[210]
            text = (
                p["body"] or f"repltap: the server changed the content (fault rule {st.rule.name})"
            )
            resp.content = (text.rstrip("\n") + "\n").encode()
            if "content-type" not in resp.headers:
                resp.headers["Content-Type"] = "text/plain; charset=utf-8"
            self._record(
                flow, st, n, f"answered 210 Content Different instead of {was}", status=210, was=was
            )
            return True
        if t == "strip_tags":
            gone = [h for h in p["headers"] if h in resp.headers]
            for h in gone:
                del resp.headers[h]
            self._record(flow, st, n, "removed the " + ", ".join(gone) + " header(s)", headers=gone)
            return True
        if t == "stale_token":
            older = self._earlier(flow, view)[-p["back"]].copy()
            older.timestamp_start, older.timestamp_end = resp.timestamp_start, resp.timestamp_end
            old_token = view.received_token
            flow.response = older
            self._refresh(flow)
            stale = _summary(flow).get("response") or {}
            self._record(
                flow,
                st,
                n,
                f"answered with the collection's answer from {p['back']} manifest(s) ago again",
                token_from=old_token,
                token_to=stale.get("token"),
            )
            return True
        try:
            body = resp.get_content(strict=True) or b""
            m = rewrite.parse(body, view.protocol, view.path)
        except (ValueError, rewrite.RewriteError) as e:
            # The summary said manifest but the bytes disagree: leave the answer alone.
            logger.warning(f"fault {st.rule.name}: answer not rewritten ({e})")
            return False
        detail, effect = self._edit(flow, st, m, view)
        resp.content = m.tobytes()
        self._record(flow, st, n, detail, **effect)
        return True

    def _edit(
        self, flow: http.HTTPFlow, st: RuleState, m: rewrite.Manifest, view: FlowView
    ) -> tuple[str, dict[str, Any]]:
        """Change a parsed manifest answer; (detail sentence, effect fields)."""
        a = st.rule.action
        p = a.params
        t = a.type
        word = "collblob" if view.protocol == "exchange" else "sync-token"
        if t == "corrupt_token":
            old = m.token or ""
            new = rewrite.corrupt(old, p["mode"], st.rng)
            m.set_token(new)
            return f"corrupted the {word} ({p['mode']})", {"token_from": old, "token_to": new}
        if t == "swap_token":
            key = _collection_key(flow, view)
            up = upstream_of(flow)
            others = [k for k in self.last_tokens if k != key]
            same_up = [k for k in others if k.startswith(up + "/")]
            other = (same_up or others)[-1]
            before = m.set_token(self.last_tokens[other])
            return (
                f"handed out the {word} of {other} instead",
                {
                    "token_from": before,
                    "token_to": self.last_tokens[other],
                    "from_collection": other,
                },
            )
        entries = m.entries()
        if t in ("drop_entries", "duplicate_entries"):
            eligible = [
                i for i, e in enumerate(entries) if not p["types"] or m.entry_type(e) in p["types"]
            ]
            if p.get("fraction"):
                k = max(1, math.floor(len(eligible) * p["fraction"]))
            else:
                k = p["count"] or 1
            chosen = [eligible[i] for i in rewrite.pick(len(eligible), k, p["which"], st.rng)]
            picked = [entries[i] for i in chosen]
            if t == "drop_entries":
                m.remove(picked)
                verb = "dropped"
            else:
                m.duplicate(picked)
                verb = "duplicated"
            which = ", ".join(f"#{i + 1}" for i in chosen)
            return (
                f"{verb} {len(chosen)} of {len(entries)} entries ({which})",
                {"entries": [i + 1 for i in chosen], "of": len(entries)},
            )
        if t == "reorder_entries":
            order = list(range(len(entries)))
            if p["order"] == "reverse":
                order.reverse()
            else:
                while order == sorted(order):  # a shuffle that changes nothing is no fault
                    st.rng.shuffle(order)
            m.reorder(order)
            return (
                f"reordered the {len(entries)} entries ({p['order']})",
                {"order": [i + 1 for i in order]},
            )
        if t == "rewrite_changetype":
            count = 0
            for e in entries:
                old = m.entry_type(e)
                if p["from"] not in ("any", old) or old == p["to"]:
                    continue
                m.set_changetype(e, p["to"])
                count += 1
                if p["count"] is not None and count >= p["count"]:
                    break
            return (
                f"rewrote {count} changetype(s) {p['from']} → {p['to']}",
                {"entries": count, "from": p["from"], "to": p["to"]},
            )
        if t == "paginate":
            return self._split(flow, st, m, view)
        raise AssertionError(f"unknown action {t}")

    # ---------------------------------------------------------------- replication helpers
    def _reject_token(self, flow: http.HTTPFlow, st: RuleState, n: int, view: FlowView) -> None:
        assert flow.response is not None
        server = flow.response
        status, reason, body, ctype, style = self._rejection(
            st.rule.name,
            upstream_of(flow),
            view.sent_token or "",
            view.protocol,
            st.rule.action.params["status"],
            server.headers.get("server", ""),
            lambda: rewrite.dav_prefix(server.content or b""),
        )
        headers = [(b"Content-Type", ctype.encode())]
        for keep in ("server", "date"):
            for v in server.headers.get_all(keep):
                headers.append((keep.title().encode(), v.encode()))
        resp = http.Response.make(status, body, headers)
        resp.reason = reason
        resp.http_version = server.http_version
        resp.timestamp_start, resp.timestamp_end = server.timestamp_start, server.timestamp_end
        flow.response = resp
        word = "collblob" if view.protocol == "exchange" else "sync-token"
        self._record(
            flow,
            st,
            n,
            f"rejected the {word} with {status} ({style} style)",
            status=status,
            token=view.sent_token,
        )

    def _rejection(
        self,
        rule: str,
        up: str,
        sent: str,
        protocol: str,
        wanted: str,
        server_name: str,
        dav_prefix: Callable[[], str | None],
    ) -> tuple[int, str, bytes, str, str]:
        """How upstream ``up`` rejects the token ``sent``: (status, reason, body, content type,
        the style's name). ``wanted``: ``auto`` or a status."""
        if protocol == "exchange" and wanted in ("auto", "475"):
            body = f"475 Invalid collblob: rejected by repltap fault rule {rule}\n".encode()
            return 475, _REASONS[475], body, "text/plain; charset=utf-8", "475"
        if protocol == "rfc6578" and wanted == "auto" and up in self.styles:
            status, reason, body, ctype = self.styles[up]
            return status, reason, body, ctype, "the server's own"
        xandikos = _looks_like_xandikos(sent, server_name)
        status = int(wanted) if wanted != "auto" else (412 if xandikos else 403)
        reason = "Precondition Failed" if status == 412 else "Forbidden"
        desc = f"Requested sync token {sent} is invalid" if status == 412 else None
        body = rewrite.invalid_sync_token_body(dav_prefix(), desc)
        style = str(status) + (" (Xandikos)" if xandikos and wanted == "auto" else "")
        return status, reason, body, "text/xml; charset=utf-8", style

    def _split(
        self, flow: http.HTTPFlow, st: RuleState, m: rewrite.Manifest, view: FlowView
    ) -> tuple[str, dict[str, Any]]:
        """Cut the answer to its first page and keep the rest for the client's next requests."""
        assert flow.response is not None
        resp = flow.response
        body = resp.get_content(strict=False) or b""
        rows = st.rule.action.params["rows"]
        count = len(m.entries())
        pages = math.ceil(count / rows)
        final = m.token or ""
        sid = rewrite.split_id(final, rows, body)
        total = _content_range_total(resp) or count
        m.keep_page(0, rows, rewrite.mint_page_token(sid, 1, pages), truncated=True)
        if view.protocol == "exchange":
            resp.headers["Content-Range"] = f"rows 0-{rows - 1}; total={total}"
        self._keep(
            sid,
            _Split(
                rule=st.rule.name,
                target=view.path,
                protocol=view.protocol,
                status=resp.status_code,
                reason=resp.reason,
                headers=[
                    (k, v)
                    for k, v in resp.headers.fields
                    if k.lower() not in (b"content-length", b"content-range")
                ],
                body=body,
                rows=rows,
                count=count,
                total=total,
                pages=pages,
                final=final,
                server=resp.headers.get("server", ""),
                dav_prefix=rewrite.dav_prefix_of(m.root) if view.protocol == "rfc6578" else None,
            ),
        )
        return (
            f"split the {count} entries into {pages} pages of {rows}; page 1 now",
            {"page": 1, "pages": pages, "rows": rows, "entries": count},
        )

    def _keep(self, sid: str, split: _Split) -> None:
        """Keep a split answer for its follow-up pages; the least recently used go first when
        the kept ones cost more than _KEEP_BYTES or outnumber _MAX_SPLITS (the newest stays)."""
        split.size = _cost(split.body, split.headers) + len(split.final)
        old = self.splits.pop(sid, None)
        if old is not None:
            self.split_bytes -= old.size
        self.served_out.pop(sid, None)
        self.gone.pop(sid, None)
        self.splits[sid] = split
        self.split_bytes += split.size
        while len(self.splits) > 1 and (
            self.split_bytes > _KEEP_BYTES or len(self.splits) > _MAX_SPLITS
        ):
            gone_id = next(iter(self.served_out or self.splits))  # served in full: those go first
            why = (
                f"the split answers kept held more than {_KEEP_BYTES // MiB} MiB"
                if self.split_bytes > _KEEP_BYTES
                else f"more than {_MAX_SPLITS} split answers were kept"
            )
            self._drop(gone_id, why)

    def _drop(self, sid: str, why: str) -> None:
        split = self.splits.pop(sid)
        self.served_out.pop(sid, None)
        self.split_bytes -= split.size
        self._let_go(sid, split, why)

    def _let_go(self, sid: str, split: _Split, why: str) -> None:
        """Forget a split answer's body, but not that its page tokens were ours."""
        self.gone[sid] = _Gone(
            split.rule, split.target, split.protocol, split.server, split.dav_prefix, why
        )
        _trim(self.gone, sid, _MAX_GONE)

    def _continue_split(self, flow: http.HTTPFlow, view: FlowView) -> None:
        """The client asks with a token a split page handed out: answer the next page, or, once
        the split answer is let go, reject the token as the server would an expired one (the
        client starts over, as after any rejected token, and the fault event says why)."""
        ref = rewrite.read_page_token(view.sent_token or "") if view.manifest else None
        if ref is None:
            return
        sid, page, pages = ref
        split = self.splits.get(sid)
        if split is not None and split.target == view.path and split.pages == pages:
            self.splits.move_to_end(sid)
            self._serve_page(flow, sid, split, page + 1)
            if page + 1 == pages:
                # The client has it all: kept only for a retry of the last page, a few at most,
                # so that the answers of finished walks do not fill the budget.
                self.served_out[sid] = None
                self.served_out.move_to_end(sid)
                while len(self.served_out) > _MAX_DONE:
                    self._drop(next(iter(self.served_out)), "it was served to its last page")
            return
        gone = self.gone.get(sid)
        if gone is not None and gone.target == view.path:
            self._reject_gone(flow, view, gone, page + 1, pages)

    def _serve_page(self, flow: http.HTTPFlow, sid: str, split: _Split, k: int) -> None:
        start, stop = (k - 1) * split.rows, min(split.count, k * split.rows)
        last = k == split.pages
        token = split.final if last else rewrite.mint_page_token(sid, k, split.pages)
        m = rewrite.parse(split.body, split.protocol, split.target)
        m.keep_page(start, stop, token, truncated=not last)
        headers = list(split.headers)
        if split.protocol == "exchange":
            remaining = split.total - start
            headers.append(
                (b"Content-Range", f"rows 0-{stop - start - 1}; total={remaining}".encode())
            )
        resp = http.Response.make(split.status, m.tobytes(), headers)
        resp.reason = split.reason
        flow.response = resp
        self._made_up(flow)
        self.ended.add(flow.id)  # the page is the fault: no other rule applies to it
        st = self.states.get(split.rule)
        if st is not None:
            st.continued += 1
            self._record(
                flow,
                st,
                st.candidates,
                f"page {k} of {split.pages} of the split answer, served without the server",
                page=k,
                pages=split.pages,
            )

    def _reject_gone(
        self, flow: http.HTTPFlow, view: FlowView, gone: _Gone, k: int, pages: int
    ) -> None:
        st = self.states.get(gone.rule)
        status, reason, body, ctype, _style = self._rejection(
            gone.rule,
            upstream_of(flow),
            view.sent_token or "",
            gone.protocol,
            "auto",
            gone.server,
            lambda: gone.dav_prefix,
        )
        headers = [(b"Content-Type", ctype.encode())]
        if gone.server:
            headers.append((b"Server", gone.server.encode()))
        resp = http.Response.make(status, body, headers)
        resp.reason = reason
        resp.http_version = flow.request.http_version
        flow.response = resp
        self._made_up(flow)
        self.ended.add(flow.id)
        word = "collblob" if gone.protocol == "exchange" else "sync-token"
        self._note(
            flow,
            gone.rule,
            "paginate",
            REQUEST,
            st.candidates if st is not None else 0,
            f"page {k} of {pages} of a split answer is no longer kept ({gone.why}): rejected "
            f"its {word} with {status}, as a server does a token it no longer knows",
            page=k,
            pages=pages,
            status=status,
            token=view.sent_token,
            evicted=True,
        )

    # ---------------------------------------------------------------- transport helpers
    def _made_up(self, flow: http.HTTPFlow) -> None:
        """This addon answered in the server's place: the cache must not store the answer as
        the upstream's (repl.synthetic, the suite's convention), nor this addon keep it as one."""
        self.ours.add(flow.id)
        flow.metadata[SYNTHETIC_KEY] = "faults"

    def _kill(self, flow: http.HTTPFlow) -> None:
        if flow.killable:
            flow.kill()

    def _linger0(self, flow: http.HTTPFlow) -> bool:
        """Make the client connection's close an abort (TCP RST). mitmproxy has no API for it:
        this reaches into the proxy server's transports (notes §1.11), so it fails soft.
        Not for HTTP/2 or 3, where the connection carries other streams: there a kill resets
        the stream only, and that is the fault."""
        if not flow.request.http_version.startswith("HTTP/1"):
            return False
        try:
            handler = ctx.master.addons.get("proxyserver").connections[flow.client_conn.id]
            writer = handler.transports[flow.client_conn].writer
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (AttributeError, KeyError, OSError, TypeError):
            return False
        return True

    async def _hang(self, flow: http.HTTPFlow, seconds: float | None) -> str:
        """Wait until the client closes its side, the cap passes, or the scenario changes."""
        gen = self.generation
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            if not flow.client_conn.state & ConnectionState.CAN_READ:
                return "the client gave up"
            if self.generation != gen:
                return "the scenario changed"
            if deadline is not None and time.monotonic() >= deadline:
                return f"closed after the {seconds:g} s cap"
            await asyncio.sleep(_HANG_POLL)

    def _answer(
        self,
        flow: http.HTTPFlow,
        code: int,
        body: str | None,
        retry_after: str | None,
        extra: dict[str, str] | None,
    ) -> None:
        """Answer in the server's place (or over its answer, at the response phase)."""
        text = body if body is not None else f"{code} {status_codes.RESPONSES.get(code, '')}"
        headers: list[tuple[bytes, bytes]] = [(b"Content-Type", b"text/plain; charset=utf-8")]
        if retry_after is not None:
            headers.append((b"Retry-After", retry_after.encode()))
        for k, v in (extra or {}).items():
            headers.append((k.encode(), v.encode()))
        resp = http.Response.make(code, (text.rstrip("\n") + "\n").encode(), headers)
        if code in _REASONS:
            resp.reason = _REASONS[code]
        if flow.response is not None:  # response phase: replace the server's answer
            old = flow.response
            resp.http_version = old.http_version
            resp.timestamp_start, resp.timestamp_end = old.timestamp_start, old.timestamp_end
        else:
            self._made_up(flow)
        flow.response = resp

    def _finish_truncation(self, flow: http.HTTPFlow) -> None:
        st, n, cut, rst = self.cutters.pop(flow.id)
        if flow.response is not None:
            # Keep what the client got, so the flow file and the summary tell the truth.
            flow.response.raw_content = bytes(cut.passed)
            self._refresh(flow)
        done = rst and self._linger0(flow)
        end = "a TCP RST" if done else "a FIN"
        self._record(
            flow,
            st,
            n,
            f"passed {len(cut.passed)} of {cut.seen} body bytes, then {end}",
            bytes=len(cut.passed),
            of=cut.seen,
            rst=done,
        )
        self.ended.add(flow.id)
        self._kill(flow)

    # ---------------------------------------------------------------- what the flow is
    def _view(self, flow: http.HTTPFlow, phase: str) -> FlowView:
        s = _summary(flow)
        req = s.get("request") or {}
        method = flow.request.method.upper()
        if s:
            kind = s.get("kind", "other")
            cond = req.get("condition") or {}
            conditional = bool(cond)
        else:
            rule = exchange.METHODS.get(method)
            kind = rule.kind if rule is not None else "other"
            h = flow.request.headers
            conditional = any(x in h for x in ("if", "if-match", "if-none-match"))
        manifest = bool(req.get("manifest"))
        view = FlowView(
            phase=phase,
            method=method,
            path=normalise_path(flow.request.path),
            kind=kind,
            protocol=self._protocol(flow, s, phase),
            headers={k.lower(): v for k, v in flow.request.headers.items()},
            manifest=manifest,
            initial=bool(req.get("initial")) if manifest else None,
            sent_token=req.get("token") if manifest else None,
            conditional=conditional and kind in _WRITES,
            tokens_seen=self.tokens_seen,
        )
        key = _collection_key(flow, view)
        count = self.coll_tokens.get(key)
        view.collection_tokens = count.n if count is not None else 0
        resp = flow.response
        if phase == REQUEST or resp is None:
            return view
        view.status = resp.status_code
        view.response_headers = frozenset(k.lower() for k in resp.headers)
        if phase == RESPONSEHEADERS:
            view.has_body = (
                resp.raw_content is None  # still to come from the server, not set by an addon
                and resp.headers.get("content-length", "").strip() != "0"
                and resp.status_code not in (204, 304)
            )
            return view
        r = s.get("response") or {}
        if r.get("manifest"):
            view.received_token = r.get("token")
            view.entries = tuple(e["type"] for e in r.get("entries") or [])
        view.invalid_token = bool(r.get("invalid_token"))
        view.older_answers = len(self._earlier(flow, view))
        view.other_tokens = any(k != key for k in self.last_tokens)
        return view

    def _protocol(self, flow: http.HTTPFlow, s: dict[str, Any], phase: str) -> str:
        """The flow's protocol; a write's is settled by its answer, so before that it is read
        from its condition, or else from what this upstream spoke before."""
        if s:
            if s.get("protocol") == "rfc6578" or (phase == RESPONSE and s.get("response")):
                return str(s.get("protocol", "exchange"))
            req = s.get("request") or {}
            cond = req.get("condition") or {}
            if req.get("manifest") or cond.get("tags") or cond.get("uids"):
                return "exchange"
            if cond.get("if_match") not in (None, "*"):
                return "rfc6578"
        elif flow.request.method.upper() == "REPORT":
            return "rfc6578"
        return self.upstream_protocol.get(upstream_of(flow), "exchange")

    def _remember(self, flow: http.HTTPFlow, view: FlowView) -> None:
        """Keep the server's own manifest answers for stale_token and swap_token."""
        if not self.keep_history or view.received_token is None:
            return
        if not from_upstream(flow):
            return  # another addon's answer (cache, replay, this one), not the server's
        if view.status not in (206, 207) or flow.response is None:
            return
        key = _collection_key(flow, view)
        hkey = _history_key(key, view)
        q = self.history.get(hkey)
        if q is None:
            q = self.history[hkey] = deque()
        size = _size(flow.response)
        q.append((flow.id, flow.response.copy(), size))
        self.history_bytes += size
        self.history.move_to_end(hkey)
        # The oldest answers go first: this collection's beyond what stale_token reaches back,
        # then whole collections, least recently answered first; the newest answer always stays.
        while len(q) > self.keep_history + 1 or (self.history_bytes > _KEEP_BYTES and len(q) > 1):
            self.history_bytes -= q.popleft()[2]
        while len(self.history) > 1 and (
            len(self.history) > _MAX_COLLECTIONS or self.history_bytes > _KEEP_BYTES
        ):
            _, old = self.history.popitem(last=False)
            self.history_bytes -= sum(size for _, _, size in old)
        self.last_tokens[key] = view.received_token
        _trim(self.last_tokens, key, _MAX_COLLECTIONS)

    def _earlier(self, flow: http.HTTPFlow, view: FlowView) -> list[http.Response]:
        """The server's earlier answers for this flow's collection to the same kind of manifest
        (initial or incremental), oldest first: an incremental answer handed to an initial sync
        would read as "everything was deleted", which no server says by mistake."""
        q = self.history.get(_history_key(_collection_key(flow, view), view), ())
        return [r for fid, r, _ in q if fid != flow.id]

    def _learn(self, flow: http.HTTPFlow) -> None:
        """After the answer: which tokens were seen, what this upstream speaks, how it rejects."""
        s = _summary(flow)
        if not s:
            return
        req = s.get("request") or {}
        r = s.get("response") or {}
        up = upstream_of(flow)
        if req.get("manifest") or r.get("tag") or r.get("uid"):
            self.upstream_protocol[up] = str(s.get("protocol", "exchange"))
            _trim(self.upstream_protocol, up, _MAX_UPSTREAMS)
        if (
            r.get("invalid_token")
            and s.get("protocol") == "rfc6578"
            and flow.id not in self.ours
            and not any(f.get("action") == "invalid_token" for f in self.records.get(flow.id, []))
            and flow.response is not None
        ):
            body = flow.response.content or b""
            if len(body) <= _MAX_STYLE_BODY:  # else the generic valid-sync-token error serves
                self.styles[up] = (
                    flow.response.status_code,
                    flow.response.reason,
                    body,
                    flow.response.headers.get("content-type", "text/xml; charset=utf-8"),
                )
                _trim(self.styles, up, _MAX_UPSTREAMS)
        if self.watched:
            for tok in (req.get("token"), r.get("token")):
                if tok in self.watched:
                    self.tokens_seen.add(tok)
        if self.count_to and r.get("manifest") and r.get("token"):
            key = f"{up}{normalise_path(flow.request.path)}"
            count = self.coll_tokens.get(key)
            if count is None:
                count = self.coll_tokens[key] = _Count()
            count.add(r["token"], self.count_to)
            _trim(self.coll_tokens, key, _MAX_COLLECTIONS)

    # ---------------------------------------------------------------- records
    def _record(
        self, flow: http.HTTPFlow, st: RuleState, n: int, detail: str, **effect: Any
    ) -> None:
        """A fault happened: on the flow (metadata, mark, comment), in the log, in the console."""
        a = st.rule.action
        self._note(flow, st.rule.name, a.type, a.phase, n, detail, **effect)

    def _note(
        self,
        flow: http.HTTPFlow,
        rule: str,
        action: str,
        phase: str,
        n: int,
        detail: str,
        **effect: Any,
    ) -> None:
        rec: dict[str, Any] = {
            "rule": rule,
            "action": action,
            "phase": phase,
            "occurrence": n,
            "method": flow.request.method.upper(),
            "target": normalise_path(flow.request.path),
            "detail": detail,
            **effect,
        }
        self.records.setdefault(flow.id, []).append(rec)
        while len(self.records) > _MAX_FLOWS:
            self.records.pop(next(iter(self.records)))
        if not flow.marked:
            flow.marked = MARK
        line = f"⚡ fault {rule}: {detail}"
        flow.comment = f"{flow.comment}\n{line}" if flow.comment else line
        self._attach(flow)
        logger.info(f"fault {rule}: {rec['method']} {rec['target']}: {detail}")

    def _attach(self, flow: http.HTTPFlow) -> None:
        """Put the flow's faults (again) into its summary, which Decode may have replaced."""
        recs = self.records.get(flow.id)
        if not recs:
            return
        s = flow.metadata.get(META_KEY)
        if not isinstance(s, dict):
            s = flow.metadata[META_KEY] = {}
        s["fault"] = [dict(r) for r in recs]

    def _finish(self, flow: http.HTTPFlow) -> None:
        """The flow is over: its faults go to the event log, numbered before the tracker's
        events of the same flow (Track comes next), and once the summary is final, so that an
        event's protocol is the one the answer settled."""
        self._attach(flow)
        track = _addon("track")
        if track is not None:
            for rec in self.records.get(flow.id, []):
                track.emit(flow, "fault", **rec)
        self._forget(flow)

    def _forget(self, flow: http.HTTPFlow) -> None:
        self.records.pop(flow.id, None)
        self.ended.discard(flow.id)
        self.ours.discard(flow.id)
        self.cutters.pop(flow.id, None)

    def _refresh(self, flow: http.HTTPFlow) -> None:
        """Have Decode read the changed answer again; what other addons attached to the summary
        (the cache's record, say) stays, as Decode writes a new summary from scratch."""
        decode = _addon("decode")
        if decode is not None:
            before = flow.metadata.get(META_KEY)
            decode.refresh(flow)
            after = flow.metadata.get(META_KEY)
            if isinstance(before, dict) and isinstance(after, dict) and after is not before:
                for k, v in before.items():
                    if k not in after and k not in SUMMARY_KEYS:
                        after[k] = v
        self._attach(flow)

    # ---------------------------------------------------------------- commands
    @command.command("repl.faults.list")
    def list_rules(self) -> str:
        """The rules of the loaded scenario, with their counters."""
        sc = self.scenario
        if sc is None:
            return "no fault scenario loaded (set repl_faults to a YAML file)"
        head = f"scenario {sc.path}" + (f": {sc.description}" if sc.description else "")
        rows = [["rule", "state", "action", "matched", "injected", "skipped", "limited", "limits"]]
        for st in self.states.values():
            r = st.rule
            limits = []
            if r.times is not None:
                limits.append(f"times {r.times} ({max(0, r.times - st.injected)} left)")
            if r.duration is not None:
                limits.append(f"duration {r.duration:g} s")
            rows.append(
                [
                    r.name,
                    "on" if st.enabled else "off",
                    r.action.describe(),
                    str(st.candidates),
                    str(st.injected) + (f" (+{st.continued} pages)" if st.continued else ""),
                    str(st.skipped),
                    str(st.limited),
                    ", ".join(limits) or "-",
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            head,
            *(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                for row in rows
            ),
        ]
        return "\n".join(lines)

    def counters(self) -> dict[str, dict[str, Any]]:
        """Per rule: enabled, matched, injected, skipped, limited, continued (for tests/tools)."""
        return {
            name: {
                "enabled": st.enabled,
                "matched": st.candidates,
                "injected": st.injected,
                "skipped": st.skipped,
                "limited": st.limited,
                "continued": st.continued,
            }
            for name, st in self.states.items()
        }

    def _state(self, rule: str) -> RuleState:
        st = self.states.get(rule)
        if st is None:
            names = ", ".join(self.states) or "none (no scenario loaded)"
            raise exceptions.CommandError(f"no fault rule {rule!r}; rules: {names}")
        return st

    @command.command("repl.faults.enable")
    def enable(self, rule: str) -> str:
        """Turn a rule of the loaded scenario on."""
        st = self._state(rule)
        st.enabled = True
        self._index()
        return f"fault rule {rule} enabled"

    @command.command("repl.faults.disable")
    def disable(self, rule: str) -> str:
        """Turn a rule of the loaded scenario off (its counters are kept)."""
        st = self._state(rule)
        st.enabled = False
        self._index()
        return f"fault rule {rule} disabled"

    @command.command("repl.faults.reload")
    def reload(self) -> str:
        """Read the repl_faults file again: new rules, counters from zero, split answers gone."""
        path = ctx.options.repl_faults
        if not path:
            raise exceptions.CommandError("no fault scenario: set repl_faults first")
        try:
            sc = load_scenario(os.path.expanduser(path))
        except ScenarioError as e:
            raise exceptions.CommandError(f"repl_faults: {e} (the old scenario stays)") from None
        self._install(sc)
        return f"reloaded {sc.path}: {len(sc.rules)} rules"


# ------------------------------------------------------------------------------ helpers


def _summary(flow: http.HTTPFlow) -> dict[str, Any]:
    return summary_now(flow) or {}


def _collection_key(flow: http.HTTPFlow, view: FlowView) -> str:
    return f"{upstream_of(flow)}{view.path}"


def _history_key(collection: str, view: FlowView) -> str:
    return f"{collection} {'initial' if view.initial else 'incremental'}"


def _addon(name: str) -> Any:
    try:
        return ctx.master.addons.get(name)
    except AttributeError:  # no master (a bare unit test)
        return None


def _trim(d: OrderedDict[str, Any], key: str, most: int) -> None:
    """``key`` was just used: it goes last, and the least recently used beyond ``most`` go."""
    d.move_to_end(key)
    while len(d) > most:
        d.popitem(last=False)


def _cost(body: bytes, fields: Iterable[tuple[bytes, bytes]]) -> int:
    """What keeping an answer costs, in bytes (roughly: its body and headers, and objects)."""
    return len(body) + sum(len(k) + len(v) for k, v in fields) + _OVERHEAD


def _size(resp: http.Response) -> int:
    return _cost(resp.raw_content or b"", resp.headers.fields)


def _content_length(resp: http.Response) -> int | None:
    v = resp.headers.get("content-length", "").strip()
    return int(v) if v.isdigit() and len(v) <= 18 else None


def _content_range_total(resp: http.Response) -> int | None:
    v = resp.headers.get("content-range", "")
    _, _, total = v.partition("total=")
    total = total.strip()
    return int(total) if total.isdigit() and len(total) <= 18 else None


def _looks_like_xandikos(token: str, server: str) -> bool:
    """Xandikos answers an invalid sync-token with 412 (Radicale and most others with 403); its
    tokens are bare 40-hex git tree ids."""
    if "xandikos" in server.lower():
        return True
    t = token.strip()
    return len(t) == 40 and all(c in "0123456789abcdef" for c in t)
