"""The "WebDAV Replication" contentview: a readable header, a table of entries, then the XML.

It reads the flow's decoded summary (``flow.metadata["repl"]``) when there is one, and decodes
the message itself only for flows that were never through the decoder (a recording made
without repltap). Contentviews run only when a flow is displayed, never on the proxy path.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import contentviews, http

from .. import protocol
from ..protocol import xml as safexml
from ..protocol.model import Request, normalise_path
from ..summary import is_relevant, summarise
from .decode import META_KEY

_REPL_MARKERS = (b"schemas.microsoft.com/repl", b"sync-collection", b"sync-token>")


def _summary_for(data: bytes, metadata: contentviews.Metadata) -> dict[str, Any] | None:
    flow = metadata.flow
    msg = metadata.http_message
    if isinstance(flow, http.HTTPFlow):
        s = flow.metadata.get(META_KEY)
        if isinstance(s, dict) and s.get("v") == 1:
            return s
        req = protocol.decode_request(
            flow.request.method, flow.request.path, flow.request.headers, flow.request.content
        )
        resp = None
        if flow.response is not None:
            resp = protocol.decode_response(
                req, flow.response.status_code, flow.response.headers, flow.response.content
            )
        return summarise(req, resp, upstream=f"{flow.request.host}:{flow.request.port}")
    # A message without a flow: read the bytes on their own.
    if isinstance(msg, http.Request):
        req = protocol.decode_request(msg.method, msg.path, msg.headers, data)
        return summarise(req, None)
    if isinstance(msg, http.Response):
        rfc = b"sync-token" in data and b"schemas.microsoft.com/repl" not in data
        probe = Request(
            protocol="rfc6578" if rfc else "exchange",
            kind="manifest",
            method="REPORT" if rfc else "SEARCH",
            target="/",
            manifest=True,
        )
        return summarise(probe, protocol.decode_response(probe, msg.status_code, msg.headers, data))
    return None


def _short_href(href: str | None, collection: str) -> str:
    """An entry's href relative to the manifest's collection, which the header names."""
    if href is None:
        return "(none)"
    if href == "":
        return "(empty)"
    path = normalise_path(href)
    if collection and path.startswith(collection) and path != collection:
        return path[len(collection) :]
    return path


def _tok(token: str | None) -> str:
    return "(none)" if token is None else repr(token)


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [len(h) for h in header]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r).rstrip() for r in rows]
    return out


def _describe_request(s: dict[str, Any]) -> list[str]:
    req = s["request"]
    word = "collblob" if s["protocol"] == "exchange" else "sync-token"
    lines = [f"{s['kind']} request: {req['method']} {req['target']}"]
    if s["kind"] == "manifest":
        lines.append(
            f"{word} sent: "
            + (
                repr(req["token"])
                if req.get("token")
                else f"(none: initial sync, {req.get('token_form')})"
            )
        )
        for sc in req.get("scope", []):
            lines.append(f"scope: {sc['depth']} traversal of {sc['url']}")
        if req.get("select"):
            lines.append("select: " + ", ".join(req["select"]))
        if req.get("props"):
            lines.append("props: " + ", ".join(req["props"]))
        if s["protocol"] == "exchange":
            ack = req.get("acknowledged") or []
            lines.append(f"acknowledged tags (resourcetaglist): {len(ack)}")
            lines += [f"  {t}" for t in ack]
        else:
            if req.get("sync_level"):
                lines.append(f"sync-level: {req['sync_level']}")
            if req.get("limit") is not None:
                lines.append(f"limit: {req['limit']} results")
            if req.get("depth") is not None:
                lines.append(f"depth: {req['depth']}")
    if req.get("range"):
        lines.append("range: rows=" + ",".join(req["range"]))
    cond = req.get("condition")
    if cond:
        lines.append(f"condition: {cond.get('raw_if') or ''}".rstrip())
        for k, label in (
            ("if_schedule_tag_match", "If-Schedule-Tag-Match"),
            ("tags", "resource tag"),
            ("uids", "repl-uid"),
            ("not_tags", "Not tag"),
            ("not_uids", "Not uid"),
            ("etags", "entity tag"),
            ("if_match", "If-Match"),
            ("if_none_match", "If-None-Match"),
        ):
            v = cond.get(k)
            if v:
                lines.append(f"  {label}: {', '.join(v) if isinstance(v, list) else v}")
    if req.get("destination"):
        lines.append(
            f"destination: {req['destination']} (overwrite: {req.get('overwrite') or 'T'})"
        )
    return lines


def _describe_response(s: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    resp = s["response"]
    req = s["request"]
    word = "collblob" if s["protocol"] == "exchange" else "sync-token"
    lines = [f"{s['kind']} response: {resp['status']} {resp['meaning']}"]
    rows: list[list[str]] = []
    if "changes" in resp:
        sent = _tok(req.get("token"))
        if resp.get("no_changes"):
            lines.append(f"{word}: {sent} stays current (empty R:repl: no changes)")
        else:
            lines.append(f"{word}: {sent} → {_tok(resp.get('token'))}")
        ch = resp["changes"]
        lines.append(f"changes: {ch['new']} new, {ch['change']} change, {ch['delete']} delete")
        base = req.get("target") or ""
        rfc = s["protocol"] == "rfc6578"
        for e in resp.get("entries", []):
            kind = e["type"] + ("*" if e.get("implicit") else "")
            last = str(e.get("status") or "") if rfc else e.get("uid") or "-"
            rows.append([kind, _short_href(e.get("href"), base), e.get("tag") or "-", last])
        if resp.get("truncated"):
            lines.append("truncated: the server has more changes (507 for the request-URI)")
        if any(e.get("implicit") for e in resp.get("entries", [])):
            lines.append("(* no R:changetype in the entry: read as change)")
        if rows:
            lines.append(f"(hrefs relative to {base})")
    for e in resp.get("listed", []):
        rows.append(["(listed)", e.get("href") or "-", e.get("tag") or "-", e.get("uid") or "-"])
    if resp.get("invalid_token"):
        lines.append(f"{word} {_tok(req.get('token'))} was rejected: sync again from scratch")
    if resp.get("content_range"):
        cr = resp["content_range"]
        lines.append(f"content-range: rows {cr['first']}-{cr['last']}; total={cr['total']}")
    for k, label in (
        ("tag", "resource tag"),
        ("uid", "repl-uid"),
        ("location", "location"),
        ("accept_ranges", "accept-ranges"),
        ("ctag", "content tag"),
    ):
        if resp.get(k):
            lines.append(f"{label}: {resp[k]}")
    return lines, rows


class WebDAVReplicationContentview(contentviews.Contentview):
    """Decoded WebDAV replication messages (Exchange repl, RFC 6578 sync-collection)."""

    @property
    def name(self) -> str:
        return "WebDAV Replication"

    @property
    def syntax_highlight(self) -> contentviews.SyntaxHighlight:
        return "xml"

    def render_priority(self, data: bytes, metadata: contentviews.Metadata) -> float:
        if not data:
            return -1
        flow = metadata.flow
        if isinstance(flow, http.HTTPFlow):
            if isinstance(flow.metadata.get(META_KEY), dict):
                return 3  # above the built-in XML (1) and JSON (1) views
            if flow.response is None and flow.error is None:
                # Under way: a plain request's summary comes with its answer; read it now.
                req = protocol.decode_request(
                    flow.request.method, flow.request.path, flow.request.headers, None
                )
                if is_relevant(req, None):
                    return 3
        if any(m in data for m in _REPL_MARKERS) and safexml.looks_like_xml(data):
            return 3
        return -1

    def prettify(self, data: bytes, metadata: contentviews.Metadata) -> str:
        s = _summary_for(data, metadata)
        is_request = isinstance(metadata.http_message, http.Request)
        lines: list[str] = []
        rows: list[list[str]] = []
        if s is not None:
            lines.append(f"== WebDAV replication ({s['protocol']}): {s['summary']}")
            if is_request:
                lines += _describe_request(s)
            elif s.get("response"):
                more, rows = _describe_response(s)
                lines += more
            side = s["request"] if is_request else (s.get("response") or {})
            for n in side.get("notes", []):
                lines.append(f"note: {n}")
            if side.get("undecodable"):
                u = side["undecodable"]
                lines.append(f"not decoded ({u['reason']}): {u['detail']}")
        if rows:
            lines.append("")
            if s["protocol"] == "rfc6578":
                lines += _table(rows, ["change", "href", "etag", "status"])
            else:
                lines += _table(rows, ["changetype", "href", "resourcetag", "repl-uid"])
        lines.append("")
        try:
            lines.append(safexml.pretty(data).rstrip("\n"))
        except safexml.XmlProblem:
            # Not ours to judge: show it as mitmproxy's own XML view would, or as text.
            try:
                lines.append(contentviews.xml_html.prettify(data, metadata))
            except Exception:
                lines.append(data.decode("utf-8", "replace"))
        return "\n".join(lines) + "\n"
