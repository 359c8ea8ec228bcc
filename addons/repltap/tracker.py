"""The one place where replication state lives: token chains and tag histories.

What may live here: turning decoded flow summaries (``flow.metadata["repl"]``, see summary.py),
fed in the order the flows completed, into the events of the event-log contract (version 1):
``manifest``, ``token``, ``tag``, ``conflict``, ``invalid_token``, ``anomaly``; and the anomaly
catalogue. What may not: mitmproxy, I/O, parsing bodies. The same summaries fed live or from a
recording give the same events.

Identities (design.md, "the event log contract"):
- a collection is the upstream (host:port) + the normalised request path + the query scope a
  token is bound to (Exchange: the SQL's FROM/WHERE, spec §8.2 and §13.8; PROPFIND: its Depth);
- a resource is the upstream + the normalised path of its href;
- a client is its address (IP) and User-Agent. Two instances of one program on one host share an
  identity; the token checks follow token lineage, so they still tell such clients' chains apart
  for regressions, but an initial sync from the second one may be read as a needless resync.

Retention: a proxy runs for weeks, so what is kept grows with the collections, resources and
clients seen, never with the traffic (the event log has everything). The limits are the MAX_*
constants below; each check that looks back says, where it looks, what it does beyond them.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

from .protocol.model import listed_beside_deletes, normalise_path

EVENT_VERSION = 1

# How an event is written as one line of the log: the one encoder for every line (json.dumps
# with options builds a new encoder per call). TagRun.json_lines writes the same bytes.
encode_event = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# Retention limits (see the module docstring).
MAX_KEPT_ANOMALIES = 1_000  # the latest anomalies, for repl.anomalies; all are counted by code
MAX_TOKENS = 100  # token records kept whole per collection (its chain, issues and lineage)
MAX_FINGERPRINTS = 1_000  # per collection: fingerprints of what dropped token records showed
MAX_REJECTED = 32  # refused tokens remembered per client of a collection
MAX_HISTORY = 16  # history entries kept per resource
MAX_FAILED = 16  # (method, tag) pairs that got a 412, kept per resource
MAX_TOMBSTONES = 1_000  # deleted resources whose records are kept; older ones are forgotten


# --------------------------------------------------------------------------------------------
# The anomaly catalogue


@dataclass(frozen=True)
class Anomaly:
    """One kind of protocol mistake, by either side."""

    code: str
    severity: str  # info | warning | error
    side: str  # client | server
    meaning: str  # what happened
    advice: str  # what to do about it
    spec: str  # the section of the protocol reference it rests on


CATALOGUE: dict[str, Anomaly] = {
    a.code: a
    for a in (
        Anomaly(
            "token-regressed",
            "error",
            "client",
            "The client sent a token older than one the server had already issued to it for "
            "this collection: it lost or rolled back its sync state.",
            "Persist the token after every manifest the client has applied, and never restore "
            "an older one; otherwise changes are reported twice or lost.",
            "exchange §3 steps 6 and 10; RFC 6578 §3.2",
        ),
        Anomaly(
            "rejected-token-reused",
            "error",
            "client",
            "The client sent again a token the server had rejected (475 or valid-sync-token) "
            "instead of starting over.",
            "Drop a rejected token and sync from an empty one, reconciling local items by "
            "repl-uid (Exchange) or href (RFC 6578); the server will refuse it every time.",
            "exchange §3 step 9, §8.5; RFC 6578 §3.2",
        ),
        Anomaly(
            "needless-resync",
            "warning",
            "client",
            "An initial sync (empty token) from a client that still holds a valid token for this "
            "collection.",
            "Send the stored token; a full listing costs the server and the network, and "
            "reconciling it locally is where duplicates come from.",
            "exchange §3 step 1 and step 9; RFC 6578 §3.2",
        ),
        Anomaly(
            "token-unchanged-with-changes",
            "error",
            "server",
            "The server reported changes but handed back the very token that was sent.",
            "A new token must cover the reported changes, or the client will be sent them again.",
            "exchange §3 step 6, §8.2; RFC 6578 §3.5",
        ),
        Anomaly(
            "empty-repl-with-entries",
            "error",
            "server",
            "An empty <R:repl/> (no changes) came back alongside entries.",
            "Either report changes with a new collblob, or none with the empty <R:repl/>.",
            "exchange §8.4",
        ),
        Anomaly(
            "unconditional-write",
            "warning",
            "client",
            "A write to a resource already seen on the wire, with no tag or uid condition: it "
            "overwrites whatever another client stored meanwhile (a lost update).",
            'Send If: (<rt:last-known-tag>) (Exchange) or If-Match: "etag" (RFC 6578) and treat '
            "a 412 as a conflict.",
            "exchange §3 step 4, §9.2, §11; RFC 6578 §5",
        ),
        Anomaly(
            "stale-condition",
            "warning",
            "client",
            "The write's condition names a tag older than the last one seen on the wire for the "
            "resource: the server will answer 412.",
            "Refresh the resource (or apply the manifest that changed it) before writing.",
            "exchange §9.2, §11",
        ),
        Anomaly(
            "retry-without-refresh",
            "error",
            "client",
            "After a 412, the client sent the same write again with the same stale tag.",
            "On 412, fetch the current version (GET/PROPFIND), resolve the conflict, then write "
            "with the new tag; a blind retry can never succeed.",
            "exchange §11",
        ),
        Anomaly(
            "delete-without-uid",
            "error",
            "server",
            "A delete entry carries no repl-uid, so a client cannot tell which item went away "
            "(a delete's href may be missing or meaningless).",
            "Always include R:repl-uid in delete entries.",
            "exchange §8.6, §10",
        ),
        Anomaly(
            "acknowledged-tag-echoed",
            "warning",
            "server",
            "A change was reported for a tag the client listed in its resourcetaglist: the "
            "client already has that state.",
            "Fold acknowledged tags into the new collblob and leave them out of the manifest.",
            "exchange §3 step 5, §8.3, §13.10",
        ),
        Anomaly(
            "range-gap",
            "error",
            "server",
            "The pages of a paged manifest leave rows out: the skipped changes are never seen.",
            "Number the rows of successive pages without holes (Content-Range).",
            "exchange §8.7, §13.11",
        ),
        Anomaly(
            "range-overlap",
            "warning",
            "server",
            "The pages of a paged manifest overlap: some rows are reported twice.",
            "Start each page after the last row of the previous one.",
            "exchange §8.7, §13.11",
        ),
        Anomaly(
            "nonstandard-namespace",
            "warning",
            "client",
            "The repl namespace is spelled https://… or without its trailing slash; Exchange "
            "matches namespaces exactly and would not recognise it.",
            "Use http://schemas.microsoft.com/repl/ exactly (today's docs misprint it).",
            "exchange §2.1, §13.1",
        ),
        Anomaly(
            "truncated-without-507",
            "error",
            "server",
            "A limit was asked and exactly that many members came back with a new token but no "
            "507: the changes beyond the limit are skipped for good.",
            "Answer a limited sync-collection with a 507 for the request-URI and a token for the "
            "partial state, so the client asks again.",
            "RFC 6578 §3.6",
        ),
        Anomaly(
            "silent-reset",
            "error",
            "server",
            "A non-empty sync-token was answered with what is evidently a full listing (every "
            "member the client holds, unchanged), with no error.",
            "Reject a token the server can no longer use with the valid-sync-token precondition "
            "(403/412), so the client knows to start over.",
            "RFC 6578 §3.2, §5",
        ),
        Anomaly(
            "removed-in-initial-sync",
            "warning",
            "server",
            "An initial sync (empty token) listed removed members (404).",
            "An initial sync lists the members that exist; removed ones mean nothing to a client "
            "that had nothing.",
            "RFC 6578 §3.3",
        ),
        Anomaly(
            "depth-not-zero",
            "warning",
            "client",
            "A sync-collection REPORT was sent with a Depth other than 0.",
            "Send Depth: 0 (the scope is sync-level); servers may answer 400.",
            "RFC 6578 §3.2",
        ),
        Anomaly(
            "token-repeated",
            "info",
            "server",
            "The server handed out a token it had issued before.",
            "Nothing, if tokens are content-addressed (the collection is back in an earlier "
            "state, as with Xandikos); otherwise the server's token does not move.",
            "RFC 6578 §3.2",
        ),
        Anomaly(
            "undecodable",
            "warning",
            "either",
            "A replication message could not be read: not XML, malformed, cut off, too large, "
            "in a broken encoding, carrying a DTD, or an answer that never arrived whole. It was "
            "passed on exactly as sent.",
            "The detail says which side and why; a DTD or entity in a protocol message is an "
            "attack or a bug, a cut-off answer a network or server failure.",
            "exchange §14.3; RFC 6578 §6",
        ),
        Anomaly(
            "malformed-header",
            "warning",
            "either",
            "A replication header (If, Range, Content-Range, DAV:limit) does not follow its "
            "grammar, so its meaning is unknown; the message was passed on untouched.",
            "Fix the sender: a server may ignore the condition or the range, which is how lost "
            "updates and skipped rows begin.",
            "exchange §6.1, §14.3",
        ),
        Anomaly(
            "identity-changed",
            "warning",
            "server",
            "The same href now carries a different repl-uid, and its item was neither reported "
            "deleted nor seen at another href (renamed) in between.",
            "A resource keeps its repl-uid; a new object at an old URL must first be reported "
            "deleted, or clients will merge two different items.",
            "exchange §1, §9.1",
        ),
    )
}


# --------------------------------------------------------------------------------------------
# State


@dataclass(slots=True)
class TokenRecord:
    """A token the server issued: to whom, from which token, in which flow."""

    token: str
    parent: str | None
    client: str
    flow: str
    seq: int
    ranged: bool = False
    rejected: bool = False


@dataclass
class Collection:
    """One collection's replication state.

    The chain keeps the newest MAX_TOKENS token records; ``issued`` and ``children`` index
    exactly those. A record that drops out leaves fingerprints in ``older`` of the two facts
    the regression check needs (that its token was issued while watched, and that its client
    gave up the parent token for it), so a regression is still seen some way further back.
    """

    key: str
    upstream: str
    path: str
    scope: str
    protocol: str
    chain: list[TokenRecord] = field(default_factory=list)  # oldest first
    issued: dict[str, list[TokenRecord]] = field(default_factory=dict)  # token -> issues
    children: dict[str | None, list[TokenRecord]] = field(default_factory=dict)
    holding: dict[str, str] = field(default_factory=dict)  # client -> newest valid token
    items: dict[str, str] = field(default_factory=dict)  # repl-uid (or path) -> resource path
    last_page: dict[str, Any] | None = None
    # client -> tokens refused, oldest first (a dict for its order), at most MAX_REJECTED
    rejected: dict[str, dict[str, None]] = field(default_factory=dict)
    clients: set[str] = field(default_factory=set)  # clients that were ever issued a token
    syncs: int = 0
    trimmed: int = 0  # token records dropped from the front of the chain
    older: dict[int, None] = field(default_factory=dict)  # fingerprints, oldest first
    limbo: list[Resource] = field(default_factory=list)  # items when a token was last refused

    def remember(self, *fact: str) -> None:
        """Keep a 64-bit fingerprint of a fact; the oldest go beyond MAX_FINGERPRINTS."""
        older = self.older
        older[hash(fact)] = None
        if len(older) > MAX_FINGERPRINTS:
            del older[next(iter(older))]

    def recalls(self, *fact: str) -> bool:
        """Whether a fact was remembered (a false yes is a 64-bit hash collision)."""
        return bool(self.older) and hash(fact) in self.older


HistoryEntry = tuple[str | None, str | None, str, int]  # (tag, uid, via, seq) of one change


@dataclass(slots=True)  # a million of these must fit in well under a gigabyte
class Resource:
    """One resource's tag and uid history.

    Most resources change once (they appear in a manifest) and never again, so the newest
    history entry has a field of its own and the list of older ones exists only when needed;
    at most MAX_HISTORY entries are kept, ``trimmed`` counts the ones dropped.
    """

    upstream: str
    path: str
    uid: str | None = None
    tag: str | None = None
    deleted: bool = False
    last: HistoryEntry | None = None  # the newest history entry
    older: list[HistoryEntry] | None = None  # the ones before it, oldest first
    trimmed: int = 0
    failed: dict[tuple[str, str], int] | None = None  # (method, tag) -> 412s, when any

    @property
    def history(self) -> list[HistoryEntry]:
        """The kept history, oldest first."""
        if self.last is None:
            return []
        return [*self.older, self.last] if self.older else [self.last]

    def record(self, entry: HistoryEntry) -> None:
        """Add a history entry, dropping the oldest beyond MAX_HISTORY."""
        last = self.last
        if last is not None:
            older = self.older
            if older is None:
                self.older = [last]
            else:
                older.append(last)
                if len(older) >= MAX_HISTORY:
                    del older[0]
                    self.trimmed += 1
        self.last = entry


# A resource seen once, new in a manifest, and in nothing since: (uid, tag, seq of its tag
# event). Most resources are only ever that (an initial sync lists them all), so they are kept
# as a tuple, a third of the memory of a Resource and its history entry and cheaper to make;
# the first time anything else happens to one, it becomes a Resource (Tracker._record).
Sighting = tuple[str | None, str | None, int]


class TagRun:
    """The tag events of resources new to the tracker, met one after another in one manifest.

    An initial sync lists every resource of a collection, and each gives a ``tag`` event (from
    nothing to its first tag): 10,000 events for a 10,000-entry manifest, all alike but for the
    resource, its uid, its tag and the seq. A run keeps those four as a row and the rest once,
    about a ninth of the memory of a 13-key dict an event; the log writes its lines straight
    from the rows (:meth:`json_lines`, byte for byte what the dicts give), and :meth:`events`
    gives the dicts to anyone who wants them.
    """

    __slots__ = ("flow", "protocol", "rows", "status", "ts", "upstream")

    def __init__(self, ts: float, flow: str, protocol: str, upstream: str, status: int) -> None:
        self.ts, self.flow, self.protocol = ts, flow, protocol
        self.upstream, self.status = upstream, status
        self.rows: list[tuple[int, str, str | None, str | None]] = []  # seq, resource, uid, to

    def __len__(self) -> int:
        return len(self.rows)

    def _event(self, seq: int, resource: str, uid: str | None, to: str | None) -> dict[str, Any]:
        return {
            "v": EVENT_VERSION,
            "ts": self.ts,
            "seq": seq,
            "flow": self.flow,
            "event": "tag",
            "protocol": self.protocol,
            "resource": resource,
            "upstream": self.upstream,
            "uid": uid,
            "from": None,
            "to": to,
            "via": "manifest",
            "status": self.status,
        }

    def events(self) -> list[dict[str, Any]]:
        """The events as dicts, as the contract has them (design.md)."""
        event = self._event
        return [event(*row) for row in self.rows]

    def json_lines(self) -> str:
        """The events as log lines, each ``encode_event(event) + "\\n"``, made without them."""
        # One line with a marker in each variable field, encoded as every event is, and cut at
        # the markers: the pieces between are the fixed text of every line of the run.
        markers = ("\x00s", "\x00r", "\x00u", "\x00t")
        line = encode_event(self._event(*markers))  # type: ignore[arg-type]  # seq: a marker
        pieces: list[str] = []
        for m in map(encode_basestring, markers):
            if line.count(m) != 1:  # a fixed field holding a marker: no shortcut
                return "".join(encode_event(e) + "\n" for e in self.events())
            piece, line = line.split(m)
            pieces.append(piece)
        p0, p1, p2, p3 = pieces
        p4 = line + "\n"
        esc = encode_basestring
        return "".join(
            f"{p0}{seq}{p1}{esc(r)}{p2}{'null' if u is None else esc(u)}"
            f"{p3}{'null' if t is None else esc(t)}{p4}"
            for seq, r, u, t in self.rows
        )


Event = dict[str, Any] | TagRun  # what Tracker.observe_compact returns: an event, or a run


def expand(events: Iterable[Event]) -> list[dict[str, Any]]:
    """Events as dicts, each TagRun spelled out."""
    out: list[dict[str, Any]] = []
    for e in events:
        if type(e) is TagRun:
            out += e.events()
        else:
            out.append(e)  # type: ignore[arg-type]
    return out


def count_events(events: Iterable[Event]) -> int:
    """How many events, a TagRun counting for each of its rows."""
    return sum(len(e) if type(e) is TagRun else 1 for e in events)


_IDLE: tuple[float, str, str, list[Event]] = (0.0, "", "", [])


def anomaly_table() -> str:
    """The catalogue as a Markdown table (the README's copy is checked against it)."""
    rows = [
        "| code | severity | side | what happened | what to do | rests on |",
        "|---|---|---|---|---|---|",
    ]
    for a in CATALOGUE.values():
        rows.append(
            f"| `{a.code}` | {a.severity} | {a.side} | {a.meaning} | {a.advice} | {a.spec} |"
        )
    return "\n".join(rows)


def client_id(address: str | None, user_agent: str | None) -> str:
    """How a client is named in the state and in the log."""
    host = address or "?"
    return f"{host} {user_agent}" if user_agent else host


def _scope_of(s: dict[str, Any]) -> str:
    req = s["request"]
    if s["method"] == "PROPFIND":
        return f"propfind depth={req.get('depth') or 'infinity'}"
    if req.get("query"):
        return str(req["query"])
    if s["protocol"] == "rfc6578":
        return f"sync-level={req.get('sync_level') or '1'}"
    return ""


class Tracker:
    """Consumes flow summaries in completion order and emits contract events."""

    def __init__(self) -> None:
        self.seq = 0
        self.collections: dict[str, Collection] = {}
        # upstream -> path -> resource (a Sighting until it is more than one)
        self.resources: dict[str, dict[str, Resource | Sighting]] = {}
        # (upstream, path, token) -> key, for the tokens a collection keeps or a client holds
        self.token_home: dict[tuple[str, str, str], str] = {}
        # The latest anomalies, for repl.anomalies: the log keeps them all, a long-running
        # proxy need not (python-caldav alone adds one on every sync). All are counted.
        self.anomalies: deque[dict[str, Any]] = deque(maxlen=MAX_KEPT_ANOMALIES)
        self.anomaly_counts: dict[str, int] = {}
        # Deleted resources, oldest first (by id, since records are not hashable): the records
        # beyond MAX_TOMBSTONES are forgotten, see _bury.
        self._dead: dict[int, Resource] = {}
        self.forgotten = 0  # deleted resources whose records were dropped
        self._now: tuple[float, str, str, list[Event]] = _IDLE

    # ---------------------------------------------------------------- entry point

    def event(
        self, event: str, *, flow: str, ts: float, protocol: str, **fields: Any
    ) -> dict[str, Any]:
        """An event of a kind other features add (``cache``, ``fault``, ``replay``), numbered
        in the same sequence as the tracker's own."""
        self.seq += 1
        return {
            "v": EVENT_VERSION,
            "ts": ts,
            "seq": self.seq,
            "flow": flow,
            "event": event,
            "protocol": protocol,
            **fields,
        }

    def observe(
        self,
        s: dict[str, Any],
        *,
        flow: str,
        ts: float,
        client: str,
    ) -> list[dict[str, Any]]:
        """The events one finished flow (its summary ``s``) gives rise to."""
        return expand(self.observe_compact(s, flow=flow, ts=ts, client=client))

    def observe_compact(
        self,
        s: dict[str, Any],
        *,
        flow: str,
        ts: float,
        client: str,
    ) -> list[Event]:
        """:meth:`observe`, with the tag events of resources a manifest lists for the first
        time in TagRuns, in their place in the order (what the proxy's tracker uses)."""
        out: list[Event] = []
        protocol = s.get("protocol", "exchange")
        self._now = (ts, flow, protocol, out)  # for the per-entry fast path in _entries

        def emit(event: str, /, **fields: Any) -> dict[str, Any]:
            self.seq += 1
            ev = {
                "v": EVENT_VERSION,
                "ts": ts,
                "seq": self.seq,
                "flow": flow,
                "event": event,
                "protocol": protocol,
                **fields,
            }
            out.append(ev)
            if event == "anomaly":
                self.anomalies.append(ev)
                code = fields["code"]
                self.anomaly_counts[code] = self.anomaly_counts.get(code, 0) + 1
            return ev

        req = s.get("request") or {}
        resp = s.get("response")
        if req.get("nonstandard_ns") or (resp or {}).get("nonstandard_ns"):
            ns = (req.get("nonstandard_ns") or resp.get("nonstandard_ns"))[0]  # type: ignore[union-attr]
            self._anomaly(
                emit,
                "nonstandard-namespace",
                collection=s.get("collection"),
                upstream=s.get("upstream"),
                detail=f"the repl namespace is spelled {ns}",
            )
        self._unreadable(s, emit)
        try:
            if s["kind"] == "manifest":
                self._manifest(s, emit, client, flow)
            else:
                self._resource_flow(s, emit)
        finally:
            self._now = _IDLE  # the flow's events are the caller's now: hold none of them
        return out

    def _unreadable(self, s: dict[str, Any], emit: Callable[..., dict[str, Any]]) -> None:
        """One anomaly for each part of a flow that could not be read, saying why."""
        req = s.get("request") or {}
        resp = s.get("response") or {}
        if not (
            req.get("undecodable")
            or req.get("malformed")
            or resp.get("undecodable")
            or resp.get("malformed")
            or (s.get("error") and not resp)
        ):
            return  # the common case, every flow: nothing to say
        where = {"upstream": s.get("upstream")}
        if s["kind"] == "manifest":
            where["collection"] = s.get("collection")
        else:
            where["resource"] = s.get("target")
        for side, part in (("request", req), ("answer", resp)):
            u = part.get("undecodable")
            if u:
                self._anomaly(
                    emit,
                    "undecodable",
                    **where,
                    detail=f"the {side} body was not decoded ({u['reason']}): {u['detail']}",
                )
            for m in part.get("malformed") or ():
                self._anomaly(emit, "malformed-header", **where, detail=f"{side}: {m}")
        if s.get("error") and not resp:
            self._anomaly(
                emit,
                "undecodable",
                **where,
                detail=f"the answer never arrived whole: {s['error']}",
            )

    @staticmethod
    def _anomaly(
        emit: Callable[..., dict[str, Any]], code: str, *, detail: str, **where: Any
    ) -> None:
        a = CATALOGUE[code]
        emit(
            "anomaly",
            code=code,
            severity=a.severity,
            detail=detail,
            **{k: v for k, v in where.items() if v is not None},
        )

    # ---------------------------------------------------------------- manifests

    def _collection(self, s: dict[str, Any]) -> Collection:
        upstream = s.get("upstream") or "?"
        path = s["collection"]
        token = s["request"].get("token")
        scope = _scope_of(s)
        if not scope and token is not None:
            # A SEARCH without SQL reuses the query bound to its collblob (spec §8.10). Known
            # for the tokens a collection keeps (MAX_TOKENS) and those its clients hold; an
            # older one counts toward the collection without a scope.
            home = self.token_home.get((upstream, path, token))
            if home is not None:
                return self.collections[home]
        key = f"{upstream}{path}" + (f" [{scope}]" if scope else "")
        c = self.collections.get(key)
        if c is None:
            c = self.collections[key] = Collection(key, upstream, path, scope, s["protocol"])
        return c

    def _manifest(
        self, s: dict[str, Any], emit: Callable[..., dict[str, Any]], client: str, flow: str
    ) -> None:
        req = s["request"]
        resp = s.get("response")
        c = self._collection(s)
        sent: str | None = req.get("token")
        where = {"collection": c.path, "upstream": c.upstream}
        if c.scope:
            where["scope"] = c.scope

        # What the client did, judged before the answer.
        refused = c.rejected.get(client)
        if sent is None:
            c.rejected.pop(client, None)  # it started over, as it should
        elif refused and sent in refused:
            # Seen for the client's latest MAX_REJECTED refusals since it last started over.
            self._anomaly(
                emit,
                "rejected-token-reused",
                **where,
                detail=f"{sent!r} was rejected before, and sent again",
            )
        if sent is not None:
            # Judged: the tokens issued while watched. The chain keeps the newest MAX_TOKENS
            # records whole; for older ones the fingerprints (MAX_FINGERPRINTS, two a record)
            # still tell that the token was issued and that the client gave it up for a newer
            # one, though no longer which. Older still, a token is one from before we started
            # watching: nothing to compare it with.
            watched = sent in c.issued or c.recalls("issued", sent)
            if watched and not req.get("range") and c.holding.get(client) != sent:
                newer = [
                    r
                    for r in c.children.get(sent, [])
                    if r.client == client and r.token != sent and not r.ranged and not r.rejected
                ]
                if newer:
                    self._anomaly(
                        emit,
                        "token-regressed",
                        **where,
                        detail=f"the client sent {sent!r} after it had been given "
                        f"{newer[-1].token!r} in exchange for it",
                    )
                elif c.recalls("superseded", client, sent):
                    self._anomaly(
                        emit,
                        "token-regressed",
                        **where,
                        detail=f"the client sent {sent!r} after it had been given a newer token "
                        f"in exchange for it (further back than the {MAX_TOKENS} tokens kept "
                        "whole for this collection)",
                    )
        else:
            held = c.holding.get(client)
            if held is not None:
                self._anomaly(
                    emit,
                    "needless-resync",
                    **where,
                    detail=f"an initial sync while the client holds {held!r}",
                )
        if s["protocol"] == "rfc6578" and req.get("depth") not in (None, "0"):
            self._anomaly(
                emit,
                "depth-not-zero",
                **where,
                detail=f"sync-collection REPORT with Depth: {req['depth']}",
            )

        if resp is None:
            return  # the flow failed; the log shows its manifest request only through errors
        status = resp["status"]
        received: str | None = resp.get("token")
        changes = resp.get("changes") or {"new": 0, "change": 0, "delete": 0}
        entries: list[dict[str, Any]] = resp.get("entries") or []
        emit(
            "manifest",
            **where,
            client=client,
            method=s["method"],
            status=status,
            sent=sent,
            received=received,
            changes=changes,
            acknowledged=len(req.get("acknowledged") or []),
            range=req.get("range"),
            content_range=resp.get("content_range"),
            limit=req.get("limit"),
            truncated=bool(resp.get("truncated")),
        )
        c.syncs += 1

        if resp.get("invalid_token"):
            emit("invalid_token", **where, sent=sent, status=status)
            emit("token", **where, **{"from": sent, "to": None}, kind="rejected")
            for rec in c.issued.get(sent or "", []):
                rec.rejected = True
            if sent is not None:
                refused = c.rejected.setdefault(client, {})
                refused.pop(sent, None)
                refused[sent] = None  # the newest last
                if len(refused) > MAX_REJECTED:
                    del refused[next(iter(refused))]
            # The collection may have been re-created (spec §8.5): its items come back with new
            # repl-uids at the same hrefs, which is no identity change. They wait, deleted but
            # with their tags, to be listed again; those from the previous time that never were
            # are gone for good, and their records join the other deleted ones (_bury).
            known = self.resources.get(c.upstream, {})
            for waiting in c.limbo:
                if (
                    waiting.deleted
                    and waiting.tag is not None
                    and known.get(waiting.path) is waiting
                ):
                    self._bury(waiting)
            c.limbo = []
            for path in c.items.values():
                r = self._record(c.upstream, known, path)
                if r is not None:
                    if not r.deleted:
                        c.limbo.append(r)
                    r.deleted = True
            c.items.clear()
            if sent is not None and c.holding.get(client) == sent:
                del c.holding[client]
                self._release(c, sent)
            c.last_page = None
            return
        if not resp.get("manifest"):
            return  # an error status or an undecodable body: nothing moved

        # The token transition.
        if resp.get("no_changes") or received is None:
            kind = "unchanged"
            new = sent
        elif sent is None:
            kind = "reset" if client in c.clients else "initial"
            new = received
        elif received == sent:
            kind = "unchanged"
            new = sent
        else:
            kind = "advance"
            new = received
        silent_reset = self._silent_reset(c, sent, entries)
        if silent_reset:
            emit("invalid_token", **where, sent=sent, status=status)
            kind = "reset"
        emit("token", **where, **{"from": sent, "to": new}, kind=kind)
        # Among the tokens kept whole (MAX_TOKENS): a repeat of an older one is not reported.
        if (
            new is not None
            and new != sent
            and new in c.issued
            and all(r.parent != sent for r in c.issued[new])  # not the same step, repeated
        ):
            self._anomaly(emit, "token-repeated", **where, detail=f"{new!r} was issued before")
        if silent_reset:
            self._anomaly(
                emit,
                "silent-reset",
                **where,
                detail=f"{sent!r} was answered with all {len(c.items)} members the client "
                "holds, unchanged, and no error",
            )
        limit = req.get("limit")
        if (
            limit is not None
            and len(entries) == limit
            and not resp.get("truncated")
            and new is not None
            and new != sent
        ):
            self._anomaly(
                emit,
                "truncated-without-507",
                **where,
                detail=f"limit {limit}, {limit} members and a new token, but no 507",
            )
        if c.protocol == "rfc6578" and sent is None and any(e["type"] == "delete" for e in entries):
            n = sum(e["type"] == "delete" for e in entries)
            self._anomaly(
                emit,
                "removed-in-initial-sync",
                **where,
                detail=f"the initial sync listed {n} removed member(s)",
            )
        if new is not None and new != sent:
            rec = TokenRecord(new, sent, client, flow, self.seq, ranged=bool(req.get("range")))
            c.clients.add(client)
            c.chain.append(rec)
            c.issued.setdefault(new, []).append(rec)
            c.children.setdefault(sent, []).append(rec)
            self.token_home[(c.upstream, c.path, new)] = c.key
            if len(c.chain) > MAX_TOKENS:
                self._forget(c, c.chain.pop(0))
        if new is not None:
            held = c.holding.get(client)
            c.holding[client] = new
            if held is not None and held != new:
                self._release(c, held)

        # What the server did.
        if entries and received is not None and received == sent:
            self._anomaly(
                emit,
                "token-unchanged-with-changes",
                **where,
                detail=f"{len(entries)} entries under the unchanged token {sent!r}",
            )
        if entries and resp.get("no_changes"):
            self._anomaly(
                emit,
                "empty-repl-with-entries",
                **where,
                detail=f"an empty R:repl with {len(entries)} entries",
            )
        self._paging(c, req, resp, sent, received, emit, where)
        self._entries(c, s, entries, set(req.get("acknowledged") or []), status, emit, where)

    def _forget(self, c: Collection, rec: TokenRecord) -> None:
        """Drop a token record that left the chain, keeping fingerprints of what the
        regression check asks of it: that its token was issued while watched, and that its
        client gave up the parent token for it (unless the new one was ranged or refused)."""
        c.trimmed += 1
        recs = c.issued.get(rec.token, [])
        for i, r in enumerate(recs):
            if r is rec:
                del recs[i]
                break
        if not recs:
            c.issued.pop(rec.token, None)
            c.remember("issued", rec.token)
            self._release(c, rec.token)
        kids = c.children.get(rec.parent, [])
        for i, r in enumerate(kids):
            if r is rec:
                del kids[i]
                break
        if not kids:
            c.children.pop(rec.parent, None)
        if rec.parent is not None and not rec.ranged and not rec.rejected:
            c.remember("superseded", rec.client, rec.parent)

    def _release(self, c: Collection, token: str) -> None:
        """Forget where a token belongs once the collection neither keeps nor hands it out."""
        if token in c.issued or token in c.holding.values():
            return
        key = (c.upstream, c.path, token)
        if self.token_home.get(key) == c.key:
            del self.token_home[key]

    def _silent_reset(self, c: Collection, sent: str | None, entries: list[dict[str, Any]]) -> bool:
        """A non-empty token answered by re-listing every member the client holds, unchanged.

        An incremental answer never reports a member at the ETag the client already has, so
        re-reporting all of them (at least two) is a full listing in disguise (DAViCal's reset).
        """
        if sent is None or c.protocol != "rfc6578" or len(c.items) < 2:
            return False
        known = self.resources.get(c.upstream, {})
        live = set(c.items.values())
        same = 0
        for e in entries:
            href = e.get("href")
            if e["type"] == "delete" or not href:
                continue
            path = normalise_path(href)
            r = known.get(path)
            tag = r[1] if isinstance(r, tuple) else None if r is None else r.tag
            if path in live and tag is not None and tag == e.get("tag"):
                same += 1
        return same == len(live)

    def _paging(
        self,
        c: Collection,
        req: dict[str, Any],
        resp: dict[str, Any],
        sent: str | None,
        received: str | None,
        emit: Callable[..., dict[str, Any]],
        where: dict[str, Any],
    ) -> None:
        """range-gap / range-overlap between Content-Range pages of one paged manifest.

        Pages are compared when the numbering is known to be continuous: the same token again
        (rows count in the original listing) or the previous page's new token with rows not
        restarting at 0 (numbering carried across tokens). Pages that restart at 0 with the new
        token (spec §13.11's recommended reading) count rows in what remains, so have no
        numbering to compare.
        """
        cr = resp.get("content_range")
        prev = c.last_page
        c.last_page = None
        if not cr or cr.get("first") is None or cr.get("last") is None:
            return
        page = {
            "sent": sent,
            "received": received,
            "first": cr["first"],
            "last": cr["last"],
            "total": cr.get("total"),
        }
        c.last_page = page
        if prev is None:
            return
        same_token = sent == prev["sent"]
        carried = sent is not None and sent == prev["received"] and cr["first"] != 0
        if not (same_token or carried):
            return
        expected = prev["last"] + 1
        if cr["first"] > expected:
            self._anomaly(
                emit,
                "range-gap",
                **where,
                detail=f"rows {expected}-{cr['first'] - 1} were never sent "
                f"(pages {prev['first']}-{prev['last']}, then {cr['first']}-{cr['last']})",
            )
        elif cr["first"] < expected:
            self._anomaly(
                emit,
                "range-overlap",
                **where,
                detail=f"rows {cr['first']}-{min(cr['last'], prev['last'])} were sent "
                f"twice (pages {prev['first']}-{prev['last']}, then "
                f"{cr['first']}-{cr['last']})",
            )

    def _entries(
        self,
        c: Collection,
        s: dict[str, Any],
        entries: list[dict[str, Any]],
        acknowledged: set[str],
        status: int,
        emit: Callable[..., dict[str, Any]],
        where: dict[str, Any],
    ) -> None:
        """The manifest's entries, in order: up to 10,000 a flow, so the two common cases (a
        resource new to the tracker, one unchanged) are written out here and the rest goes
        through _see and _gone."""
        upstream = c.upstream
        known = self.resources.setdefault(upstream, {})
        items = c.items
        ts, flow, protocol, out = self._now
        run = TagRun(ts, flow, protocol, upstream, status)  # new resources' tag events
        rows = run.rows
        normalise = normalise_path
        # A rename or a move within the collection is a delete of the repl-uid and a change of it
        # at its new href, in either order (spec §8.6); the same manifest reaches every client
        # that syncs the collection, and a paged one comes in pieces. So a delete is read as the
        # old side of a rename when this manifest lists the item at an href, or when it names
        # an href other than the one the item is known at: it closes that href only, never the
        # item's current one (a delete with no href, on a later page than the change, still
        # closes the current one: nothing tells them apart). An entry whose href shows a new
        # repl-uid is weighed after the others, once every move in the manifest is known (an
        # item made at the old name of one that moved is no identity change); its events come
        # last. RFC 6578 has no repl-uids (the decoder's uid is the href): nothing moves there.
        renames = protocol != "rfc6578"
        listed = listed_beside_deletes(entries, s["response"].get("changes")) if renames else set()
        new_identity: list[tuple[str, str | None, str]] = []
        for e in entries:
            uid = e.get("uid")
            href = e.get("href")
            tag = e.get("tag")
            if e["type"] == "delete":
                if uid is None:
                    self._anomaly(
                        emit,
                        "delete-without-uid",
                        **where,
                        detail=f"a delete entry ({f'href {href!r}' if href else 'no href'}) "
                        "has no repl-uid",
                    )
                named = normalise(href) if href else None
                current = items.get(uid) if uid is not None else None
                elsewhere = renames and named is not None and current not in (None, named)
                if uid is not None and (uid in listed or elsewhere):
                    if named is None or named == current:
                        continue  # the item lives on where it is listed (closed there if moved)
                    path: str | None = named
                else:
                    path = items.pop(uid, None) if uid is not None else None
                    if path is None:
                        path = named
                gone = self._record(upstream, known, path) if path is not None else None
                if gone is None or (uid is not None and gone.uid not in (None, uid)):
                    continue  # never seen on the wire (or since taken by another item)
                self._gone(gone, "manifest", status, emit, uid)
                continue
            if acknowledged and tag is not None and tag in acknowledged:
                self._anomaly(
                    emit,
                    "acknowledged-tag-echoed",
                    **where,
                    detail=f"{href or uid} reported at {tag!r}, which the client "
                    "listed in its resourcetaglist",
                )
            if not href:
                continue
            path = normalise(href)
            if uid is not None:
                was = items.get(uid)
                if renames and was is not None and was != path:  # renamed, or moved here
                    self._moved_away(upstream, known, was, uid, status, emit)
            items[uid or path] = path
            r = known.get(path)
            if r is None:
                self.seq = seq = self.seq + 1
                if not out or out[-1] is not run:  # another event came between: a new run
                    if rows:
                        run = TagRun(ts, flow, protocol, upstream, status)
                        rows = run.rows
                    out.append(run)
                rows.append((seq, path, uid, tag))
                known[path] = (uid, tag, seq)
            elif isinstance(r, Resource):
                if tag == r.tag and (uid is None or uid == r.uid) and not r.deleted:
                    continue  # unchanged: what _see would find, without the call
                if uid is not None and r.uid not in (None, uid) and not r.deleted:
                    new_identity.append((path, tag, uid))
                    continue
                self._see(r, tag, uid, "manifest", status, emit)
            elif not (tag == r[1] and (uid is None or uid == r[0])):  # a Sighting, changed
                if uid is not None and r[0] not in (None, uid):
                    new_identity.append((path, tag, uid))
                    continue
                self._see(
                    self._upgrade(upstream, known, path, r), tag, uid, "manifest", status, emit
                )
        for path, tag, uid in new_identity:
            self._see(self._resource(upstream, path), tag, uid, "manifest", status, emit)

    def _moved_away(
        self,
        upstream: str,
        known: dict[str, Resource | Sighting],
        path: str,
        uid: str,
        status: int,
        emit: Callable[..., dict[str, Any]],
    ) -> None:
        """The item ``uid`` listed at another href than ``path``: renamed or moved, so the
        history at ``path`` closes, unless another item has taken that href since."""
        r = self._record(upstream, known, path)
        if r is not None and r.uid == uid:
            self._gone(r, "manifest", status, emit, uid)

    # ---------------------------------------------------------------- resources

    def _resource(self, upstream: str, path: str) -> Resource:
        """The resource's record, made if there is none."""
        known = self.resources.setdefault(upstream, {})
        r = self._record(upstream, known, path)
        if r is None:
            r = known[path] = Resource(upstream, path)
        return r

    def _revive(self, r: Resource) -> None:
        """A deleted resource back on the wire: no longer a tombstone (which _bury may drop)."""
        if r.deleted:
            self._dead.pop(id(r), None)
            r.deleted = False

    @staticmethod
    def _record(upstream: str, known: dict[str, Resource | Sighting], path: str) -> Resource | None:
        """The resource's record, if there is one, as a Resource."""
        r = known.get(path)
        if isinstance(r, tuple):
            return Tracker._upgrade(upstream, known, path, r)
        return r

    @staticmethod
    def _upgrade(
        upstream: str, known: dict[str, Resource | Sighting], path: str, seen: Sighting
    ) -> Resource:
        uid, tag, seq = seen
        r = known[path] = Resource(upstream, path, uid, tag, False, (tag, uid, "manifest", seq))
        return r

    def _bury(self, r: Resource) -> None:
        """A resource was deleted: keep its record among the latest MAX_TOMBSTONES.

        What an older record would still tell: nothing the checks use (they skip deleted
        resources, and a removal reported again closes nothing either way); a resource that
        comes back at the path starts a new record, so its first tag event names no uid unless
        the flow carries one (the old record would have given the deleted item's uid).
        """
        dead = self._dead
        dead[id(r)] = r
        if len(dead) > MAX_TOMBSTONES:
            old = dead.pop(next(iter(dead)))
            known = self.resources.get(old.upstream)
            if known is not None and known.get(old.path) is old:
                del known[old.path]
                self.forgotten += 1

    def _gone(
        self,
        r: Resource,
        via: str,
        status: int,
        emit: Callable[..., dict[str, Any]],
        uid: str | None = None,
    ) -> None:
        """A resource deleted (or moved away): its history closes with no tag."""
        if r.deleted:
            return  # already gone: a removal reported again (RFC 6578 re-lists 404s)
        if r.tag is not None or r.uid is not None:
            emit(
                "tag",
                resource=r.path,
                upstream=r.upstream,
                uid=uid or r.uid,
                **{"from": r.tag},
                to=None,
                via=via,
                status=status,
            )
        r.record((None, uid or r.uid, via, self.seq))
        r.tag = None
        r.deleted = True
        self._bury(r)

    def _see(
        self,
        r: Resource,
        tag: str | None,
        uid: str | None,
        via: str,
        status: int,
        emit: Callable[..., dict[str, Any]],
    ) -> None:
        """A tag and/or uid seen on the wire for a resource."""
        path = r.path
        upstream = r.upstream
        if uid is not None and r.uid is not None and uid != r.uid and not r.deleted:
            self._anomaly(
                emit,
                "identity-changed",
                resource=path,
                upstream=upstream,
                detail=f"{path} was {r.uid} and is now {uid}, with no delete between",
            )
        if tag is None and (uid is None or uid == r.uid):
            return
        if tag == r.tag and (uid is None or uid == r.uid) and not r.deleted:
            return
        emit(
            "tag",
            resource=path,
            upstream=upstream,
            uid=uid or r.uid,
            **{"from": r.tag},
            to=tag if tag is not None else r.tag,
            via=via,
            status=status,
        )
        if tag is not None:
            r.tag = tag
        if uid is not None:
            r.uid = uid
        self._revive(r)
        r.record((r.tag, r.uid, via, self.seq))

    def _resource_flow(self, s: dict[str, Any], emit: Callable[..., dict[str, Any]]) -> None:
        req = s["request"]
        resp = s.get("response")
        upstream = s.get("upstream") or "?"
        path = s["target"]
        method = s["method"]
        cond = req.get("condition") or {}
        tags: list[str] = list(cond.get("tags") or [])
        if s["protocol"] == "rfc6578" and cond.get("if_match") and cond["if_match"] != "*":
            tags.append(cond["if_match"])
        uids: list[str] = list(cond.get("uids") or [])
        # A CalDAV schedule tag is a condition too, in a tag space of its own (RFC 6638 §3.2):
        # it counts against lost updates and for conflicts, never as a stale ETag.
        schedule_tag = cond.get("if_schedule_tag_match")
        known = self._record(upstream, self.resources.get(upstream, {}), path)
        rfc = s["protocol"] == "rfc6578"
        if rfc:
            # RFC 6578 clients condition content writes on ETags; properties have no such tags.
            write = method in ("PUT", "DELETE", "MOVE", "COPY")
        else:
            write = s["kind"] in ("upload", "delete", "move", "copy") and method != "POST"

        if write and known is not None and not known.deleted and (known.tag or known.uid):
            conditioned = tags or uids or schedule_tag
            # Any If header counts: one with only entity tags, or one too malformed to read
            # (reported as malformed-header), is still the client asking for a condition.
            if not (
                conditioned
                or cond.get("raw_if")
                or cond.get("if_match")
                or cond.get("if_none_match")
            ):
                self._anomaly(
                    emit,
                    "unconditional-write",
                    resource=path,
                    upstream=upstream,
                    detail=f"{method} {path} without a condition; the last tag seen "
                    f"was {known.tag!r}",
                )
            # Stale: a tag among the resource's latest MAX_HISTORY; an older one counts as
            # unknown, like a tag from before we started watching.
            for t in tags:
                if t != known.tag and any(h[0] == t for h in known.history):
                    self._anomaly(
                        emit,
                        "stale-condition",
                        resource=path,
                        upstream=upstream,
                        detail=f"{method} names {t!r}, but {known.tag!r} was seen since",
                    )
            for t in tags:
                if known.failed and known.failed.get((method, t)):
                    self._anomaly(
                        emit,
                        "retry-without-refresh",
                        resource=path,
                        upstream=upstream,
                        detail=f"{method} again with {t!r}, which already got a 412",
                    )
        if resp is None:
            return
        status = resp["status"]
        sent: str | None = (tags or uids)[0] if (tags or uids) else schedule_tag
        if status == 412 and sent is not None:
            r = self._resource(upstream, path)
            if r.failed is None:
                r.failed = {}
            for t in tags:
                r.failed[(method, t)] = r.failed.get((method, t), 0) + 1
                if len(r.failed) > MAX_FAILED:  # the retry check sees the latest ones
                    del r.failed[next(iter(r.failed))]
            emit(
                "conflict",
                resource=path,
                upstream=upstream,
                method=method,
                sent=sent,
                current=r.tag,
                status=status,
            )
            return
        if not 200 <= status < 300:
            return
        if method == "DELETE":
            self._gone(self._resource(upstream, path), method, status, emit)
            return
        if method == "MOVE" and req.get("destination"):
            src = self._resource(upstream, path)
            dst_path = normalise_path(req["destination"])
            dst = self._resource(upstream, dst_path)
            # The uid normally travels with the item (spec §9.8); the destination's tag is
            # only known once it is read again.
            self._revive(dst)
            dst.uid, dst.tag = src.uid, None
            dst.record((None, src.uid, method, self.seq))
            self._gone(src, method, status, emit)
            return
        for r in resp.get("listed") or []:
            if r.get("href"):
                self._see(
                    self._resource(upstream, normalise_path(r["href"])),
                    r.get("tag"),
                    r.get("uid"),
                    method,
                    status,
                    emit,
                )
        tag = resp.get("tag")
        uid = resp.get("uid")
        if rfc and uid is None and tag is not None:
            uid = path  # the href is the identity in RFC 6578, as in its manifests
        if tag is not None or uid is not None:
            target = path
            if method == "POST" and resp.get("location"):
                target = normalise_path(resp["location"])
            self._see(self._resource(upstream, target), tag, uid, method, status, emit)

    # ---------------------------------------------------------------- views

    def state(self) -> dict[str, Any]:
        """Current chains and histories, as plain data, and what retention left out of them:
        a collection's ``trimmed`` counts the token records dropped from the front of its
        chain, a resource's ``trimmed`` (present when any) the history entries dropped from
        the front of its history, ``retention`` the limits and what was dropped in all."""
        return {
            "collections": {
                k: {
                    "protocol": c.protocol,
                    "syncs": c.syncs,
                    "chain": [
                        {
                            "token": r.token,
                            "parent": r.parent,
                            "client": r.client,
                            "flow": r.flow,
                            "rejected": r.rejected,
                        }
                        for r in c.chain
                    ],
                    "trimmed": c.trimmed,
                    "holding": dict(c.holding),
                    "items": len(c.items),
                }
                for k, c in self.collections.items()
            },
            "resources": {
                f"{up}{p}": _resource_state(r)
                for up, known in self.resources.items()
                for p, r in known.items()
            },
            "retention": {
                "limits": {
                    "tokens_per_collection": MAX_TOKENS,
                    "fingerprints_per_collection": MAX_FINGERPRINTS,
                    "rejected_per_client": MAX_REJECTED,
                    "history_per_resource": MAX_HISTORY,
                    "failed_per_resource": MAX_FAILED,
                    "deleted_resources": MAX_TOMBSTONES,
                    "anomalies": MAX_KEPT_ANOMALIES,
                },
                "token_records_dropped": sum(c.trimmed for c in self.collections.values()),
                "history_entries_dropped": sum(
                    r.trimmed
                    for known in self.resources.values()
                    for r in known.values()
                    if isinstance(r, Resource)
                ),
                "deleted_resources_forgotten": self.forgotten,
                "anomalies_seen": dict(self.anomaly_counts),
                "anomalies_kept": len(self.anomalies),
            },
        }


def _resource_state(r: Resource | Sighting) -> dict[str, Any]:
    if isinstance(r, tuple):
        uid, tag, seq = r
        history = [{"tag": tag, "uid": uid, "via": "manifest", "seq": seq}]
        return {"uid": uid, "tag": tag, "deleted": False, "history": history}
    return {
        "uid": r.uid,
        "tag": r.tag,
        "deleted": r.deleted,
        "history": [{"tag": t, "uid": u, "via": via, "seq": seq} for t, u, via, seq in r.history],
        **({"trimmed": r.trimmed} if r.trimmed else {}),
    }
