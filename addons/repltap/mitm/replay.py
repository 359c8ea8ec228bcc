"""The replay addon: answers clients from recordings (``repl_replay``), matching what a request
means to a replication server rather than its bytes.

mitmproxy's own server replay keys on the raw body and pops answers first in, first out, so a
client that resumes from another token, polls more often than recorded, or writes its XML with
other prefixes falls off the recording (notes §4.4). Here a request is matched on its decoded
meaning (``flow.metadata["repl"]``, never the body again):

- manifests: method, collection, protocol, the token sent (any recorded token can be resumed
  from), the query scope it is bound to, the acknowledged tags (as a set), Range rows, DAV:limit,
  sync-level, and a PROPFIND's Depth;
- writes (PUT, DELETE, MOVE, COPY, MKCOL, PROPPATCH, POST): method, target and the condition
  (If state tokens, If-Match, If-None-Match, If-Schedule-Tag-Match: the decoded
  condition, not its spelling), Destination and Overwrite;
- anything else: method, target, URL query, condition, a PROPFIND's Depth; the raw body only when
  the decoder could not read it.

Answers for one such meaning form a WireMock-style scenario: the same request again gets the next
recorded answer and then keeps getting the last one, instead of running dry. The scenario's state
is a cursor per client on the recorded timeline (the recordings one after the other), set by the
last answer the client got; a request is answered with the earliest recorded answer after the
cursor, or else the latest one before it. So requests that carry no token (downloads, writes)
are answered for the state the client has reached: a client that resumed from a mid-chain token
downloads the versions recorded after that point, not the first ones; and a client that starts
over gets the recording again from the start.

Modes: ``strict`` answers an unmatched request with a 500 naming the closest recorded requests,
and vetoes every upstream connection (``server_connect``); ``forward`` lets it go upstream.
Each decision is a ``replay`` event (``hit``, ``miss``, ``forward``) and is kept in
``flow.metadata["repl.replay"]``; answers given here carry ``flow.metadata["repl.synthetic"] =
"replay"`` (and hits ``is_replay = "response"``), the suite's mark for "no upstream said this".

Hook order (addons/repl.py): right after Decode, so the request is decoded, and before the cache
and fault injector, which leave a flow that already has a response alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitmproxy import command, ctx, exceptions, http
from mitmproxy.proxy import server_hooks

from .. import protocol
from ..offline import read_flows
from ..protocol.model import normalise_path, short_token
from ..summary import WRITE_KINDS
from ..tracker import client_id
from .cache import SYNTHETIC_KEY
from .decode import META_KEY, upstream_of
from .record import SECRET_PARAM

logger = logging.getLogger(__name__)

MODES = ("strict", "forward")
REPLAY_KEY = "repl.replay"  # flow.metadata key: what the replayer did with this flow
MISS_STATUS = 500
COMMENT_MARK = "⏵"
_MAX_PENDING = 10_000
_CLOSEST = 3
# Fields that make two requests "far apart" for the list of closest candidates.
_WEIGHT = {"method": 8, "target": 8, "protocol": 4, "token": 2}


# ------------------------------------------------------------------------------ meaning


def _digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest()[:16] if data else None


def _body(message: http.Message) -> bytes | None:
    try:
        return message.get_content(strict=False)
    except ValueError:
        return message.raw_content


def meaning(
    kind: str, proto: str, rq: dict[str, Any], flow: http.HTTPFlow
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(hard, soft) fields of a request: hard ones must be equal for a recorded answer to be
    used; soft ones (upstream, write bodies) only break ties between recorded answers."""
    r = flow.request
    hard: dict[str, Any] = {
        "method": r.method.upper(),
        "target": rq.get("target") or normalise_path(r.path),
    }
    query = sorted((k, v) for k, v in r.query.items(multi=True) if not SECRET_PARAM.fullmatch(k))
    if query:
        hard["url_query"] = [list(p) for p in query]
    soft: dict[str, Any] = {"upstream": upstream_of(flow)}
    if rq.get("manifest"):
        hard["protocol"] = proto
        hard["token"] = rq.get("token")
        hard["acknowledged"] = sorted(set(rq.get("acknowledged") or []))
        for name, field in (
            ("scope", "query"),
            ("range", "range"),
            ("limit", "limit"),
            ("sync_level", "sync_level"),
        ):
            if rq.get(field) is not None:
                hard[name] = rq[field]
        if hard["method"] == "PROPFIND":
            hard["depth"] = rq.get("depth")
        return hard, soft
    cond = {
        k: sorted(v) if isinstance(v, list) else v
        for k, v in (rq.get("condition") or {}).items()
        if k != "raw_if"  # its spelling does not matter, the tokens in it do
    }
    if cond:
        hard["condition"] = cond
    if kind in WRITE_KINDS:
        if rq.get("destination"):
            hard["destination"] = normalise_path(rq["destination"])
        if rq.get("overwrite"):
            hard["overwrite"] = rq["overwrite"].upper()
    if hard["method"] == "PROPFIND":
        hard["depth"] = rq.get("depth")
    digest = _digest(_body(r))
    if rq.get("undecodable"):
        hard["body"] = digest  # no meaning could be read: fall back on the bytes
    elif digest:
        soft["body"] = digest
    return hard, soft


def key_of(hard: dict[str, Any]) -> str:
    """The lookup key of a request's hard fields."""
    return json.dumps(hard, sort_keys=True, ensure_ascii=False, default=str)


def describe(hard: dict[str, Any]) -> str:
    """A request's meaning in one line: ``SEARCH /Inbox/: collblob toCT…Aw==, rows=0-1``."""
    word = "sync-token" if hard.get("protocol") == "rfc6578" else "collblob"
    parts: list[str] = []
    if "token" in hard:
        parts.append(f"{word} {short_token(hard['token'], 6)}")
        if hard.get("acknowledged"):
            parts.append(f"{len(hard['acknowledged'])} acknowledged")
        if hard.get("range"):
            parts.append("rows=" + ",".join(hard["range"]))
        if hard.get("limit") is not None:
            parts.append(f"limit {hard['limit']}")
    cond = hard.get("condition") or {}
    bits = [*cond.get("tags", []), *cond.get("uids", [])]
    bits += [f"Not {t}" for t in (*cond.get("not_tags", []), *cond.get("not_uids", []))]
    for k, label in (("if_match", "If-Match"), ("if_none_match", "If-None-Match")):
        if cond.get(k):
            bits.append(f"{label} {cond[k]}")
    if bits:
        parts.append("if " + " ".join(short_token(str(b), 8) for b in bits))
    if hard.get("destination"):
        parts.append(f"to {hard['destination']}")
    if hard.get("depth") is not None:
        parts.append(f"Depth {hard['depth']}")
    head = f"{hard['method']} {hard['target']}"
    return head + (": " + ", ".join(parts) if parts else "")


def differences(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    """The hard fields in which a recorded request (``have``) differs from ``want``."""
    return sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))


def _distance(want: dict[str, Any], have: dict[str, Any]) -> int:
    return sum(_WEIGHT.get(k, 1) for k in differences(want, have))


# ------------------------------------------------------------------------------ the store


@dataclass
class Answer:
    """One recorded flow that can answer a request."""

    flow: http.HTTPFlow
    index: int  # position on the replay timeline (the recordings one after the other)
    source: str  # the recording's file name
    number: int  # 1-based position of the flow in its recording
    key: str
    hard: dict[str, Any]
    soft: dict[str, Any]
    served: int = 0


def recorded_view(flow: http.HTTPFlow) -> tuple[str, str, dict[str, Any]]:
    """(kind, protocol, request dict) of a recorded flow: its stored summary, or decoded now
    for a flow recorded without repltap."""
    s = flow.metadata.get(META_KEY)
    if isinstance(s, dict) and s.get("v") == 1 and isinstance(s.get("request"), dict):
        return str(s["kind"]), str(s["protocol"]), s["request"]
    req = protocol.decode_request(
        flow.request.method, flow.request.path, flow.request.headers, _body(flow.request)
    )
    return req.kind, req.protocol, req.to_dict()


def pick(cands: list[Answer], cursor: int) -> Answer:
    """The answer for a request whose recorded answers are ``cands`` (in recorded order), for a
    client that has reached ``cursor`` on the timeline (the position of its last answer).

    The earliest answer recorded after the cursor: what the server said next, in the state the
    client is in. When none is left, the latest one up to the cursor, which keeps coming (the
    same poll again and again gets the last recorded answer). Moving the cursor is the whole
    scenario state, so a client that starts over, or resumes from a mid-chain token, gets the
    answers of that point of the recording again; nothing is used up.
    """
    for a in cands:
        if a.index > cursor:
            return a
    return cands[-1]


# ------------------------------------------------------------------------------ the addon


class Replay:
    """Answer requests from recordings, by replication meaning; strict or forward on a miss."""

    def __init__(self) -> None:
        self.mode = "strict"
        self.paths: list[str] = []
        self.answers: list[Answer] = []
        self.by_key: dict[str, list[Answer]] = {}
        self.cursor: dict[str, int] = {}  # client -> timeline position of its last answer
        self.skipped = 0  # recorded flows that cannot answer (no response, or a replay miss)
        self.counts = dict.fromkeys(("hit", "repeat", "miss", "forward", "vetoed"), 0)
        self.pending: dict[str, str] = {}  # flow id -> the comment line to add in response

    # ---------------------------------------------------------------- options

    def load(self, loader: Any) -> None:
        loader.add_option(
            "repl_replay",
            Sequence[str],
            [],
            "Recordings (flow files) to answer clients from, matched by replication meaning: "
            "method, collection, token sent, acknowledged tags, range or limit; for writes the "
            "target and its condition. Repeat the option for several recordings. In reverse "
            "mode add --set connection_strategy=lazy.",
        )
        loader.add_option(
            "repl_replay_mode",
            str,
            "strict",
            "strict: a request with no recorded answer gets a 500 naming the closest recorded "
            "requests, and no upstream connection is ever opened; forward: it goes upstream.",
            choices=MODES,
        )

    def configure(self, updated: set[str]) -> None:
        if "repl_replay_mode" in updated:
            mode = ctx.options.repl_replay_mode
            if mode not in MODES:
                raise exceptions.OptionsError(
                    f"repl_replay_mode must be one of {', '.join(MODES)}, not {mode!r}"
                )
            self.mode = mode
        if "repl_replay" in updated:
            self._load(list(ctx.options.repl_replay))
        if updated & {"repl_replay", "repl_replay_mode", "connection_strategy", "mode"}:
            self._check_strategy()

    def _check_strategy(self) -> None:
        if not self.paths or self.mode != "strict":
            return
        if "connection_strategy" not in ctx.options or ctx.options.connection_strategy != "eager":
            return  # no proxy server loaded (tests, offline tools), or the lazy strategy
        if any(str(m).startswith("reverse:") for m in ctx.options.mode):
            # Eager reverse mode connects before any hook runs and drops the client when the
            # server is away (notes §0.2): strict replay could neither answer nor stay offline.
            raise exceptions.OptionsError(
                "repl_replay_mode=strict in reverse mode needs --set connection_strategy=lazy: "
                "with eager, mitmproxy connects to the upstream before repltap can answer, "
                "and drops the client when there is no server"
            )
        logger.warning(
            "repl_replay (strict): add --set connection_strategy=lazy; with eager, HTTPS "
            "clients (CONNECT) make mitmproxy connect upstream before repltap can answer"
        )

    def _load(self, paths: list[str]) -> None:
        answers: list[Answer] = []
        skipped = 0
        for path in paths:
            p = Path(path).expanduser()
            try:
                flows = read_flows(p)
            except OSError as e:
                raise exceptions.OptionsError(
                    f"repl_replay: cannot read {p}: {e.strerror or e}"
                ) from e
            except exceptions.FlowReadException as e:
                raise exceptions.OptionsError(f"repl_replay: {p} is not a flow file: {e}") from e
            for n, f in enumerate(flows, 1):
                mark = f.metadata.get(REPLAY_KEY)
                if f.response is None or (isinstance(mark, dict) and mark.get("kind") == "miss"):
                    skipped += 1  # nothing a server said: never make an answer up
                    continue
                kind, proto, rq = recorded_view(f)
                hard, soft = meaning(kind, proto, rq, f)
                answers.append(Answer(f, len(answers), p.name, n, key_of(hard), hard, soft))
        self.paths = paths
        self.answers = answers
        self.by_key = {}
        for a in answers:
            self.by_key.setdefault(a.key, []).append(a)
        self.skipped = skipped
        self.reset()
        if paths:
            logger.info(
                "repl_replay: %d recorded answers for %d distinct requests from %s%s",
                len(answers),
                len(self.by_key),
                ", ".join(Path(p).name for p in paths),
                f" ({skipped} flows without an answer skipped)" if skipped else "",
            )

    # ---------------------------------------------------------------- hooks

    def request(self, flow: http.HTTPFlow) -> None:
        if not self.paths:
            return
        if flow.response or flow.error or not flow.live:
            return
        kind, proto, rq = self._live_view(flow)
        hard, soft = meaning(kind, proto, rq, flow)
        cands = self.by_key.get(key_of(hard))
        client = self._client(flow)
        where = self._where(flow, hard)
        if cands:
            best = max(self._soft_score(a, soft) for a in cands)
            a = pick([c for c in cands if self._soft_score(c, soft) == best], self._at(client))
            self._serve(flow, a, client, where)
        elif self.mode == "strict":
            self._miss(flow, hard, where)
        else:
            self.counts["forward"] += 1
            closest = self._closest(hard)
            mark = {"kind": "forward", "mode": self.mode, "closest": closest}
            flow.metadata[REPLAY_KEY] = mark
            self._emit(flow, "forward", where, closest=closest)
            self._later_comment(flow, f"{COMMENT_MARK} replay: no recorded answer; forwarded")

    def response(self, flow: http.HTTPFlow) -> None:
        line = self.pending.pop(flow.id, None)
        if line and line not in (flow.comment or ""):
            # After Decode has put the summary in the comment, so that it stays the first line.
            flow.comment = f"{flow.comment}\n{line}" if flow.comment else line

    def error(self, flow: http.HTTPFlow) -> None:
        self.pending.pop(flow.id, None)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if not self.paths or self.mode != "strict":
            return
        # Every request is answered in the request hook; a connection now can only come from
        # something before it (eager strategy, CONNECT with upstream_cert): refuse it.
        data.server.error = "repltap replay (strict mode) opens no upstream connection"
        self.counts["vetoed"] += 1
        addr = data.server.address
        logger.warning(
            "repl_replay (strict): refused an upstream connection to %s; use "
            "--set connection_strategy=lazy (and upstream_cert=false for HTTPS)",
            f"{addr[0]}:{addr[1]}" if addr else "?",
        )

    def done(self) -> None:
        if not self.paths:
            return
        never = sum(1 for a in self.answers if not a.served)
        logger.info(
            "repl_replay: %d answers served (%d of them again), %d misses, %d forwarded; "
            "%d of %d recorded answers never served",
            self.counts["hit"],
            self.counts["repeat"],
            self.counts["miss"],
            self.counts["forward"],
            never,
            len(self.answers),
        )

    # ---------------------------------------------------------------- decisions

    def _live_view(self, flow: http.HTTPFlow) -> tuple[str, str, dict[str, Any]]:
        s = flow.metadata.get(META_KEY)
        if isinstance(s, dict) and isinstance(s.get("request"), dict):
            return str(s["kind"]), str(s["protocol"]), s["request"]
        # Decode stores a summary only for replication requests, but decodes every request it
        # sees: use that rather than read the request again.
        decode = ctx.master.addons.get("decode")
        req = decode.request_of(flow) if decode is not None else None
        if req is None:
            req = protocol.decode_request(
                flow.request.method, flow.request.path, flow.request.headers, _body(flow.request)
            )
        return req.kind, req.protocol, req.to_dict()

    @staticmethod
    def _client(flow: http.HTTPFlow) -> str:
        peer = flow.client_conn.peername
        return client_id(peer[0] if peer else None, flow.request.headers.get("user-agent"))

    def _at(self, client: str) -> int:
        return self.cursor.get(client, -1)

    @staticmethod
    def _soft_score(a: Answer, soft: dict[str, Any]) -> int:
        return sum(1 for k, v in soft.items() if a.soft.get(k) == v)

    @staticmethod
    def _where(flow: http.HTTPFlow, hard: dict[str, Any]) -> dict[str, Any]:
        where: dict[str, Any] = {
            "method": hard["method"],
            "target": hard["target"],
            "upstream": upstream_of(flow),
        }
        if "token" in hard:
            where["collection"] = hard["target"]
            where["sent"] = hard["token"]
        return where

    def _serve(self, flow: http.HTTPFlow, a: Answer, client: str, where: dict[str, Any]) -> None:
        assert a.flow.response is not None
        repeat = a.served > 0
        a.served += 1
        self.cursor[client] = a.index
        self.counts["hit"] += 1
        self.counts["repeat"] += repeat
        mark = {
            "kind": "hit",
            "mode": self.mode,
            "recording": a.source,
            "number": a.number,
            "from_flow": a.flow.id,
            "repeat": repeat,
        }
        flow.metadata[REPLAY_KEY] = mark
        status = a.flow.response.status_code
        # Emitted before the response is set: the event's time is now, not the recorded one.
        self._emit(
            flow,
            "hit",
            where,
            status=status,
            recording=a.source,
            number=a.number,
            from_flow=a.flow.id,
            repeat=repeat,
        )
        resp = a.flow.response.copy()
        resp.refresh()  # Date, Expires, Last-Modified move to now, as in mitmproxy's replay
        flow.response = resp
        flow.is_replay = "response"
        flow.metadata[SYNTHETIC_KEY] = "replay"  # not the upstream's: the cache must not keep it
        again = ", again" if repeat else ""
        self._later_comment(
            flow,
            f"{COMMENT_MARK} replayed from {a.source} #{a.number} (flow {a.flow.id[:8]}{again})",
        )

    def _miss(self, flow: http.HTTPFlow, hard: dict[str, Any], where: dict[str, Any]) -> None:
        self.counts["miss"] += 1
        closest = self._closest(hard)
        flow.metadata[REPLAY_KEY] = {"kind": "miss", "mode": self.mode, "closest": closest}
        self._emit(flow, "miss", where, status=MISS_STATUS, closest=closest)
        flow.response = http.Response.make(
            MISS_STATUS,
            self._miss_text(hard, closest).encode("utf-8"),
            {"Content-Type": "text/plain; charset=utf-8", "Repltap-Replay": "miss"},
        )
        # The suite's mark for an answer no server gave: the cache (offline mode) must not take
        # this 500 for the upstream's and answer in its place, nor a fault treat it as one.
        flow.metadata[SYNTHETIC_KEY] = "replay"
        self._later_comment(
            flow, f"{COMMENT_MARK} replay miss (strict): no recorded answer; answered 500"
        )

    def _closest(self, hard: dict[str, Any]) -> list[dict[str, Any]]:
        """The recorded requests nearest to ``hard``, one per distinct meaning."""
        ranked = sorted(
            (_distance(hard, cands[0].hard), cands[-1].index, key)
            for key, cands in self.by_key.items()
        )
        out = []
        for _d, _i, key in ranked[:_CLOSEST]:
            a = self.by_key[key][-1]
            out.append(
                {
                    "request": describe(a.hard),
                    "differs": differences(hard, a.hard),
                    "recording": a.source,
                    "number": a.number,
                    "flow": a.flow.id,
                }
            )
        return out

    def _miss_text(self, hard: dict[str, Any], closest: list[dict[str, Any]]) -> str:
        lines = [
            f"repltap replay (strict): no recorded answer for {describe(hard)}",
            "",
            "closest recorded requests:" if closest else "the recordings hold no requests",
        ]
        for n, c in enumerate(closest, 1):
            lines.append(
                f"  {n}. {c['request']}  [differs in: {', '.join(c['differs']) or 'nothing'}]"
                f"  ({c['recording']} #{c['number']}, flow {c['flow'][:8]})"
            )
        if "token" in hard:
            word = "sync-tokens" if hard.get("protocol") == "rfc6578" else "collblobs"
            tokens = self.tokens_of(hard["target"])
            if tokens:
                shown = ", ".join(short_token(t, 6) for t in tokens[:12])
                more = f" and {len(tokens) - 12} more" if len(tokens) > 12 else ""
                lines += [
                    "",
                    f"{word} recorded for {hard['target']} (a client may resume from any): "
                    f"{shown}{more}",
                ]
        lines += [
            "",
            f"recordings: {', '.join(Path(p).name for p in self.paths)}; "
            "set repl_replay_mode=forward to send unmatched requests to the server",
        ]
        return "\n".join(lines) + "\n"

    def tokens_of(self, target: str) -> list[str | None]:
        """The tokens recorded clients sent for a collection, in recorded order."""
        seen: list[str | None] = []
        for a in self.answers:
            if a.hard.get("target") == target and "token" in a.hard:
                t = a.hard["token"]
                if t not in seen:
                    seen.append(t)
        return seen

    def _emit(self, flow: http.HTTPFlow, kind: str, where: dict[str, Any], **fields: Any) -> None:
        track = ctx.master.addons.get("track")
        if track is not None:
            track.emit(flow, "replay", kind=kind, mode=self.mode, **where, **fields)
        else:
            logger.debug("replay %s %s %s", kind, where, fields)

    def _later_comment(self, flow: http.HTTPFlow, line: str) -> None:
        if len(self.pending) >= _MAX_PENDING:
            self.pending.pop(next(iter(self.pending)))
        self.pending[flow.id] = line

    # ---------------------------------------------------------------- commands

    @command.command("repl.replay.reset")
    def reset(self) -> None:
        """Rewind every scenario: each recorded answer is new again, every client at the start."""
        for a in self.answers:
            a.served = 0
        self.cursor.clear()
        for k in self.counts:
            self.counts[k] = 0

    @command.command("repl.replay.status")
    def status(self) -> str:
        """What is being replayed: recordings, answers served and never served, misses, and
        the tokens of each collection a client may resume from."""
        if not self.paths:
            return "not replaying: set repl_replay=RECORDING"
        never = [a for a in self.answers if not a.served]
        c = self.counts
        lines = [
            f"replaying {', '.join(Path(p).name for p in self.paths)} ({self.mode} mode)",
            f"{len(self.answers)} recorded answers for {len(self.by_key)} distinct requests; "
            f"{c['hit']} served ({c['repeat']} again), {c['miss']} misses, "
            f"{c['forward']} forwarded, {c['vetoed']} upstream connections refused",
            f"{len(never)} recorded answers never served",
        ]
        targets = sorted({a.hard["target"] for a in self.answers if "token" in a.hard})
        for t in targets:
            toks = ", ".join(short_token(x, 6) for x in self.tokens_of(t))
            lines.append(f"  {t}: {toks}")
        return "\n".join(lines)


__all__ = ["MODES", "REPLAY_KEY", "Answer", "Replay", "describe", "key_of", "meaning", "pick"]
