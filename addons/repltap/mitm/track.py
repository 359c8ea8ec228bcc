"""The tracker addon: feeds each finished flow's summary to the tracker, in completion order,
and hands the events to the sinks. Commands ``repl.state`` and ``repl.anomalies``."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from mitmproxy import command, http

from ..tracker import CATALOGUE, Event, TagRun, Tracker, client_id
from .decode import META_KEY, answered, raw_values

logger = logging.getLogger(__name__)

# The kinds the tracker itself emits; a flow's other events come from other addons.
_TRACKER_EVENTS = frozenset(("manifest", "token", "tag", "conflict", "invalid_token", "anomaly"))


class Sink(Protocol):
    """Something that receives the events of each flow: dicts, and TagRuns (a manifest's tag
    events of resources new to the tracker, see repltap.tracker.TagRun) in their place."""

    def write(self, flow: http.HTTPFlow, events: list[Event]) -> None: ...


def flow_context(flow: http.HTTPFlow) -> tuple[float, str]:
    """(timestamp, client) of a finished flow, from what a flow file keeps too."""
    if flow.response is not None and flow.response.timestamp_end:
        ts = flow.response.timestamp_end
    elif flow.error is not None:
        ts = flow.error.timestamp
    else:
        ts = flow.request.timestamp_start
    peer = flow.client_conn.peername
    return round(ts, 6), client_id(peer[0] if peer else None, _user_agent(flow.request.headers))


def _user_agent(headers: http.Headers) -> str | None:
    """``headers.get("user-agent")``, from the raw fields (see :func:`raw_values`)."""
    values = raw_values(headers, b"user-agent")
    if not values:
        return None
    return ", ".join(v.decode("utf-8", "surrogateescape") for v in values)


class Track:
    """Follow the tokens of every decoded flow."""

    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self.tracker = Tracker()
        self.sinks = list(sinks)

    def response(self, flow: http.HTTPFlow) -> None:
        self._observe(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if not answered(flow):
            self._observe(flow)

    def _observe(self, flow: http.HTTPFlow) -> None:
        s = flow.metadata.get(META_KEY)
        if not isinstance(s, dict) or "request" not in s:
            return
        ts, client = flow_context(flow)
        events = self.tracker.observe_compact(s, flow=flow.id, ts=ts, client=client)
        # The flow keeps what a person looks for on it; per-entry tag events stay in the log.
        kept: list[dict[str, Any]] = []
        tags = 0
        for e in events:
            if type(e) is TagRun:
                tags += len(e)
            elif e["event"] == "tag":  # type: ignore[index]
                tags += 1
            else:
                kept.append(e)  # type: ignore[arg-type]
        others = [e for e in s.get("events") or [] if e.get("event") not in _TRACKER_EVENTS]
        s["events"] = others + kept  # cache, fault or replay events logged for it earlier stay
        s["tag_events"] = tags
        s["anomalies"] = [e["code"] for e in kept if e["event"] == "anomaly"]
        for sink in self.sinks:
            sink.write(flow, events)

    def emit(
        self, flow: http.HTTPFlow, event: str, *, ts: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Log an event of another feature (cache, fault, replay) for ``flow``: numbered with
        the tracker's events, written to the same sinks, and kept on the flow. ``ts`` defaults
        to the flow's own time."""
        if ts is None:
            ts, _ = flow_context(flow)
        s = flow.metadata.get(META_KEY)
        protocol = s.get("protocol", "exchange") if isinstance(s, dict) else "exchange"
        ev = self.tracker.event(event, flow=flow.id, ts=ts, protocol=protocol, **fields)
        if isinstance(s, dict):
            s.setdefault("events", []).append(ev)
        for sink in self.sinks:
            sink.write(flow, [ev])
        return ev

    @command.command("repl.state")
    def state(self) -> str:
        """Current token chains per collection and tag histories per resource, as JSON."""
        return json.dumps(self.tracker.state(), indent=2, ensure_ascii=False)

    @command.command("repl.anomalies")
    def anomalies(self) -> str:
        """The latest anomalies (up to 1,000), one line each, then every code seen with its
        count and what it means."""
        lines = []
        for a in self.tracker.anomalies:
            where = a.get("collection") or a.get("resource") or ""
            lines.append(f"#{a['seq']} {a['severity']:<7} {a['code']:<28} {where}: {a['detail']}")
        counts = self.tracker.anomaly_counts
        if not counts:
            return "no anomalies"
        total = sum(counts.values())
        if total > len(lines):
            lines.insert(0, f"the latest {len(lines)} of {total} anomalies (the log has all):")
        lines.append("")
        lines += [
            f"{c} ({counts[c]}x): {CATALOGUE[c].meaning} {CATALOGUE[c].advice}"
            for c in sorted(counts)
        ]
        return "\n".join(lines)
