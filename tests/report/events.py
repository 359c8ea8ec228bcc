"""Hand-made event logs in the shape of the contract (design.md, version 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from repltap.tracker import CATALOGUE

UP = "mail.example.com:80"
START = 1772442000.0  # 2026-03-02 09:00:00 UTC


class Log:
    """Events appended in order, with increasing seq and ts."""

    def __init__(self, seq: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.seq = seq
        self.flows = 0

    def add(self, event: str, flow: str | None = None, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        ev = {
            "v": 1,
            "ts": START + self.seq,
            "seq": self.seq,
            "flow": flow or self.flow(),
            "event": event,
            "protocol": "exchange",
            **fields,
        }
        self.events.append(ev)
        return ev

    def flow(self) -> str:
        self.flows += 1
        return f"flow-{self.flows:04d}"

    def manifest(
        self,
        coll: str,
        sent: str | None,
        received: str | None,
        *,
        new: int = 0,
        change: int = 0,
        delete: int = 0,
        status: int = 207,
        kind: str | None = None,
        upstream: str = UP,
        scope: str | None = None,
        client: str | None = None,
    ) -> str:
        """A manifest and its token event; returns the flow id."""
        flow = self.flow()
        where: dict[str, Any] = {"collection": coll, "upstream": upstream}
        if scope:
            where["scope"] = scope
        extra = {"client": client} if client else {}
        self.add(
            "manifest",
            flow,
            **where,
            method="SEARCH",
            status=status,
            sent=sent,
            received=received,
            changes={"new": new, "change": change, "delete": delete},
            acknowledged=0,
            range=None,
            content_range=None,
            limit=None,
            truncated=False,
            **extra,
        )
        if status == 475:
            self.add("invalid_token", flow, **where, sent=sent, status=status)
            self.add("token", flow, **where, **{"from": sent, "to": None}, kind="rejected")
            return flow
        if kind is None:
            kind = (
                "initial"
                if sent is None
                else ("unchanged" if received in (None, sent) else "advance")
            )
        self.add("token", flow, **where, **{"from": sent, "to": received or sent}, kind=kind)
        return flow

    def anomaly(self, code: str, flow: str | None = None, **where: Any) -> None:
        where.setdefault("upstream", UP)
        sev = CATALOGUE[code].severity if code in CATALOGUE else where.pop("severity", "warning")
        self.add(
            "anomaly",
            flow,
            code=code,
            severity=sev,
            detail=where.pop("detail", f"{code} happened"),
            **where,
        )

    def conflict(self, resource: str, *, upstream: str = UP, method: str = "PUT") -> None:
        self.add(
            "conflict",
            resource=resource,
            upstream=upstream,
            method=method,
            sent="rt:old",
            current="rt:new",
            status=412,
        )

    def tag(
        self,
        resource: str,
        frm: str | None,
        to: str | None,
        via: str = "manifest",
        *,
        upstream: str = UP,
    ) -> None:
        self.add(
            "tag",
            resource=resource,
            upstream=upstream,
            uid="rid:1",
            **{"from": frm},
            to=to,
            via=via,
            status=200,
        )

    def write(self, path: Path) -> Path:
        path.write_text("".join(json.dumps(e) + "\n" for e in self.events), encoding="utf-8")
        return path
