"""``repltap report``: what happened in a replication session, for the person who runs it.

What may live here: reading an event log (JSON Lines, the contract in design.md) or a mitmproxy
recording (through ``repltap.offline``), folding the events into per-collection and per-resource
figures, and rendering them as a terminal summary and as one self-contained HTML page. What may
not: token state or protocol judgement (the tracker's), parsing bodies, anything fetched from
elsewhere. Every string in a log is untrusted: it is escaped for the page and stripped of control
characters for the terminal.
"""

from __future__ import annotations

import argparse
import codecs
import gzip
import html
import json
import math
import os
import re
import shutil
import sys
import textwrap
import zlib
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from . import __version__
from .tracker import CATALOGUE

Event = dict[str, Any]

SEVERITIES = ("error", "warning", "info")
_SEV_RANK = {s: i for i, s in enumerate(SEVERITIES)}
CHANGE_KINDS = ("new", "change", "delete")
# The fields without which an event of a known kind cannot be placed.
_REQUIRED = {
    "manifest": ("collection",),
    "token": ("collection",),
    "invalid_token": ("collection",),
    "tag": ("resource",),
    "conflict": ("resource",),
    "anomaly": ("code",),
}
_RECORDING = re.compile(rb"\d{1,12}:")  # a tnetstring's length prefix opens a flow file

# Caps that keep the page usable for a log of 100,000s of events.
MAX_NODES = 200  # syncs drawn per collection (the troubled ones first, then the latest)
MAX_MARKS = 400  # conflicts and write anomalies drawn per collection
MAX_LANES = 16  # clients (or token chains) drawn per collection; the rest share a lane
MAX_TIMELINES = 40  # collections drawn as timelines; the table lists up to MAX_ROWS
MAX_ROWS = 300
MAX_RESOURCES = 150  # resources with a tag history on the page
MAX_STEPS = 60  # tag-history steps per resource (the latest)


class InputError(Exception):
    """Input the report cannot read; the message is one line naming the file (and line)."""


# --------------------------------------------------------------------------------------------
# Reading


def read_events(path: str | os.PathLike[str]) -> tuple[list[Event], list[str]]:
    """The events of an event log or a recording, and notes about what was skipped."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            head = f.read(16)
            if _RECORDING.match(head):
                return _events_from_recording(name), []
            data = head + f.read()
        if data.startswith(b"\x1f\x8b"):  # a rotated, compressed log
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not an event log or recording") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputError(f"{name}: a gzip file that cannot be decompressed ({e})") from None
    except OSError as e:
        raise InputError(f"{name}: cannot read it: {e.strerror or e}") from None
    return _parse_jsonl(name, data.removeprefix(codecs.BOM_UTF8))


def _events_from_recording(name: str) -> list[Event]:
    """The tracker's events for a recording, each naming its client (the flow file knows it)."""
    try:
        from mitmproxy.exceptions import FlowReadException

        from .mitm.track import flow_context
        from .offline import events_from_flows, read_flows
    except ImportError as e:
        raise InputError(
            f"{name}: a mitmproxy recording, but this repltap cannot read recordings ({e})"
        ) from None
    try:
        flows = read_flows(name)
    except OSError as e:
        raise InputError(f"{name}: cannot read it: {e.strerror or e}") from None
    except (FlowReadException, ValueError, TypeError, KeyError) as e:
        raise InputError(f"{name}: not a readable mitmproxy recording ({e})") from None
    events = events_from_flows(flows)
    clients = {f.id: flow_context(f)[1] for f in flows}
    for ev in events:
        if ev.get("flow") in clients:
            ev.setdefault("client", clients[ev["flow"]])
    return events


def _parse_jsonl(name: str, data: bytes) -> tuple[list[Event], list[str]]:
    events: list[Event] = []
    notes: list[str] = []
    lines = data.split(b"\n")
    first = True
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        where = f"{name}:{n}"
        last_unterminated = n == len(lines) and not data.endswith(b"\n")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{where}: not UTF-8 text") from None
        try:
            ev = json.loads(text)
        except json.JSONDecodeError as e:
            if last_unterminated and not first:
                # A log still being written ends in half a line; everything before it is good.
                notes.append(f"ignored the incomplete last line {n} (the log is still growing?)")
                break
            hint = (
                "; this is neither a JSON Lines event log nor a mitmproxy recording"
                if first
                else ""
            )
            raise InputError(f"{where}: not JSON ({e.msg} at column {e.colno}){hint}") from None
        except RecursionError:
            raise InputError(f"{where}: JSON nested too deeply") from None
        first = False
        if not isinstance(ev, dict):
            raise InputError(f"{where}: not an event (a JSON {type(ev).__name__}, not an object)")
        kind = ev.get("event")
        if not isinstance(kind, str):
            raise InputError(f'{where}: not an event (no "event" field)')
        if ev.get("v", 1) != 1:
            raise InputError(
                f"{where}: event log version {ev.get('v')!r}; this repltap reads version 1"
            )
        for key in _REQUIRED.get(kind, ()):
            if not isinstance(ev.get(key), str):
                raise InputError(f'{where}: a {kind} event without a "{key}"')
        events.append(ev)
    return events, notes


# --------------------------------------------------------------------------------------------
# Folding events into figures


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def severity_of(ev: Event) -> str:
    """An anomaly's severity: its own, else the catalogue's, else ``warning``."""
    s = ev.get("severity")
    if isinstance(s, str) and s in _SEV_RANK:
        return s
    a = CATALOGUE.get(str(ev.get("code")))
    return a.severity if a else "warning"


@dataclass(eq=False)
class Node:
    """One manifest exchange (a sync) on a collection's timeline."""

    order: int  # position in the log
    ev: Event
    kind: str | None = None  # the token event's kind
    invalid: bool = False
    anomalies: list[Event] = field(default_factory=list)
    lane: str = ""

    @property
    def sent(self) -> str | None:
        v = self.ev.get("sent")
        return None if v is None else str(v)

    @property
    def received(self) -> str | None:
        v = self.ev.get("received")
        return None if v is None else str(v)

    @property
    def status(self) -> int | None:
        s = self.ev.get("status")
        return s if isinstance(s, int) else None

    def changes(self) -> dict[str, int]:
        ch = self.ev.get("changes")
        ch = ch if isinstance(ch, dict) else {}
        return {k: v if isinstance(v := ch.get(k), int) and v > 0 else 0 for k in CHANGE_KINDS}

    @property
    def outcome(self) -> str:
        """invalid, reset, failed, initial, unchanged or advance."""
        if self.invalid or self.kind == "rejected":
            return "invalid"
        if self.kind == "reset":
            return "reset"
        if self.status is not None and not 200 <= self.status < 300:
            return "failed"
        if self.kind in ("initial", "unchanged", "advance"):
            return self.kind
        return "initial" if self.sent is None else "advance"

    def worst(self) -> str | None:
        sevs = [severity_of(a) for a in self.anomalies]
        return min(sevs, key=_SEV_RANK.__getitem__) if sevs else None


@dataclass(eq=False)
class CollectionView:
    """One collection's figures and timeline."""

    upstream: str
    path: str
    scope: str = ""
    protocol: str = "exchange"
    outside: bool = False  # the resources of this upstream that no synced collection contains
    syncs: int = 0
    changes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANGE_KINDS, 0))
    resets: int = 0
    conflicts: int = 0
    anomalies: Counter[str] = field(default_factory=Counter)
    severities: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    marks: list[tuple[int, Event]] = field(default_factory=list)  # (order, conflict/anomaly)
    clients: Counter[str] = field(default_factory=Counter)
    first_ts: float | None = None
    last_ts: float | None = None

    @property
    def name(self) -> str:
        if self.outside:
            return f"{self.upstream} (outside any synced collection)"
        return f"{self.upstream}{self.path}"

    def count(self, severity: str) -> int:
        """Anomalies of one severity."""
        return sum(n for code, n in self.anomalies.items() if self.severities[code] == severity)

    @property
    def state(self) -> str:
        """The worst thing about it: error, warning, conflict, reset or ok."""
        for s, n in (
            ("error", self.count("error")),
            ("warning", self.count("warning")),
            ("conflict", self.conflicts),
            ("reset", self.resets),
        ):
            if n:
                return s
        return "ok"

    def rank(self) -> tuple[Any, ...]:
        return (
            -self.count("error"),
            -self.count("warning"),
            -self.conflicts,
            -self.resets,
            -self.syncs,
            self.upstream,
            self.path,
            self.scope,
        )

    def add_anomaly(self, ev: Event) -> None:
        code = str(ev.get("code"))
        self.anomalies[code] += 1
        self.severities.setdefault(code, severity_of(ev))

    def anomaly_rows(self) -> list[tuple[str, str, int]]:
        """(severity, code, count), worst first."""
        rows = [(self.severities[c], c, n) for c, n in self.anomalies.items()]
        return sorted(rows, key=lambda r: (_SEV_RANK.get(r[0], 9), -r[2], r[1]))

    def seen(self, ts: Any) -> None:
        t = _num(ts)
        if t is not None:
            self.first_ts = t if self.first_ts is None else min(self.first_ts, t)
            self.last_ts = t if self.last_ts is None else max(self.last_ts, t)


@dataclass(eq=False)
class ResourceView:
    """One resource's tag history, conflicts and anomalies."""

    upstream: str
    path: str
    uid: str | None = None
    history: list[tuple[int, Event]] = field(default_factory=list)
    tags: int = 0
    conflicts: int = 0
    anomalies: Counter[str] = field(default_factory=Counter)
    last_via: str | None = None

    @property
    def name(self) -> str:
        return f"{self.upstream}{self.path}"

    def rank(self) -> tuple[Any, ...]:
        return (-self.conflicts, -sum(self.anomalies.values()), -self.tags, self.name)


@dataclass
class Analysis:
    """Everything the report shows, computed once from the events."""

    source: str
    total: int
    kinds: Counter[str]
    first_ts: float | None
    last_ts: float | None
    runs: int
    collections: list[CollectionView]  # worst first
    resources: list[ResourceView]  # most conflicts, anomalies and tag changes first
    anomalies: dict[str, list[Event]]  # code -> events, in log order
    notes: list[str]
    named_clients: bool  # whether manifest events say which client sent them

    def totals(self) -> dict[str, int]:
        real = [c for c in self.collections if not c.outside]
        t = {k: sum(c.changes[k] for c in real) for k in CHANGE_KINDS}
        t["syncs"] = sum(c.syncs for c in real)
        t["resets"] = sum(c.resets for c in real)
        t["conflicts"] = self.kinds.get("conflict", 0)
        for s in SEVERITIES:
            t[s] = sum(1 for evs in self.anomalies.values() for e in evs if severity_of(e) == s)
        return t

    def upstreams(self) -> list[str]:
        return sorted({c.upstream for c in self.collections})


def analyse(events: Sequence[Event], source: str = "", notes: Iterable[str] = ()) -> Analysis:
    """Fold events (in log order) into per-collection and per-resource figures."""
    cols: dict[tuple[str, str, str], CollectionView] = {}
    outside: dict[str, CollectionView] = {}
    by_path: dict[tuple[str, str], list[CollectionView]] = {}
    node_at: dict[tuple[str, tuple[str, str, str]], Node] = {}
    flow_col: dict[str, CollectionView] = {}
    resources: dict[tuple[str, str], ResourceView] = {}
    containing: dict[tuple[str, str], list[CollectionView]] = {}
    anomalies: dict[str, list[Event]] = {}
    kinds: Counter[str] = Counter()
    first_ts = last_ts = None
    runs = 1
    prev_seq: int | None = None
    named_clients = False

    def col(ev: Event) -> CollectionView:
        up = str(ev.get("upstream") or "?")
        key = (up, str(ev["collection"]), str(ev.get("scope") or ""))
        c = cols.get(key)
        if c is None:
            c = cols[key] = CollectionView(
                up, key[1], key[2], str(ev.get("protocol") or "exchange")
            )
            by_path.setdefault((up, key[1]), []).append(c)
        return c

    # Manifests make the collections and their timelines.
    for i, ev in enumerate(events):
        kind = ev["event"]
        kinds[kind] += 1
        seq = ev.get("seq")
        if isinstance(seq, int):
            if prev_seq is not None and seq <= prev_seq:
                runs += 1  # the log was appended to by another run: its seq starts again
            prev_seq = seq
        ts = _num(ev.get("ts"))
        if ts is not None:
            first_ts = ts if first_ts is None else min(first_ts, ts)
            last_ts = ts if last_ts is None else max(last_ts, ts)
        if kind != "manifest":
            continue
        c = col(ev)
        node = Node(i, ev)
        c.nodes.append(node)
        c.syncs += 1
        c.seen(ev.get("ts"))
        for k, v in node.changes().items():
            c.changes[k] += v
        if isinstance(ev.get("client"), str):
            named_clients = True
            c.clients[ev["client"]] += 1
        flow = str(ev.get("flow"))
        node_at[(flow, (c.upstream, c.path, c.scope))] = node
        flow_col.setdefault(flow, c)
    synced = list(cols.values())

    def within(up: str, path: str) -> list[CollectionView]:
        got = containing.get((up, path))
        if got is None:
            got = []
            for c in synced:
                prefix = c.path if c.path.endswith("/") else c.path + "/"
                if c.upstream == up and (path == c.path or path.startswith(prefix)):
                    got.append(c)
            if not got:
                o = outside.get(up)
                if o is None:
                    o = outside[up] = CollectionView(up, "", outside=True)
                got = [o]
            containing[(up, path)] = got
        return got

    def resource(ev: Event) -> ResourceView:
        up = str(ev.get("upstream") or "?")
        key = (up, str(ev["resource"]))
        r = resources.get(key)
        if r is None:
            r = resources[key] = ResourceView(up, key[1])
        return r

    def anomaly_home(ev: Event) -> CollectionView:
        up = str(ev.get("upstream") or "?")
        path = str(ev["collection"])
        exact = cols.get((up, path, str(ev.get("scope") or "")))
        if exact is not None:
            return exact
        same_flow = flow_col.get(str(ev.get("flow")))
        if same_flow is not None and (same_flow.upstream, same_flow.path) == (up, path):
            return same_flow
        if by_path.get((up, path)):
            return by_path[(up, path)][0]
        return col(ev)

    for i, ev in enumerate(events):
        kind = ev["event"]
        flow = str(ev.get("flow"))
        if kind in ("token", "invalid_token"):
            c = col(ev)
            hit = node_at.get((flow, (c.upstream, c.path, c.scope)))
            if kind == "invalid_token":
                c.resets += 1
                if hit is not None:
                    hit.invalid = True
            else:
                if ev.get("kind") == "reset":
                    c.resets += 1
                if hit is not None:
                    hit.kind = str(ev.get("kind"))
        elif kind == "anomaly":
            anomalies.setdefault(str(ev["code"]), []).append(ev)
            if isinstance(ev.get("resource"), str):
                r = resource(ev)
                r.anomalies[str(ev["code"])] += 1
                r.history.append((i, ev))
                for c in within(r.upstream, r.path):
                    c.add_anomaly(ev)
                    c.marks.append((i, ev))
                    c.seen(ev.get("ts"))
            elif isinstance(ev.get("collection"), str):
                c = anomaly_home(ev)
                c.add_anomaly(ev)
                hit = node_at.get((flow, (c.upstream, c.path, c.scope)))
                if hit is not None:
                    hit.anomalies.append(ev)
                else:
                    c.marks.append((i, ev))
        elif kind == "tag":
            r = resource(ev)
            r.history.append((i, ev))
            r.tags += 1
            r.last_via = str(ev.get("via") or "?")
            if ev.get("uid"):
                r.uid = str(ev["uid"])
        elif kind == "conflict":
            r = resource(ev)
            r.history.append((i, ev))
            r.conflicts += 1
            for c in within(r.upstream, r.path):
                c.conflicts += 1
                c.marks.append((i, ev))
                c.seen(ev.get("ts"))

    notes = list(notes)
    if runs > 1:
        notes.append(
            f"the log holds {runs} runs appended one after another (seq starts again); "
            "tokens are compared across them as one session"
        )
    others = sorted(k for k in kinds if k not in _REQUIRED)
    if others:
        notes.append(
            "events of kinds this report does not show: "
            + ", ".join(f"{k} ({kinds[k]})" for k in others)
        )
    collections = sorted([*cols.values(), *outside.values()], key=CollectionView.rank)
    ranked = sorted(resources.values(), key=ResourceView.rank)
    return Analysis(
        source,
        len(events),
        kinds,
        first_ts,
        last_ts,
        runs,
        collections,
        ranked,
        anomalies,
        notes,
        named_clients,
    )


# --------------------------------------------------------------------------------------------
# Shared formatting

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def clean(s: Any) -> str:
    """A log string made safe for a terminal: control and bidi characters become escapes."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", str(s))


def _utc(ts: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if ts is None:
        return "?"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime(fmt)
    except (OverflowError, OSError, ValueError):
        return "?"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _span(first: float | None, last: float | None) -> str:
    if first is None or last is None:
        return "no timestamps"
    if _utc(first, "%Y-%m-%d") == _utc(last, "%Y-%m-%d"):
        return f"{_utc(first)} to {_utc(last, '%H:%M:%S')} UTC ({_duration(last - first)})"
    return f"{_utc(first)} to {_utc(last)} UTC ({_duration(last - first)})"


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def _counts(ch: dict[str, int]) -> str:
    parts = [f"{sign}{ch[k]}" for k, sign in zip(CHANGE_KINDS, "+~−", strict=True) if ch[k]]
    return " ".join(parts) if parts else "0 entries"


def tok(token: str | None, tail: int = 7) -> str:
    """A token for a small label: its tail, where tokens of one server differ (``…3tf+wwV``)."""
    if token is None:
        return "∅"
    return token if len(token) <= tail + 2 else "…" + token[-tail:]


def _where(ev: Event) -> str:
    up = str(ev.get("upstream") or "")
    return up + str(ev.get("resource") or ev.get("collection") or "")


# --------------------------------------------------------------------------------------------
# The terminal summary

_ANSI = {
    "error": "1;31",
    "warning": "33",
    "info": "36",
    "conflict": "35",
    "reset": "33",
    "ok": "32",
    "head": "1",
    "dim": "2",
}


def _text_collections(a: Analysis, width: int, paint: Callable[[str, str], str]) -> list[str]:
    """The collections table of the terminal summary, worst first."""
    out = [paint("Collections, worst first", "head")]
    heads = ("STATE", "SYNCS", "NEW", "CHANGED", "DELETED", "CONFLICTS", "RESETS")
    rows = [
        (
            c.state,
            f"{c.syncs:,}",
            f"{c.changes['new']:,}",
            f"{c.changes['change']:,}",
            f"{c.changes['delete']:,}",
            f"{c.conflicts:,}",
            f"{c.resets:,}",
        )
        for c in a.collections[:MAX_ROWS]
    ]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(heads)]

    def line(cells: Sequence[str], last: str, styles: Sequence[str] = ()) -> str:
        parts = []
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
            text = cell.ljust(w) if i == 0 else cell.rjust(w)
            parts.append(paint(text, styles[i]) if i < len(styles) and styles[i] else text)
        return "  " + "  ".join(parts) + "  " + last

    indent = " " * (2 + sum(widths) + 2 * len(widths))
    room = max(30, width - len(indent))
    out.append(line(heads, "COLLECTION"))
    for c, r in zip(a.collections, rows, strict=False):
        out.append(line(r, clean(c.name), (c.state,)))
        if c.scope:  # in full: two scopes of one path may differ only at the end
            out += textwrap.wrap(
                clean(c.scope),
                len(indent) + room,
                initial_indent=indent + "scope   ",
                subsequent_indent=indent + "        ",
            )
        if c.clients:
            named = [f"{clean(k)} ×{v:,}" for k, v in c.clients.most_common(4)]
            if len(c.clients) > 4:
                named.append(f"and {len(c.clients) - 4:,} more")
            out += textwrap.wrap(
                ", ".join(named),
                len(indent) + room,
                initial_indent=indent + "clients ",
                subsequent_indent=indent + "        ",
            )
        for sev, code, n in c.anomaly_rows():
            out.append(indent + paint(f"{sev:<8}", sev) + f"{n:>4}× {clean(code)}")
    if len(a.collections) > MAX_ROWS:
        out.append(f"  … and {len(a.collections) - MAX_ROWS:,} more collections")
    return out


def render_text(a: Analysis, *, top: int = 10, width: int = 100, color: bool = False) -> str:
    """The terminal summary: totals, collections worst first, anomalies explained, resources."""

    def paint(text: str, style: str) -> str:
        return f"\033[{_ANSI[style]}m{text}\033[0m" if color and style in _ANSI else text

    out: list[str] = []
    t = a.totals()
    ups = a.upstreams()
    real = [c for c in a.collections if not c.outside]
    out.append(paint(f"repltap report: {clean(a.source)}", "head"))
    out.append(
        f"  {_plural(a.total, 'event')}, {_span(a.first_ts, a.last_ts)}; "
        f"{_plural(len(real), 'collection')} on {_plural(len(ups), 'upstream')}"
    )
    anomaly_total = ", ".join(_plural(t[s], s) for s in SEVERITIES if t[s]) or "no anomalies"
    out.append(
        f"  {_plural(t['syncs'], 'sync')} · {t['new']:,} new, {t['change']:,} changed, "
        f"{t['delete']:,} deleted · {_plural(t['conflicts'], 'conflict')} · "
        f"{_plural(t['resets'], 'reset')} · {anomaly_total}"
    )
    for n in a.notes:
        out.append(f"  note: {clean(n)}")
    if not a.total:
        out.append("")
        out.append("No events: nothing replication-related was seen.")
        return "\n".join(out) + "\n"

    # Collections, worst first.
    out.append("")
    if a.collections:
        out += _text_collections(a, width, paint)
    else:
        out.append("No manifests: no collection was synced in this log.")

    # Anomalies explained.
    out.append("")
    if a.anomalies:
        out.append(paint("Anomalies: what they mean and what to do", "head"))
        wrap = max(40, width - 11)
        for code, evs in sorted(
            a.anomalies.items(),
            key=lambda kv: (_SEV_RANK.get(severity_of(kv[1][0]), 9), -len(kv[1]), kv[0]),
        ):
            sev = severity_of(evs[0])
            entry = CATALOGUE.get(code)
            where = f"{entry.side} side · {entry.spec}" if entry else "not in this catalogue"
            out.append(f"  {paint(f'{sev:<8}', sev)} {clean(code)} ×{len(evs):,}  ({where})")
            if entry:
                for text in (entry.meaning, "What to do: " + entry.advice):
                    out += ["           " + s for s in textwrap.wrap(text, wrap)]
            first = evs[0]
            who = f" ({clean(first['client'])})" if first.get("client") else ""
            example = (
                f"e.g. #{clean(first.get('seq', '?'))} flow "
                f"{clean(str(first.get('flow', '?'))[:8])}{who} {clean(_where(first))}: "
                f"{clean(first.get('detail', ''))}"
            )
            out += textwrap.wrap(
                example,
                wrap,
                initial_indent=" " * 11,
                subsequent_indent=" " * 13,
                max_lines=4,
                placeholder=" …",
            )
    else:
        out.append("No anomalies: both sides kept to the protocol as far as repltap checks it.")

    # Resources.
    shown = [r for r in a.resources if r.conflicts or r.tags or r.anomalies][:top]
    if shown:
        out.append("")
        out.append(
            paint(
                f"Resources with the most conflicts and tag changes "
                f"(top {len(shown)} of {len(a.resources):,})",
                "head",
            )
        )
        heads2 = ("CONFLICTS", "ANOMALIES", "TAG CHANGES", "LAST BY")
        rows2 = [
            (
                f"{r.conflicts:,}",
                f"{sum(r.anomalies.values()):,}",
                f"{r.tags:,}",
                clean(r.last_via or "-"),
            )
            for r in shown
        ]
        w2 = [max(len(h), *(len(x[i]) for x in rows2)) for i, h in enumerate(heads2)]
        out.append(
            "  "
            + "  ".join(
                h.rjust(w) if i < 3 else h.ljust(w)
                for i, (h, w) in enumerate(zip(heads2, w2, strict=True))
            )
            + "  RESOURCE"
        )
        for r, x in zip(shown, rows2, strict=True):
            cells = [
                v.rjust(w) if i < 3 else v.ljust(w)
                for i, (v, w) in enumerate(zip(x, w2, strict=True))
            ]
            if r.conflicts:
                cells[0] = paint(cells[0], "conflict")
            out.append("  " + "  ".join(cells) + "  " + clean(r.name))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# The HTML page


def esc(s: Any) -> str:
    """Text or attribute value for the page: every string from the log goes through here."""
    return html.escape(str(s), quote=True)


_SEV_COLOUR = {"error": "#d32f2f", "warning": "#f2a900", "info": "#0288d1"}
_OUTCOME = {  # stroke, fill, label
    "initial": ("#2e7d32", "#f1f8f1", "initial sync"),
    "advance": ("#1565c0", "#ffffff", "new token"),
    "unchanged": ("#78909c", "#f5f7f8", "no changes"),
    "reset": ("#ef6c00", "#fff3e0", "reset: full resync"),
    "invalid": ("#c62828", "#ffebee", "token rejected (475)"),
    "failed": ("#6d4c41", "#efebe9", "failed request"),
}
_VIA_COLOUR = {
    "manifest": "#607d8b",
    "PUT": "#1565c0",
    "POST": "#00897b",
    "PROPPATCH": "#6a1b9a",
    "DELETE": "#212121",
    "MOVE": "#8d6e63",
    "COPY": "#8d6e63",
    "MKCOL": "#00897b",
}
_READ_COLOUR = "#9e9e9e"

CSS = """
:root { --ink:#1d2530; --mute:#5f6b7a; --line:#d9dee5; --bg:#f6f7f9; --card:#fff; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--ink); background:var(--bg); }
header { background:#1d2530; color:#fff; padding:16px 28px 14px; }
header h1 { margin:0; font-size:20px; font-weight:600; }
header .src { color:#b8c2cf; font-size:13px; margin-top:2px; word-break:break-all; }
.cards { display:flex; flex-wrap:wrap; gap:10px; margin-top:12px; }
.card { background:#2a3441; border-radius:8px; padding:6px 14px; min-width:96px; }
.card b { display:block; font-size:22px; line-height:1.2; }
.card span { color:#b8c2cf; font-size:12px; }
.card.error b { color:#ff8a80; } .card.warning b { color:#ffd54f; }
.card.conflict b { color:#f48fb1; } .card.reset b { color:#ffb74d; }
main { padding:8px 28px 40px; }
h2 { font-size:17px; margin:26px 0 8px; }
h3 { font-size:15px; margin:0; font-weight:600; word-break:break-all; }
.note { color:var(--mute); font-size:12.5px; margin:4px 0; }
table.grid { border-collapse:collapse; background:var(--card); border:1px solid var(--line);
  font-size:13px; }
table.grid th { text-align:left; font-weight:600; color:var(--mute); font-size:11.5px;
  text-transform:uppercase; letter-spacing:.03em; padding:6px 10px;
  border-bottom:1px solid var(--line); }
table.grid td { padding:5px 10px; border-bottom:1px solid #eef1f4; vertical-align:top; }
table.grid td.n { text-align:right; font-variant-numeric:tabular-nums; }
table.grid td.zero { color:#b0b8c2; }
a { color:#1565c0; text-decoration:none; } a:hover { text-decoration:underline; }
.chip { display:inline-block; border-radius:10px; padding:0 7px; font-size:11.5px;
  margin:1px 4px 1px 0; color:#fff; white-space:nowrap; }
.chip.error { background:#d32f2f; } .chip.warning { background:#f2a900; color:#222; }
.chip.info { background:#0288d1; } .chip.conflict { background:#ad1457; }
.chip.reset { background:#ef6c00; } .chip.ok { background:#2e7d32; }
.state { font-weight:600; font-size:12px; text-transform:uppercase; }
.state.error { color:#d32f2f; } .state.warning { color:#b07800; } .state.conflict { color:#ad1457; }
.state.reset { color:#ef6c00; } .state.ok { color:#2e7d32; }
section.col { background:var(--card); border:1px solid var(--line); border-radius:8px;
  margin:14px 0; padding:12px 14px; }
section.col .meta { color:var(--mute); font-size:12.5px; margin:2px 0 6px; }
section.col .scope { font-family:ui-monospace,Menlo,Consolas,monospace; font-size:12px;
  color:#37474f; background:#f3f5f7; padding:2px 6px; border-radius:4px; word-break:break-all; }
.scroll { overflow-x:auto; border-top:1px solid #eef1f4; margin-top:8px; padding-top:4px; }
svg text { font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; }
svg .mono { font-family:ui-monospace,Menlo,Consolas,monospace; }
.legend { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:6px 12px; margin-top:12px; font-size:12.5px; color:#37474f; }
.lrow { display:flex; flex-wrap:wrap; align-items:center; gap:4px 14px; padding:2px 0; }
.lrow b { font-weight:600; min-width:96px; }
.lrow span { display:inline-flex; align-items:center; gap:5px; white-space:nowrap; }
.anom { background:var(--card); border:1px solid var(--line); border-left:5px solid #999;
  border-radius:6px; padding:8px 12px; margin:8px 0; }
.anom.error { border-left-color:#d32f2f; } .anom.warning { border-left-color:#f2a900; }
.anom.info { border-left-color:#0288d1; }
.anom h3 { font-family:ui-monospace,Menlo,Consolas,monospace; }
.anom p { margin:4px 0; } .anom .todo { font-weight:500; }
.anom ul { margin:4px 0 0; padding-left:18px; font-size:12.5px; color:#37474f; }
.anom code, td code { font-size:12px; word-break:break-all; }
.res td.path { font-family:ui-monospace,Menlo,Consolas,monospace; font-size:12px;
  overflow-wrap:anywhere; min-width:300px; max-width:420px; }
.res td.path .note { font-size:11px; }
table.res { width:100%; table-layout:fixed; }
table.res col.path { width:340px; } table.res col.n { width:96px; }
.res td.path .up { color:#90a4ae; }
footer { color:var(--mute); font-size:12px; padding:0 28px 24px; }
"""


def _title(lines: Iterable[Any]) -> str:
    return "<title>" + esc("\n".join(str(x) for x in lines if x not in (None, ""))) + "</title>"


def _node_tooltip(n: Node) -> list[str]:
    ev = n.ev
    ch = n.changes()
    lines = [
        f"#{ev.get('seq', '?')} {_utc(_num(ev.get('ts')), '%Y-%m-%d %H:%M:%S')} UTC"
        f" · flow {ev.get('flow', '?')}",
        f"{ev.get('method', '?')} → {ev.get('status', '?')} · {_OUTCOME[n.outcome][2]}",
    ]
    if ev.get("client"):
        lines.append(f"client: {ev['client']}")
    lines += [
        f"sent: {n.sent if n.sent is not None else '(none: initial sync)'}",
        f"received: {n.received if n.received is not None else '(none)'}",
        f"changes: {ch['new']} new, {ch['change']} changed, {ch['delete']} deleted",
    ]
    if ev.get("acknowledged"):
        lines.append(f"acknowledged tags: {ev['acknowledged']}")
    if ev.get("range"):
        lines.append(f"range asked: {ev['range']}")
    cr = ev.get("content_range")
    if isinstance(cr, dict):
        lines.append(f"rows {cr.get('first')}-{cr.get('last')} of {cr.get('total')}")
    if ev.get("truncated"):
        lines.append("truncated by the server")
    for a in n.anomalies:
        lines.append(f"⚠ {severity_of(a)} {a.get('code')}: {a.get('detail', '')}")
    return lines


def _mark_tooltip(ev: Event) -> list[str]:
    head = (
        f"#{ev.get('seq', '?')} {_utc(_num(ev.get('ts')), '%H:%M:%S')} · flow {ev.get('flow', '?')}"
    )
    who = f"client: {ev['client']}" if ev.get("client") else ""
    if ev["event"] == "conflict":
        return [
            head,
            f"conflict: {ev.get('method', '?')} {ev.get('resource')} → {ev.get('status', '?')}",
            who,
            f"condition named: {ev.get('sent')}",
            f"last seen on the wire: {ev.get('current')}",
        ]
    return [
        head,
        f"{severity_of(ev)} {ev.get('code')}: {_where(ev)}",
        who,
        str(ev.get("detail", "")),
    ]


def _pick_nodes(nodes: list[Node]) -> list[Node]:
    """At most MAX_NODES: every troubled sync (the latest of them), then the latest others."""
    if len(nodes) <= MAX_NODES:
        return nodes
    trouble = [n for n in nodes if n.anomalies or n.outcome in ("invalid", "reset", "failed")]
    keep = {id(n) for n in trouble[-(MAX_NODES // 2) :]}
    for n in reversed(nodes):
        if len(keep) >= MAX_NODES:
            break
        keep.add(id(n))
    return [n for n in nodes if id(n) in keep]


def _assign_lanes(c: CollectionView, named: bool) -> list[str]:
    """One lane per client; without client names, one per token chain."""
    order: list[str] = []
    if named:
        for n in c.nodes:
            n.lane = str(n.ev.get("client") or "unknown client")
            if n.lane not in order:
                order.append(n.lane)
    else:
        lane_of: dict[str, str] = {}
        for n in c.nodes:
            lane = lane_of.get(n.sent) if n.sent is not None else None
            if lane is None:
                why = (
                    "full resync"
                    if n.outcome == "reset"
                    else "initial sync"
                    if n.sent is None
                    else "token from before the log"
                )
                lane = f"chain {len(order) + 1} · {why}"
                order.append(lane)
            n.lane = lane
            if n.received is not None:
                lane_of.setdefault(n.received, lane)
    if len(order) > MAX_LANES:
        rest = set(order[MAX_LANES - 1 :])
        other = f"{len(rest)} more"
        for n in c.nodes:
            if n.lane in rest:
                n.lane = other
        order = [*order[: MAX_LANES - 1], other]
    return order


def _timeline(c: CollectionView, cid: int, named: bool) -> str:
    """The collection's token chain as SVG: one lane per client, one node per sync."""
    lanes = _assign_lanes(c, named)
    shown = _pick_nodes(c.nodes)
    left, top, slot, gap_w, lane_h, nw, nh = 190, 34, 150, 74, 62, 134, 38
    # Slots left to right: a node, or a gap standing for syncs not drawn.
    slots: list[tuple[float, Node | None, int]] = []  # (x centre, node, hidden count)
    x = float(left)
    index = {id(n): i for i, n in enumerate(c.nodes)}
    prev = -1
    for n in shown:
        i = index[id(n)]
        if i - prev > 1:
            slots.append((x + gap_w / 2, None, i - prev - 1))
            x += gap_w
        slots.append((x + slot / 2, n, 0))
        x += slot
        prev = i
    if prev < len(c.nodes) - 1:
        slots.append((x + gap_w / 2, None, len(c.nodes) - 1 - prev))
        x += gap_w
    marks = c.marks[-MAX_MARKS:]
    has_marks = bool(marks)
    width = int(max(x + 24, left + 320))
    lane_y = {name: top + k * lane_h for k, name in enumerate(lanes)}
    marks_y = top + len(lanes) * lane_h
    height = marks_y + (54 if has_marks else 6)
    out = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="token chain of {esc(c.name)}">',
        f'<defs><marker id="arr{cid}" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" '
        f'markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#90a4ae"/></marker>'
        f'<marker id="arrbad{cid}" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" '
        f'markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#d32f2f"/></marker>'
        "</defs>",
    ]
    # Lanes.
    for k, name in enumerate(lanes):
        y = float(lane_y[name])
        fill = "#f8f9fb" if k % 2 == 0 else "#ffffff"
        out.append(f'<rect x="0" y="{y}" width="{width}" height="{lane_h}" fill="{fill}"/>')
        label = name if len(name) <= 26 else name[:25] + "…"
        out.append(
            f'<text x="10" y="{y + lane_h / 2 + 4}" font-size="12" fill="#37474f">'
            f"{_title([name])}{esc(label)}</text>"
        )
    if has_marks:
        out.append(f'<rect x="0" y="{marks_y}" width="{width}" height="48" fill="#fdf3f6"/>')
        out.append(
            f'<text x="10" y="{marks_y + 20}" font-size="12" fill="#ad1457">'
            f'its resources:</text><text x="10" y="{marks_y + 35}" font-size="12" '
            f'fill="#ad1457">conflicts, anomalies</text>'
        )
    out.append(f'<line x1="{left}" y1="{top - 4}" x2="{width}" y2="{top - 4}" stroke="#cfd8dc"/>')
    # Time axis and gaps.
    last_day = None
    # When syncs come within a second, seconds alone would label them alike: add milliseconds.
    seconds = [_utc(_num(n.ev.get("ts")), "%H:%M:%S") for _, n, _ in slots if n is not None]
    fine = any(x == y for x, y in pairwise(seconds))
    for cx, sn, hidden in slots:
        if sn is None:
            out.append(
                f'<line x1="{cx}" y1="{top}" x2="{cx}" y2="{marks_y}" stroke="#b0bec5" '
                f'stroke-dasharray="3 4"/><text x="{cx}" y="{top - 10}" font-size="11" '
                f'text-anchor="middle" fill="#78909c">⋯ {hidden:,}</text>'
                f'<text x="{cx}" y="{top + 12}" font-size="10" text-anchor="middle" '
                f'fill="#90a4ae">{_title([f"{hidden:,} syncs not drawn"])}not drawn</text>'
            )
            continue
        ts = _num(sn.ev.get("ts"))
        day = _utc(ts, "%Y-%m-%d")
        label = _utc(ts, "%H:%M:%S") if day == last_day else _utc(ts, "%m-%d %H:%M:%S")
        if fine and ts is not None:
            label += f".{int(ts * 1000) % 1000:03d}"
        last_day = day
        out.append(
            f'<text x="{cx}" y="{top - 10}" font-size="11" text-anchor="middle" '
            f'fill="#78909c">{esc(label)}</text>'
        )
    # Token edges: from the sync that handed a token out to the sync that sent it back.
    pos = {id(n): (cx, lane_y[n.lane] + lane_h / 2) for cx, n, _ in slots if n is not None}
    lane_xs: dict[str, list[float]] = {}
    for cx, sn, _ in slots:
        if sn is not None:
            lane_xs.setdefault(sn.lane, []).append(cx)
    holder: dict[str, Node] = {}
    edges: list[str] = []
    for n in c.nodes:
        src = holder.get(n.sent) if n.sent is not None else None
        if src is not None and id(src) in pos and id(n) in pos:
            (x1, y1), (x2, y2) = pos[id(src)], pos[id(n)]
            bad = any(a.get("code") == "token-regressed" for a in n.anomalies)
            colour, marker = ("#d32f2f", f"arrbad{cid}") if bad else ("#90a4ae", f"arr{cid}")
            dash = ' stroke-dasharray="5 3"' if bad else ""
            between = y1 == y2 and any(x1 < x < x2 for x in lane_xs[n.lane])
            if y1 == y2 and not between:
                d = f"M{x1 + nw / 2},{y1} L{x2 - nw / 2 - 1},{y2}"
            elif y1 == y2:  # back over the lane's other syncs: arc above them
                yt = y1 - nh / 2
                d = f"M{x1},{yt} C{x1},{yt - 20} {x2},{yt - 20} {x2},{yt - 1}"
            else:
                d = (
                    f"M{x1 + nw / 2},{y1} C{x1 + nw / 2 + 40},{y1} {x2 - nw / 2 - 40},{y2} "
                    f"{x2 - nw / 2 - 1},{y2}"
                )
            edges.append(
                f'<path class="edge{" regressed" if bad else ""}" d="{d}" fill="none" '
                f'stroke="{colour}" stroke-width="1.6"{dash} '
                f'marker-end="url(#{marker})">{_title(["token " + str(n.sent)])}</path>'
            )
        if n.received is not None and n.outcome != "invalid":
            holder[n.received] = n
        elif n.sent is not None and n.outcome == "unchanged":
            holder[n.sent] = n
    out += edges
    # Sync nodes.
    for cx, sn, _ in slots:
        if sn is None:
            continue
        n = sn
        stroke, fill, _label = _OUTCOME[n.outcome]
        y = lane_y[n.lane] + (lane_h - nh) / 2
        x0 = cx - nw / 2
        dash = ' stroke-dasharray="4 2"' if n.outcome == "failed" else ""
        if n.outcome == "invalid":
            second = f"✖ {n.status or ''} token rejected"
        elif n.outcome == "failed":
            second = f"status {n.status}"
        elif n.outcome == "unchanged" and not any(n.changes().values()):
            second = "no changes"
        else:
            second = ("↺ " if n.outcome == "reset" else "") + _counts(n.changes())
        received = "✖" if n.outcome == "invalid" else tok(n.received)
        if n.outcome == "unchanged" and n.received is None:
            received = "same"
        out.append(
            f'<g class="sync">{_title(_node_tooltip(n))}'
            f'<rect x="{x0}" y="{y}" width="{nw}" height="{nh}" rx="6" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="{2.2 if n.outcome != "advance" else 1.4}"'
            f"{dash}/>"
            f'<text class="mono" x="{cx}" y="{y + 15}" font-size="10.5" '
            f'text-anchor="middle" fill="#263238">{esc(tok(n.sent))} → '
            f"{esc(received)}</text>"
            f'<text x="{cx}" y="{y + 30}" font-size="11" text-anchor="middle" '
            f'fill="{stroke}" font-weight="600">{esc(second)}</text>'
        )
        worst = n.worst()
        if worst:
            bx, by = x0 + nw - 2, y + 1
            out.append(
                f'<circle cx="{bx}" cy="{by}" r="9" fill="{_SEV_COLOUR[worst]}" '
                f'stroke="#fff" stroke-width="1.5"/><text x="{bx}" y="{by + 4}" '
                f'font-size="11" font-weight="700" text-anchor="middle" fill="#fff">'
                f"{len(n.anomalies) if len(n.anomalies) > 1 else '!'}</text>"
            )
        out.append("</g>")
    # Conflicts and write anomalies, placed between the syncs they happened between.
    if has_marks:
        orders = [n.order for _, n, _ in slots if n is not None]
        xs = [cx for cx, n, _ in slots if n is not None]
        last_order = max([o for o, _ in marks] + orders) + 1
        for k, (o, ev) in enumerate(marks):
            j = bisect_right(orders, o) - 1
            if not xs:
                mx = left + 20 + (width - left - 40) * (k + 1) / (len(marks) + 1)
            elif j < 0:
                mx = left + (xs[0] - left) * (o + 1) / (orders[0] + 1)
            elif j + 1 < len(xs):
                mx = xs[j] + (xs[j + 1] - xs[j]) * (o - orders[j]) / (orders[j + 1] - orders[j])
            else:
                mx = xs[j] + (slot / 2 - 6) * (o - orders[j]) / (last_order - orders[j])
            my = marks_y + (17 if k % 2 == 0 else 33)
            tip = _title(_mark_tooltip(ev))
            if ev["event"] == "conflict":
                out.append(
                    f'<g class="conflict">{tip}<rect x="{mx - 6}" y="{my - 6}" '
                    f'width="12" height="12" fill="#ad1457" '
                    f'transform="rotate(45 {mx} {my})"/></g>'
                )
            else:
                colour = _SEV_COLOUR[severity_of(ev)]
                out.append(
                    f'<g class="anomaly">{tip}<path d="M{mx},{my - 7} L{mx + 7},{my + 6} '
                    f'L{mx - 7},{my + 6} z" fill="{colour}"/></g>'
                )
    out.append("</svg>")
    return "".join(out)


def _history(r: ResourceView) -> str:
    """A resource's tag history as a small SVG strip."""
    steps = r.history[-MAX_STEPS:]
    slot, left, h = 100, 14, 58
    width = left + slot * len(steps) + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" '
        f'viewBox="0 0 {width} {h}" role="img" aria-label="tag history">'
    ]
    if len(steps) > 1:
        out.append(
            f'<line x1="{left + slot / 2}" y1="26" x2="{left + slot * (len(steps) - 0.5)}" '
            f'y2="26" stroke="#cfd8dc" stroke-width="2"/>'
        )
    for k, (_o, ev) in enumerate(steps):
        cx = left + slot * k + slot / 2
        when = f"#{ev.get('seq', '?')} {_utc(_num(ev.get('ts')), '%Y-%m-%d %H:%M:%S')} UTC"
        kind = ev["event"]
        if kind == "tag":
            via = str(ev.get("via") or "?")
            colour = _VIA_COLOUR.get(via, _READ_COLOUR)
            gone = ev.get("to") is None
            tip = _title(
                [
                    when,
                    f"{via} → {ev.get('status', '?')}",
                    f"from: {ev.get('from')}",
                    f"to: {ev.get('to') if not gone else '(deleted or moved away)'}",
                    f"uid: {ev.get('uid')}",
                    f"flow {ev.get('flow', '?')}",
                    f"client: {ev['client']}" if ev.get("client") else "",
                ]
            )
            shape = (
                f'<rect x="{cx - 7}" y="19" width="14" height="14" fill="{colour}"/>'
                if gone
                else f'<circle cx="{cx}" cy="26" r="7" fill="{colour}"/>'
            )
            top_label = "deleted" if gone else tok(str(ev.get("to")), 8)
            bottom = via if via != "manifest" else "manifest"
        elif kind == "conflict":
            colour = "#ad1457"
            tip = _title(
                [
                    when,
                    f"conflict: {ev.get('method', '?')} → {ev.get('status', '?')}",
                    f"condition named: {ev.get('sent')}",
                    f"last seen on the wire: {ev.get('current')}",
                    f"flow {ev.get('flow', '?')}",
                    f"client: {ev['client']}" if ev.get("client") else "",
                ]
            )
            shape = (
                f'<path d="M{cx - 7},19 L{cx + 7},33 M{cx + 7},19 L{cx - 7},33" '
                f'stroke="{colour}" stroke-width="3.5" stroke-linecap="round"/>'
            )
            top_label = f"{ev.get('status', '')} conflict"
            bottom = str(ev.get("method", "?"))
        else:
            colour = _SEV_COLOUR[severity_of(ev)]
            tip = _title(
                [
                    when,
                    f"{severity_of(ev)} {ev.get('code')}",
                    ev.get("detail", ""),
                    f"client: {ev['client']}" if ev.get("client") else "",
                ]
            )
            shape = (
                f'<path d="M{cx},18 L{cx + 8},33 L{cx - 8},33 z" fill="{colour}" stroke="#fff"/>'
            )
            top_label = ""
            bottom = str(ev.get("code", ""))
            bottom = bottom if len(bottom) <= 16 else bottom[:15] + "…"
        out.append(
            f"<g>{tip}{shape}"
            f'<text class="mono" x="{cx}" y="12" font-size="10" text-anchor="middle" '
            f'fill="{colour}">{esc(top_label)}</text>'
            f'<text x="{cx}" y="49" font-size="10.5" text-anchor="middle" '
            f'fill="#546e7a">{esc(bottom)}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)


def _icon(body: str, w: int = 28) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="18" '
        f'viewBox="0 0 {w} 18" aria-hidden="true">{body}</svg>'
    )


def _legend() -> str:
    """What the shapes and colours mean."""
    items: list[tuple[str, str]] = []
    for outcome in ("initial", "advance", "unchanged", "reset", "invalid", "failed"):
        stroke, fill, label = _OUTCOME[outcome]
        dash = ' stroke-dasharray="4 2"' if outcome == "failed" else ""
        items.append(
            (
                _icon(
                    f'<rect x="1" y="1" width="26" height="16" rx="4" fill="{fill}" '
                    f'stroke="{stroke}" stroke-width="2"{dash}/>'
                ),
                label,
            )
        )
    for sev in SEVERITIES:
        items.append(
            (
                _icon(
                    f'<circle cx="9" cy="9" r="8" fill="{_SEV_COLOUR[sev]}"/>'
                    '<text x="9" y="13" font-size="11" font-weight="700" '
                    'text-anchor="middle" fill="#fff">!</text>',
                    18,
                ),
                f"{sev} on a sync",
            )
        )
    items.append(
        (
            _icon(
                '<rect x="4" y="4" width="10" height="10" fill="#ad1457" '
                'transform="rotate(45 9 9)"/>',
                18,
            ),
            "conflict (412 on a write)",
        )
    )
    items.append(
        (
            _icon(f'<path d="M9,2 L16,15 L2,15 z" fill="{_SEV_COLOUR["warning"]}"/>', 18),
            "anomaly on a write",
        )
    )
    items.append(
        (_icon('<path d="M1,9 L27,9" stroke="#90a4ae" stroke-width="1.6"/>'), "token handed on")
    )
    items.append(
        (
            _icon(
                '<path d="M1,9 L27,9" stroke="#d32f2f" stroke-width="1.6" stroke-dasharray="5 3"/>'
            ),
            "old token sent again",
        )
    )
    tags: list[tuple[str, str]] = []
    for via in ("manifest", "PUT", "POST", "PROPPATCH", "DELETE", "MOVE"):
        tags.append((_icon(f'<circle cx="9" cy="9" r="6" fill="{_VIA_COLOUR[via]}"/>', 18), via))
    tags.append(
        (_icon(f'<circle cx="9" cy="9" r="6" fill="{_READ_COLOUR}"/>', 18), "read (GET, PROPFIND)")
    )
    tags.append(
        (
            _icon('<rect x="3" y="3" width="12" height="12" fill="#212121"/>', 18),
            "deleted or moved away",
        )
    )
    tags.append(
        (
            _icon(
                '<path d="M3,3 L15,15 M15,3 L3,15" stroke="#ad1457" stroke-width="3" '
                'stroke-linecap="round"/>',
                18,
            ),
            "conflict",
        )
    )

    def row(title: str, entries: list[tuple[str, str]]) -> str:
        return (
            f'<div class="lrow"><b>{title}</b>'
            + "".join(f"<span>{icon}{esc(label)}</span>" for icon, label in entries)
            + "</div>"
        )

    return (
        '<div class="legend">' + row("Token chains", items) + row("Tag histories", tags) + "</div>"
    )


def _chips(c: CollectionView) -> str:
    return "".join(
        f'<span class="chip {esc(sev)}" title="{esc(sev)}">{n}× {esc(code)}</span>'
        for sev, code, n in c.anomaly_rows()
    )


def render_html(a: Analysis) -> str:
    """The whole report as one self-contained page (inline CSS and SVG, no script)."""
    t = a.totals()
    real = [c for c in a.collections if not c.outside]
    p: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing on the page may load or run anything: the log's strings are untrusted.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>repltap report · {esc(Path(a.source).name)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<header><h1>Replication report</h1>",
        f'<div class="src">{esc(a.source)} · {a.total:,} events · '
        f"{esc(_span(a.first_ts, a.last_ts))} · {_plural(len(real), 'collection')} on "
        f"{_plural(len(a.upstreams()), 'upstream')}</div>",
        '<div class="cards">',
    ]
    cards = [
        ("", t["syncs"], "syncs"),
        ("", f"+{t['new']:,} ~{t['change']:,} −{t['delete']:,}", "new · changed · deleted"),
        ("conflict" if t["conflicts"] else "", t["conflicts"], "conflicts (412)"),
        ("reset" if t["resets"] else "", t["resets"], "resets (475 / full resync)"),
        ("error" if t["error"] else "", t["error"], "errors"),
        ("warning" if t["warning"] else "", t["warning"], "warnings"),
    ]
    for cls, value, label in cards:
        shown = f"{value:,}" if isinstance(value, int) else value
        p.append(f'<div class="card {cls}"><b>{esc(shown)}</b><span>{esc(label)}</span></div>')
    p.append("</div></header><main>")
    for n in a.notes:
        p.append(f'<p class="note">Note: {esc(n)}</p>')
    if not a.total:
        p.append("<h2>No events</h2><p>Nothing replication-related was seen.</p>")
    p.append(_legend())

    # The collections, worst first.
    if a.collections:
        p.append("<h2>Collections, worst first</h2>")
        p.append(
            '<table class="grid"><tr><th>state</th><th>collection</th><th>syncs</th>'
            "<th>new</th><th>changed</th><th>deleted</th><th>conflicts</th><th>resets</th>"
            "<th>anomalies</th></tr>"
        )
        for k, c in enumerate(a.collections[:MAX_ROWS]):
            name = esc(c.name)
            if k < MAX_TIMELINES:
                name = f'<a href="#c{k}">{name}</a>'
            if c.scope:
                name += f'<div class="note">{esc(c.scope)}</div>'
            nums = "".join(
                f'<td class="n{" zero" if not v else ""}">{v:,}</td>'
                for v in (
                    c.syncs,
                    c.changes["new"],
                    c.changes["change"],
                    c.changes["delete"],
                    c.conflicts,
                    c.resets,
                )
            )
            p.append(
                f'<tr><td><span class="state {c.state}">{c.state}</span></td>'
                f"<td>{name}</td>{nums}<td>{_chips(c)}</td></tr>"
            )
        p.append("</table>")
        if len(a.collections) > MAX_ROWS:
            p.append(
                f'<p class="note">{len(a.collections) - MAX_ROWS:,} more collections '
                "are not listed (see the terminal report).</p>"
            )

    # Each collection's token chain.
    drawn = a.collections[:MAX_TIMELINES]
    if drawn:
        p.append("<h2>Token chains</h2>")
        p.append(
            '<p class="note">Each box is one sync: the token the client sent → the token '
            "it got back, and what came back with it. Lanes are "
            + (
                "clients"
                if a.named_clients
                else "token chains (the log does not name "
                "clients: a chain starts at an initial sync or at a token issued before "
                "the log began)"
            )
            + ". Arrows hand a token from the sync that issued it to the sync that sent it "
            "back. Hover over anything for the details.</p>"
        )
    for k, c in enumerate(drawn):
        clients = f" · {_plural(len(c.clients), 'client')}" if c.clients else ""
        p.append(
            f'<section class="col" id="c{k}"><h3>{esc(c.name)} '
            f'<span class="state {c.state}">{c.state}</span></h3>'
        )
        if c.scope:
            p.append(f'<div class="meta">scope <span class="scope">{esc(c.scope)}</span></div>')
        p.append(
            f'<div class="meta">{esc(c.protocol)} · {_plural(c.syncs, "sync")} · '
            f"{c.changes['new']:,} new, {c.changes['change']:,} changed, "
            f"{c.changes['delete']:,} deleted · {_plural(c.conflicts, 'conflict')} · "
            f"{_plural(c.resets, 'reset')}{clients} · "
            f"{esc(_span(c.first_ts, c.last_ts))} {_chips(c)}</div>"
        )
        if c.nodes or c.marks:
            if len(c.nodes) > MAX_NODES:
                p.append(
                    f'<p class="note">{len(c.nodes):,} syncs: the {MAX_NODES} drawn are '
                    "the latest, and every sync with a reset, a rejected token or an "
                    "anomaly among them.</p>"
                )
            if len(c.marks) > MAX_MARKS:
                p.append(
                    f'<p class="note">Only the latest {MAX_MARKS} of {len(c.marks):,} '
                    "conflicts and write anomalies are drawn.</p>"
                )
            p.append(f'<div class="scroll">{_timeline(c, k, a.named_clients)}</div>')
        p.append("</section>")
    if len(a.collections) > MAX_TIMELINES:
        p.append(
            f'<p class="note">{len(a.collections) - MAX_TIMELINES:,} more collections '
            "have no timeline here: the worst ones come first.</p>"
        )

    # What the anomalies mean.
    if a.anomalies:
        p.append('<h2 id="anomalies">Anomalies: what they mean and what to do</h2>')
        for code, evs in sorted(
            a.anomalies.items(),
            key=lambda kv: (_SEV_RANK.get(severity_of(kv[1][0]), 9), -len(kv[1]), kv[0]),
        ):
            sev = severity_of(evs[0])
            entry = CATALOGUE.get(code)
            p.append(
                f'<div class="anom {esc(sev)}"><h3>{esc(code)} '
                f'<span class="chip {esc(sev)}">{esc(sev)}</span> ×{len(evs):,}</h3>'
            )
            if entry:
                p.append(
                    f"<p>{esc(entry.meaning)}</p>"
                    f'<p class="todo">What to do: {esc(entry.advice)}</p>'
                    f'<p class="note">{esc(entry.side)} side · {esc(entry.spec)}</p>'
                )
            else:
                p.append('<p class="note">Not in this version\'s anomaly catalogue.</p>')
            p.append("<ul>")
            for e in evs[:5]:
                p.append(
                    f"<li>#{esc(e.get('seq', '?'))} {esc(_utc(_num(e.get('ts')), '%H:%M:%S'))}"
                    f" <code>{esc(_where(e))}</code>: {esc(e.get('detail', ''))}</li>"
                )
            if len(evs) > 5:
                p.append(f"<li>… and {len(evs) - 5:,} more</li>")
            p.append("</ul></div>")

    # Resources and their tag histories.
    busy = [r for r in a.resources if r.history]
    if busy:
        shown = busy[:MAX_RESOURCES]
        p.append('<h2 id="resources">Resources: tag histories</h2>')
        note = (
            f"The {len(shown):,} of {len(busy):,} resources with the most conflicts, "
            "anomalies and tag changes"
            if len(busy) > len(shown)
            else f"All {len(busy):,} resources seen, those with the most conflicts, "
            "anomalies and tag changes first"
        )
        p.append(
            f'<p class="note">{note}; each dot is a new tag, labelled with what changed '
            f"it (the latest {MAX_STEPS} steps of each).</p>"
        )
        p.append(
            '<table class="grid res"><colgroup><col class="path"><col class="n"><col class="n">'
            '<col class="n"><col></colgroup><tr><th>resource</th><th>conflicts</th>'
            "<th>anomalies</th><th>tag changes</th><th>history</th></tr>"
        )
        for r in shown:
            uid = f'<div class="note">{esc(r.uid)}</div>' if r.uid else ""
            nums = "".join(
                f'<td class="n{" zero" if not v else ""}">{v:,}</td>'
                for v in (r.conflicts, sum(r.anomalies.values()), r.tags)
            )
            p.append(
                f'<tr><td class="path"><span class="up">{esc(r.upstream)}</span>'
                f"{esc(r.path)}{uid}</td>{nums}"
                f'<td><div class="scroll">{_history(r)}</div></td></tr>'
            )
        p.append("</table>")
    p.append("</main>")
    p.append(f"<footer>repltap {esc(__version__)} · event log v1 · times in UTC</footer>")
    p.append("</body></html>")
    return "\n".join(p) + "\n"


# --------------------------------------------------------------------------------------------
# The command


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``repltap report``."""
    p.add_argument("path", help="a JSON Lines event log (repl_log) or a mitmproxy recording")
    p.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML page")
    p.add_argument(
        "--top",
        type=int,
        default=10,
        metavar="N",
        help="resources listed in the terminal summary (default 10)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the summary (and write the page); 2 on input the report cannot read."""
    try:
        events, notes = read_events(args.path)
    except InputError as e:
        print(f"repltap report: {e}", file=sys.stderr)
        return 2
    a = analyse(events, str(args.path), notes)
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    width = min(max(shutil.get_terminal_size((100, 24)).columns, 60), 120)
    sys.stdout.write(render_text(a, top=max(args.top, 0), width=width, color=color))
    if args.html:
        try:
            Path(args.html).write_text(render_html(a), encoding="utf-8")
        except OSError as e:
            print(
                f"repltap report: {args.html}: cannot write it: {e.strerror or e}", file=sys.stderr
            )
            return 2
        print(f"repltap report: wrote {args.html}", file=sys.stderr)
    return 0
