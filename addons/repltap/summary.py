"""The plain-data summary of one decoded flow, and its one-line description.

What may live here: turning a decoded (Request, Response) pair into the serialisable dict stored
in ``flow.metadata["repl"]``, and describing such a dict in one line. Pure Python, no mitmproxy;
the contentview, the decoder addon and (later) the tracker and report read the same dict.
"""

from __future__ import annotations

from typing import Any

from .protocol.model import Request, Response, short_token

SUMMARY_VERSION = 1
# The keys summarise() writes; anything else in flow.metadata["repl"] belongs to other addons.
SUMMARY_KEYS = frozenset(
    (
        "v",
        "protocol",
        "kind",
        "method",
        "target",
        "collection",
        "upstream",
        "request",
        "response",
        "error",
        "summary",
    )
)
WRITE_KINDS = frozenset(("upload", "delete", "move", "copy", "mkcol"))
# Methods that only WebDAV clients send, so a write with one of them is replication-relevant
# even without a condition. POST is everywhere on the web: it counts only with repl headers.
_DAV_WRITES = frozenset(("PUT", "PROPPATCH", "DELETE", "MOVE", "COPY", "MKCOL"))


def is_relevant(req: Request, resp: Response | None) -> bool:
    """Whether a flow is replication traffic worth a summary."""
    if req.manifest or req.condition.tags or req.condition.uids:
        return True
    if req.condition.not_tags or req.condition.not_uids:
        return True
    if req.method in _DAV_WRITES:
        return True
    if req.problem is not None or req.malformed:
        return True  # a SEARCH/PROPFIND/REPORT body or a header that could not be read: say so
    if resp is None:
        return False
    if resp.problem is not None:
        return True
    if resp.manifest or resp.tag or resp.uid or resp.invalid_token or resp.status in (210, 475):
        return True
    return any(e["tag"] or e["uid"] for e in resp.entries)


def summarise(
    req: Request, resp: Response | None, *, upstream: str | None = None, error: str | None = None
) -> dict[str, Any]:
    """The serialisable summary of a request and, if it came, its response."""
    d: dict[str, Any] = {
        "v": SUMMARY_VERSION,
        "protocol": req.protocol,
        "kind": req.kind,
        "method": req.method,
        "target": req.target,
        "collection": req.collection,
        "upstream": upstream,
        "request": req.to_dict(),
        "response": resp.to_dict() if resp is not None else None,
    }
    if error is not None:
        d["error"] = error
    d["summary"] = one_line(d)
    return d


_CONDITION_HEADERS = (
    ("if_match", "If-Match"),
    ("if_none_match", "If-None-Match"),
    ("if_schedule_tag_match", "If-Schedule-Tag-Match"),
)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}"


def one_line(s: dict[str, Any]) -> str:
    """``manifest /exchange/alice/Inbox/: collblob toCT…FAA= → 91c2…a0b1, 2 new, 1 delete``."""
    req = s["request"]
    resp = s.get("response")
    token_word = "collblob" if s["protocol"] == "exchange" else "sync-token"
    head = f"{s['kind']} {s['target']}"
    parts: list[str] = []
    if s["kind"] == "manifest":
        sent = short_token(req.get("token"), 4)
        if resp is None:
            parts.append(f"{token_word} {sent} →")
        elif resp.get("invalid_token") or resp["status"] in (475,):
            parts.append(f"{token_word} {sent} rejected ({resp['status']} {resp['meaning']})")
        elif "changes" in resp:
            if resp.get("no_changes") or resp.get("token") is None:
                parts.append(f"{token_word} {sent} → {sent} (no changes)")
            else:
                parts.append(f"{token_word} {sent} → {short_token(resp.get('token'), 4)}")
            ch = resp["changes"]
            counts = [_plural(ch[k], k) for k in ("new", "change", "delete") if ch.get(k)]
            if counts:
                parts.append(", ".join(counts))
            elif not resp.get("no_changes"):
                parts.append("0 entries")
            if resp.get("truncated"):
                parts.append("truncated")
        else:
            parts.append(f"{token_word} {sent} → {resp['status']} {resp['meaning']}")
        if req.get("acknowledged"):
            parts.append(f"{len(req['acknowledged'])} acknowledged")
        if req.get("range"):
            parts.append("rows=" + ",".join(req["range"]))
        if resp and resp.get("content_range"):
            cr = resp["content_range"]
            span = f"{cr['first']}-{cr['last']}" if cr["first"] is not None else "*"
            total = f" of {cr['total']}" if cr["total"] is not None else ""
            parts.append(f"rows {span}{total}")
    else:
        cond = req.get("condition")
        if cond:  # absent when the request names no condition
            bits = [short_token(t, 8) for t in (*cond.get("tags", ()), *cond.get("uids", ()))]
            bits += [
                f"Not {short_token(t, 8)}"
                for t in (*cond.get("not_tags", ()), *cond.get("not_uids", ()))
            ]
            for key, header in _CONDITION_HEADERS:
                if cond.get(key):
                    bits.append(f"{header} {short_token(cond[key], 8)}")
            if bits:
                parts.append("if " + " ".join(bits))
        if resp is not None:
            answer = f"{resp['status']} {resp['meaning']}"
            if resp.get("tag"):
                answer += f", tag {short_token(resp['tag'], 8)}"
            if resp.get("uid"):
                answer += f", uid {short_token(resp['uid'], 8)}"
            parts.append("→ " + answer)
    if s.get("error"):
        parts.append(f"error: {s['error']}")
    for side in (req, resp or {}):
        if side.get("undecodable"):
            u = side["undecodable"]
            parts.append(f"not decoded ({u['reason']})")
    sep = ", " if s["kind"] == "manifest" else " "
    return head + (": " + sep.join(parts) if parts else "")
