"""``repltap replay-client``: re-drive a recorded client's requests against a live server,
translating tokens, tags and repl-uids from the recording's to the live server's, and say where
the live server's answers part from the recorded ones.

Why not a faithful client replay: a replication client's requests are a function of the answers
it got (it downloads what a manifest listed, resolves a 412 by fetching, acknowledges the tags
its uploads returned), and its tokens are the recorded server's (signed, or hashes of a history
the live server never had). Re-sending recorded requests can only follow the recorded session
while the live server answers alike; from the first answer that differs, the recorded requests
are no longer what the client would have sent. So this tool does the closest useful thing: it
sends the requests in recorded order, rewrites every token and tag it can map (a recorded
answer's token ↔ the live answer's token for the same step; tags and uids by href), checks
each live answer against the recorded one by replication meaning (status, token present or not,
changes by type and href, content of downloads), and stops at the first divergence (or goes on
with ``--keep-going``), naming it. It answers "does this server (another version, a restored
backup) still behave as the recorded one did for this client?", which is what a client replay
is wanted for.

What may live here: reading a recording, HTTP on ``http.client``, the translation tables and
the comparison. Requests go to the target as they were recorded (method, headers, body bytes)
except for: Host, hop-by-hop headers and Content-Length (made again); redacted credentials
(dropped; supply ``--user`` or ``--header``); the tokens, tags and uids translated; the path
prefixes given with ``--path-map``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape

from mitmproxy import exceptions
from mitmproxy import http as mhttp
from mitmproxy.net import encoding

from . import protocol
from .protocol.model import Request, Response, normalise_path, short_token
from .sim.client import open_connection
from .summary import WRITE_KINDS

REDACTED_MARK = "[redacted"
_HOP = frozenset(
    (
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "trailer",
    )
)
_SAFE = "/%:@!$&'()*+,;=-._~"  # what --path-map leaves unescaped: the path characters
_WRITE_METHODS = frozenset(("PUT", "POST", "PROPPATCH", "DELETE", "MOVE", "COPY", "MKCOL", "LOCK"))


class ReplayClientError(Exception):
    """A failure that ends the run; the message is one readable sentence."""


# ------------------------------------------------------------------------------ translation


@dataclass
class Translation:
    """What the recording called a token, tag or uid, and what the live server calls it."""

    tokens: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    uids: dict[str, str] = field(default_factory=dict)

    def learn(self, rec: Response, live: Response, rec_req: Request, paths: PathMap) -> None:
        """Pair what the recorded and the live answer to one request carry."""
        if rec.token and live.token and not rec.invalid_token and not live.invalid_token:
            self.tokens[rec.token] = live.token
        self._pair(self.tags, rec.tag, live.tag)
        self._pair(self.uids, rec.uid, live.uid)
        if not (rec.entries and live.entries):
            return
        by_href = {
            normalise_path(e["href"]): e
            for e in live.entries
            if e["href"] and e["type"] != "delete"
        }
        by_uid = {e["uid"]: e for e in live.entries if e["uid"]}
        for e in rec.entries:
            other = None
            if e["href"] and e["type"] != "delete":
                other = by_href.get(paths.apply(normalise_path(e["href"])))
            elif e["uid"]:
                other = by_uid.get(self.uids.get(e["uid"], e["uid"]))
            if other is not None:
                self._pair(self.tags, e["tag"], other["tag"])
                self._pair(self.uids, e["uid"], other["uid"])

    @staticmethod
    def _pair(table: dict[str, str], a: str | None, b: str | None) -> None:
        if a and b:
            table[a] = b

    def rewrite_body(self, body: bytes, req: Request, notes: list[str]) -> bytes:
        """Swap the recorded token and acknowledged tags in a manifest body for live ones."""
        if not req.manifest or not body:
            return body
        swaps: list[tuple[str, str]] = []
        if req.token is not None:
            live = self.tokens.get(req.token)
            if live is None:
                notes.append(f"token {short_token(req.token, 6)} has no live counterpart")
            elif live != req.token:
                swaps.append((req.token, live))
        for t in req.acknowledged:
            if t in self.tags and self.tags[t] != t:
                swaps.append((t, self.tags[t]))
        for old, new in swaps:
            # Bytes are kept as recorded: only the token's own text changes (as the XML has it).
            body = body.replace(escape(old).encode(), escape(new).encode())
        if swaps:
            notes.append(f"rewrote {len(swaps)} token(s)/tag(s) in the body")
        return body

    def rewrite_header(self, name: str, value: str, notes: list[str]) -> str:
        """Swap recorded tags and uids in a condition header (If, If-Match, ...)."""
        new = value
        for table in (self.tags, self.uids):
            for old, live in table.items():
                if old != live and old in new:
                    new = new.replace(old, live)
        if new != value:
            notes.append(f"rewrote {name}")
        return new


@dataclass
class PathMap:
    """``--path-map OLD=NEW`` prefixes, applied in order, first match wins."""

    pairs: list[tuple[str, str]] = field(default_factory=list)

    def apply(self, path: str) -> str:
        for old, new in self.pairs:
            if path.startswith(old):
                return new + path[len(old) :]
        return path


# ------------------------------------------------------------------------------ comparison


def _changes(r: Response) -> str:
    if r.no_changes:
        return "no changes"
    c = r.changes
    return ", ".join(f"{c[k]} {k}" for k in ("new", "change", "delete") if c[k]) or "0 entries"


def _entry_keys(r: Response, paths: PathMap | None, uids: dict[str, str]) -> set[tuple[str, str]]:
    out = set()
    for e in r.entries:
        if e["type"] == "delete":
            uid = e["uid"] or "?"
            out.add(("delete", uids.get(uid, uid) if paths is not None else uid))
        else:
            p = normalise_path(e["href"] or "")
            out.add((e["type"], paths.apply(p) if paths is not None else p))
    return out


def differences(
    rec_req: Request,
    rec: Response | None,
    live: Response,
    rec_body: bytes | None,
    live_body: bytes | None,
    paths: PathMap,
    tr: Translation,
) -> list[str]:
    """How the live answer parts from the recorded one, in replication terms."""
    if rec is None:
        return []
    out: list[str] = []
    if rec.status != live.status:
        out.append(f"status: recorded {rec.status}, live {live.status} ({live.meaning})")
        return out
    if rec_req.manifest:
        if rec.invalid_token != live.invalid_token:
            out.append(
                "the live server rejected the token"
                if live.invalid_token
                else "the recorded server rejected the token, the live one took it"
            )
        if (rec.token is None) != (live.token is None):
            out.append(
                f"token: recorded {'none' if rec.token is None else 'a new one'}, "
                f"live {'none' if live.token is None else 'a new one'}"
            )
        a = _entry_keys(rec, paths, tr.uids)
        b = _entry_keys(live, None, {})
        if a != b or rec.no_changes != live.no_changes:
            detail = f"changes: recorded {_changes(rec)}, live {_changes(live)}"
            only_rec = sorted(f"{t} {p}" for t, p in a - b)
            only_live = sorted(f"{t} {p}" for t, p in b - a)
            if only_rec:
                detail += "; only recorded: " + ", ".join(only_rec[:5])
            if only_live:
                detail += "; only live: " + ", ".join(only_live[:5])
            out.append(detail)
    elif rec_req.method == "GET" and rec.status == 200 and _sha(rec_body) != _sha(live_body):
        out.append("content: the live body differs from the recorded one")
    return out


def _sha(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


# ------------------------------------------------------------------------------ sending


@dataclass
class Live:
    """A live answer, body decoded per Content-Encoding."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Sender:
    """One keep-alive connection to the target, or to an HTTP proxy in front of it."""

    def __init__(self, target: str, proxy: str | None, timeout: float = 30) -> None:
        u = urlsplit(target)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ReplayClientError(f"--target {target!r} is not an http:// or https:// URL")
        self.origin = f"{u.scheme}://{u.netloc}"
        self.base = u.path.rstrip("/")
        self.u = u
        self.proxy = urlsplit(proxy) if proxy else None
        if self.proxy is not None and (self.proxy.scheme != "http" or not self.proxy.hostname):
            raise ReplayClientError(f"--proxy {proxy!r}: expected http://host:port")
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        u = self.u
        return open_connection(u.scheme, u.hostname or "", u.port, self.proxy, self.timeout)

    def send(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Live:
        url = self.origin + path
        target = url if self.proxy is not None and self.u.scheme == "http" else path
        for attempt in range(2):
            fresh = self.conn is None
            if self.conn is None:
                self.conn = self._connect()
            try:
                self.conn.putrequest(method, target, skip_accept_encoding=True)
                for k, v in headers:
                    self.conn.putheader(k, v)
                if body or method in _WRITE_METHODS:
                    self.conn.putheader("Content-Length", str(len(body)))
                self.conn.endheaders(body or None)
                resp = self.conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self.close()
                if fresh or attempt:
                    raise ReplayClientError(
                        f"{method} {url}: the connection was closed ({e})"
                    ) from None
                continue
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise ReplayClientError(f"{method} {url}: cannot talk to the server: {e}") from None
            if resp.will_close:
                self.close()
            hdrs = resp.getheaders()
            enc = next((v for k, v in hdrs if k.lower() == "content-encoding"), None)
            if enc and raw:
                try:
                    decoded = encoding.decode(raw, enc)
                    raw = decoded if isinstance(decoded, bytes) else raw
                except ValueError:
                    pass
            return Live(resp.status, hdrs, raw)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ------------------------------------------------------------------------------ the run


@dataclass
class Step:
    """One re-driven request and what came of it."""

    number: int
    method: str
    path: str
    what: str  # the request in replication terms
    recorded: int | None
    live: int | None
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}


def _body(message: mhttp.Message) -> bytes:
    try:
        return message.get_content(strict=False) or b""
    except ValueError:
        return message.raw_content or b""


def _what(req: Request) -> str:
    word = "sync-token" if req.protocol == "rfc6578" else "collblob"
    if req.manifest:
        bits = [f"{word} {short_token(req.token, 4)}"]
        if req.acknowledged:
            bits.append(f"{len(req.acknowledged)} acknowledged")
        if req.range:
            bits.append("rows=" + ",".join(str(r) for r in req.range))
        return "manifest, " + ", ".join(bits)
    return req.kind


def replay(
    flows: list[mhttp.HTTPFlow],
    sender: Sender,
    *,
    paths: PathMap,
    extra_headers: list[tuple[str, str]],
    reads_only: bool = False,
    keep_going: bool = False,
    out: Any = None,
) -> tuple[list[Step], Translation]:
    """Re-drive ``flows`` in order; the steps and the translation tables learnt."""
    tr = Translation()
    rec_hints, live_hints = protocol.Hints(), protocol.Hints()
    steps: list[Step] = []
    extra_names = {k.lower() for k, _ in extra_headers}
    for n, f in enumerate(flows, 1):
        r = f.request
        rec_body = _body(r)
        req = protocol.decode_request(r.method, r.path, r.headers, rec_body)
        rec_resp = None
        if f.response is not None:
            rec_resp = protocol.decode_response(
                req,
                f.response.status_code,
                f.response.headers,
                _body(f.response),
                hint=rec_hints.get(f"{r.host}:{r.port}"),
            )
            rec_hints.learn(f"{r.host}:{r.port}", req, rec_resp)
        path = paths.apply(r.path)
        step = Step(
            n, r.method, path, _what(req), f.response.status_code if f.response else None, None
        )
        steps.append(step)
        if reads_only and (r.method.upper() in _WRITE_METHODS or req.kind in WRITE_KINDS):
            step.skipped = "a write (--reads-only)"
            _say(out, step)
            continue
        headers: list[tuple[str, str]] = []
        for k, v in r.headers.items(multi=True):
            lk = k.lower()
            if lk in _HOP or lk in extra_names:
                continue
            if REDACTED_MARK in v:
                step.notes.append(f"{k} was redacted in the recording: dropped")
                continue
            if lk == "destination":
                d = urlsplit(v)
                v = sender.origin + paths.apply(d.path or "/")
            elif lk in ("if", "if-match", "if-none-match", "if-schedule-tag-match"):
                v = tr.rewrite_header(k, v, step.notes)
            headers.append((k, v))
        headers += extra_headers
        body = tr.rewrite_body(rec_body, req, step.notes)
        live = sender.send(r.method, path, headers, body)
        step.live = live.status
        live_req = protocol.decode_request(r.method, path, headers, body)
        up = sender.u.netloc
        live_resp = protocol.decode_response(
            live_req, live.status, live.headers, live.body, hint=live_hints.get(up)
        )
        live_hints.learn(up, live_req, live_resp)
        if rec_resp is not None:
            rec_content = _body(f.response) if f.response is not None else None
            step.differences = differences(
                req, rec_resp, live_resp, rec_content, live.body, paths, tr
            )
            tr.learn(rec_resp, live_resp, req, paths)
        _say(out, step)
        if step.differences and not keep_going:
            break
    return steps, tr


def _say(out: Any, step: Step) -> None:
    if out is None:
        return
    if step.skipped:
        out(f"  #{step.number:<3} {step.method:<9} {step.path}  skipped: {step.skipped}")
        return
    mark = "✗" if step.differences else "✓"
    statuses = f"{step.recorded if step.recorded is not None else '---'} → {step.live}"
    out(f"  #{step.number:<3} {step.method:<9} {step.path}  ({step.what})  {statuses}  {mark}")
    for d in step.differences:
        out(f"        differs: {d}")
    for note in step.notes:
        out(f"        note: {note}")


# ------------------------------------------------------------------------------ command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``repltap replay-client``."""
    p.add_argument("recording", help="a flow file (repl_record, mitmdump -w)")
    p.add_argument(
        "--target",
        required=True,
        metavar="URL",
        help="the live server, e.g. http://127.0.0.1:8090 (requests keep their recorded paths)",
    )
    p.add_argument("--proxy", help="an HTTP proxy to send through, e.g. mitmdump with repltap")
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header for every request (credentials the recording had redacted); repeatable",
    )
    p.add_argument("--user", metavar="USER:PASSWORD", help="Basic credentials for every request")
    p.add_argument(
        "--path-map",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="send paths starting with OLD to NEW instead (another mailbox); repeatable",
    )
    p.add_argument("--reads-only", action="store_true", help="skip writes (PUT, DELETE, MOVE, ...)")
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="go on after the first divergence (later requests may no longer make sense)",
    )
    p.add_argument("--json", metavar="OUT.json", help="also write the steps as JSON")


def run(args: argparse.Namespace) -> int:
    """0: the live server answered like the recorded one; 1: it diverged; 2: bad input."""
    import base64

    from .offline import read_flows

    def fail(msg: str) -> int:
        print(f"repltap replay-client: {msg}", file=sys.stderr)
        return 2

    extra: list[tuple[str, str]] = []
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            return fail(f"--header {h!r}: expected 'Name: value'")
        extra.append((name.strip(), value.strip()))
    if args.user:
        token = base64.b64encode(args.user.encode()).decode()
        extra.append(("Authorization", f"Basic {token}"))
    pairs = []
    for m in args.path_map:
        old, sep, new = m.partition("=")
        if not sep or not old.startswith("/") or not new.startswith("/"):
            return fail(f"--path-map {m!r}: expected /old/prefix/=/new/prefix/")
        pairs.append(
            (quote(old, safe="/%:@!$&'()*+,;=-._~"), quote(new, safe="/%:@!$&'()*+,;=-._~"))
        )
    try:
        flows = read_flows(args.recording)
    except OSError as e:
        return fail(f"cannot read {args.recording}: {e.strerror or e}")
    except exceptions.FlowReadException as e:
        return fail(f"{args.recording} is not a flow file: {e}")
    try:
        sender = Sender(args.target, args.proxy)
    except ReplayClientError as e:
        return fail(str(e))
    print(f"replay-client: {args.recording} ({len(flows)} requests) → {args.target}", flush=True)
    try:
        steps, tr = replay(
            flows,
            sender,
            paths=PathMap(pairs),
            extra_headers=extra,
            reads_only=args.reads_only,
            keep_going=args.keep_going,
            out=lambda line: print(line, flush=True),
        )
    except ReplayClientError as e:
        print(f"repltap replay-client: error: {e}", file=sys.stderr)
        return 1
    finally:
        sender.close()
    sent = [s for s in steps if not s.skipped]
    diverged = [s for s in sent if s.differences]
    print(
        f"summary: {len(sent)} sent, {len(sent) - len(diverged)} answered as recorded, "
        f"{len(diverged)} diverged, {len(steps) - len(sent)} skipped; translated "
        f"{len(tr.tokens)} tokens, {len(tr.tags)} tags, {len(tr.uids)} uids"
    )
    if diverged and not args.keep_going:
        first = diverged[0]
        print(
            f"stopped at #{first.number}: from here the live server's state is not the recorded "
            "server's, so the recorded requests are no longer what the client would send "
            "(--keep-going sends them anyway)"
        )
    if len(steps) < len(flows) and not diverged:
        print(f"{len(flows) - len(steps)} requests not sent")
    if args.json:
        doc = {
            "recording": str(args.recording),
            "target": args.target,
            "steps": [s.to_dict() for s in steps],
            "translated": {"tokens": tr.tokens, "tags": tr.tags, "uids": tr.uids},
        }
        Path(args.json).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return 1 if diverged else 0


__all__ = ["PathMap", "ReplayClientError", "Sender", "Step", "Translation", "replay", "run"]
