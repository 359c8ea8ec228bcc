"""Event sinks: the JSON Lines event log (``repl_log``) and marks and comments on flows."""

from __future__ import annotations

import logging
import os
from typing import IO, Any, Optional

from mitmproxy import ctx, exceptions, http

from ..tracker import Event, TagRun, count_events, encode_event

logger = logging.getLogger(__name__)


MARK_ANOMALY = ":warning:"
MARK_CONFLICT = ":crossed_swords:"


class Log:
    """Append every event to the ``repl_log`` file, one JSON object a line, flushed."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.file: IO[str] | None = None
        self.written = 0

    def load(self, loader: Any) -> None:
        loader.add_option(
            "repl_log",
            Optional[str],  # noqa: UP045 - mitmproxy's option type check needs typing.Optional
            None,
            "Append repltap's events to this file as JSON Lines (one event a line, flushed as "
            "it happens).",
        )

    def configure(self, updated: set[str]) -> None:
        if "repl_log" not in updated:
            return
        path = ctx.options.repl_log
        if path == self.path:
            return
        self._close()
        if path:
            path = os.path.expanduser(path)
            try:
                self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            except OSError as e:
                raise exceptions.OptionsError(f"repl_log: cannot open {path}: {e.strerror}") from e
        self.path = path

    def write(self, flow: http.HTTPFlow, events: list[Event]) -> None:
        """Log the events of one flow and mark the flow if something went wrong."""
        if self.file is not None and events:
            self.file.write(
                "".join(
                    e.json_lines() if type(e) is TagRun else encode_event(e) + "\n" for e in events
                )
            )
            self.file.flush()
            self.written += count_events(events)
        notes = []
        for e in events:
            if type(e) is not dict:
                continue  # a TagRun: new resources' tags, nothing to mark
            if e["event"] == "anomaly" and e["severity"] in ("warning", "error"):
                notes.append(f"⚠ {e['code']}: {e['detail']}")
                if not flow.marked:
                    flow.marked = MARK_ANOMALY
            elif e["event"] == "conflict":
                notes.append(f"⚔ conflict: {e['method']} with {e['sent']}, current {e['current']}")
                if not flow.marked:
                    flow.marked = MARK_CONFLICT
        new = [n for n in notes if n not in flow.comment]
        if new:
            flow.comment = "\n".join([flow.comment, *new]) if flow.comment else "\n".join(new)

    def done(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
