"""Events from a recording, without a proxy: the same decoding and tracking as a live run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mitmproxy import http, io

from .mitm.decode import decode_flow
from .mitm.track import flow_context
from .protocol import Hints
from .tracker import Tracker


def read_flows(path: str | Path) -> list[http.HTTPFlow]:
    """The HTTP flows of a mitmproxy flow file, in recorded order."""
    with open(path, "rb") as fo:
        return [f for f in io.FlowReader(fo).stream() if isinstance(f, http.HTTPFlow)]


def events_from_flows(
    flows: list[http.HTTPFlow], tracker: Tracker | None = None
) -> list[dict[str, Any]]:
    """Decode and track flows in order; the events, as the live run logged them."""
    tracker = tracker or Tracker()
    hints = Hints()
    out: list[dict[str, Any]] = []
    for flow in flows:
        s = decode_flow(flow, hints=hints)
        ts, client = flow_context(flow)
        # Faults injected live are facts of the recording, logged before the tracker's events
        # for the same flow, as the live run logged them.
        recorded = flow.metadata.get("repl")
        faults = recorded.get("fault") if isinstance(recorded, dict) else None
        if isinstance(faults, dict):
            faults = [faults]
        for rec in faults or ():
            if isinstance(rec, dict):
                protocol = (s or {}).get("protocol", "exchange")
                out.append(tracker.event("fault", flow=flow.id, ts=ts, protocol=protocol, **rec))
        if s is None:
            continue
        out += tracker.observe(s, flow=flow.id, ts=ts, client=client)
    return out


def events_from_recording(path: str | Path) -> list[dict[str, Any]]:
    """The events of a recorded session (raises OSError, or FlowReadException if unreadable)."""
    return events_from_flows(read_flows(path))
