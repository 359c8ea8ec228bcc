"""The recorder addon: writes each flow as it completes to ``repl_record`` (mitmproxy's native flow
format, its decoded summary in the metadata), credentials redacted unless ``repl_redact=false``,
and keeps a sidecar index (``<recording>.index.json``) of collections, token chains and time range.

Why not just ``-w``: a ``-w`` file keeps Authorization headers, NTLM handshakes and cookies, so it
cannot be handed to a colleague or committed as a regression test; and it says nothing about
what it holds until someone opens it. The flow file written here is an ordinary one (``mitmweb
-r``, ``mitmdump -nr`` and ``repl_replay`` read it); the live flows are never changed, only the
copies that are written.

Hook order (addons/repl.py): last, so that what is written is the final flow, with the tracker's
events, the cache's and the replayer's marks, and the comments of every other addon.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import IO, Any, Optional

from mitmproxy import command, ctx, exceptions, http, io
from mitmproxy import version as mitmproxy_version

from .. import __version__
from .decode import META_KEY, summary_now, upstream_of

logger = logging.getLogger(__name__)

RECORD_KEY = "repl.record"  # flow.metadata key: how this flow was recorded
INDEX_VERSION = 1
REDACTED = "[redacted by repltap]"
# The sidecar is rewritten at most this often while recording (and always at the end), so that
# a long session does not rewrite a growing file for every flow.
INDEX_INTERVAL = 1.0
_MAX_ACTIVE = 10_000

# Request headers whose whole value (after an auth scheme) is a secret.
_AUTH_REQUEST = ("authorization", "proxy-authorization")
# Challenges: only the NTLM/Negotiate/Kerberos blobs are secrets (a Basic realm is not).
_AUTH_CHALLENGE = ("www-authenticate", "proxy-authenticate")
_BLOB_SCHEMES = ("ntlm", "negotiate", "kerberos")
_OTHER_SECRET_HEADERS = ("authentication-info", "proxy-authentication-info", "x-owa-canary")
# Form fields and query parameters holding passwords or bearer tokens (OWA's forms login posts
# ``password=``; some gateways put ``access_token=`` in the URL).
SECRET_PARAM = re.compile(r"pass(word|wd)?|pwd|secret|access_token|auth_token|api_?key", re.I)


def index_path(recording: str | os.PathLike[str]) -> Path:
    """The sidecar index of a recording: ``session.mitm`` → ``session.mitm.index.json``."""
    p = Path(recording)
    return p.with_name(p.name + ".index.json")


# ------------------------------------------------------------------------------ redaction


def _scheme_only(value: str) -> str:
    scheme, _, rest = value.strip().partition(" ")
    return f"{scheme} {REDACTED}" if rest.strip() else value


def _cookie_names(value: str) -> str:
    """``a=1; b=2`` → ``a=[redacted]; b=[redacted]``: the names say which session it was."""
    parts = []
    for part in value.split(";"):
        name, eq, _ = part.strip().partition("=")
        parts.append(f"{name}={REDACTED}" if eq else name)
    return "; ".join(p for p in parts if p)


def _set_cookie(value: str) -> str:
    """The cookie's value goes; its name and attributes (Path, Expires, HttpOnly) stay."""
    first, sep, attrs = value.partition(";")
    name, eq, _ = first.strip().partition("=")
    return (f"{name}={REDACTED}" if eq else REDACTED) + (sep + attrs if sep else "")


def _redact_headers(
    headers: http.Headers, names: tuple[str, ...], how: Any, side: str, out: list[str]
) -> None:
    for name in names:
        values = headers.get_all(name)
        if not values:
            continue
        new = [how(v) for v in values]
        if new != values:
            headers.set_all(name, new)
            out.append(f"{side} {name}")


def redact(flow: http.HTTPFlow) -> list[str]:
    """Remove credentials from ``flow`` in place (call it on a copy); what was removed.

    Authorization and Proxy-Authorization keep their scheme (``Basic``, ``NTLM``) so that a reader
    still sees how the client authenticated; NTLM/Negotiate challenges lose their blobs; cookies
    keep their names; password and token fields of URL queries and urlencoded forms lose their
    values. Nothing else changes, so the recording still replays.
    """
    removed: list[str] = []
    req = flow.request
    _redact_headers(req.headers, _AUTH_REQUEST, _scheme_only, "request", removed)
    _redact_headers(req.headers, ("cookie",), _cookie_names, "request", removed)
    _redact_headers(req.headers, _OTHER_SECRET_HEADERS, lambda v: REDACTED, "request", removed)
    query = req.query
    if any(SECRET_PARAM.fullmatch(k) for k in query):
        req.query = [
            (k, REDACTED if SECRET_PARAM.fullmatch(k) else v) for k, v in query.items(True)
        ]
        removed.append("request query parameters")
    ctype = req.headers.get("content-type", "").lower()
    if ctype.startswith("application/x-www-form-urlencoded") and req.raw_content:
        form = req.urlencoded_form
        if any(SECRET_PARAM.fullmatch(k) for k in form):
            req.urlencoded_form = [
                (k, REDACTED if SECRET_PARAM.fullmatch(k) else v) for k, v in form.items(True)
            ]
            removed.append("request form fields")
    resp = flow.response
    if resp is not None:

        def challenge(v: str) -> str:
            return _scheme_only(v) if v.strip().lower().startswith(_BLOB_SCHEMES) else v

        _redact_headers(resp.headers, _AUTH_CHALLENGE, challenge, "response", removed)
        _redact_headers(resp.headers, ("set-cookie",), _set_cookie, "response", removed)
        _redact_headers(
            resp.headers, _OTHER_SECRET_HEADERS, lambda v: REDACTED, "response", removed
        )
    return removed


# ------------------------------------------------------------------------------ the index


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


class RecordingIndex:
    """What a recording holds, built flow by flow: collections, token chains, time range.

    Token chains follow the tokens as the recorded clients used them: a manifest that sends the
    newest token of a chain extends it; an initial sync starts a new chain; a token sent again
    from the middle of a chain starts a branch; one never seen before (issued before the
    recording began) starts a chain marked ``resumed``. Any token listed can be replayed from.
    """

    def __init__(self, recording: str) -> None:
        self.recording = recording
        self.flows = 0
        self.decoded = 0
        self.errors = 0
        self.replayed = 0
        self.first: float | None = None
        self.last: float | None = None
        self.methods: dict[str, int] = {}
        self.upstreams: dict[str, int] = {}
        self.collections: dict[str, dict[str, Any]] = {}
        self.resources: set[str] = set()
        self.anomalies: dict[str, int] = {}
        self.redacted_flows = 0
        self.unredacted_flows = 0
        self.redactions: dict[str, int] = {}

    def add(self, flow: http.HTTPFlow, redacted: bool | None, removed: list[str]) -> None:
        """Account for one written flow (``redacted``: None when the flag is unknown)."""
        self.flows += 1
        if redacted:
            self.redacted_flows += 1
        elif redacted is not None:
            self.unredacted_flows += 1
        for r in removed:
            self.redactions[r] = self.redactions.get(r, 0) + 1
        start = flow.request.timestamp_start
        end = start
        if flow.response is not None and flow.response.timestamp_end:
            end = flow.response.timestamp_end
        elif flow.error is not None:
            end = flow.error.timestamp
        self.first = start if self.first is None else min(self.first, start)
        self.last = end if self.last is None else max(self.last, end)
        m = flow.request.method
        self.methods[m] = self.methods.get(m, 0) + 1
        up = upstream_of(flow)
        self.upstreams[up] = self.upstreams.get(up, 0) + 1
        if flow.error is not None:
            self.errors += 1
        if flow.is_replay == "response":
            self.replayed += 1
        s = flow.metadata.get(META_KEY)
        if not isinstance(s, dict) or "request" not in s:
            return
        self.decoded += 1
        for code in s.get("anomalies") or []:
            self.anomalies[code] = self.anomalies.get(code, 0) + 1
        if s.get("kind") == "manifest":
            self._manifest(flow, s)
        elif s.get("target"):
            self.resources.add(f"{s.get('upstream')}{s['target']}")

    def _manifest(self, flow: http.HTTPFlow, s: dict[str, Any]) -> None:
        req = s["request"]
        resp = s.get("response") or {}
        scope = req.get("query") or (
            f"depth={req.get('depth')}" if s.get("method") == "PROPFIND" else None
        )
        key = f"{s.get('upstream')}{s.get('collection')}" + (f" [{scope}]" if scope else "")
        c = self.collections.get(key)
        if c is None:
            c = self.collections[key] = {
                "upstream": s.get("upstream"),
                "collection": s.get("collection"),
                "protocol": s.get("protocol"),
                "scope": scope,
                "manifests": 0,
                "initial_syncs": 0,
                "rejected": 0,
                "changes": {"new": 0, "change": 0, "delete": 0},
                "chains": [],
            }
        c["manifests"] += 1
        sent = req.get("token")
        if sent is None:
            c["initial_syncs"] += 1
        for k, n in (resp.get("changes") or {}).items():
            c["changes"][k] = c["changes"].get(k, 0) + n
        received = resp.get("token") if resp.get("manifest") else None
        chain = self._chain_for(c["chains"], sent)
        chain["manifests"] += 1
        chain["last_flow"] = flow.id
        if resp.get("invalid_token"):
            c["rejected"] += 1
            chain["rejected"] = {"token": sent, "status": resp.get("status")}
        elif received is not None and (not chain["tokens"] or chain["tokens"][-1] != received):
            chain["tokens"].append(received)

    @staticmethod
    def _chain_for(chains: list[dict[str, Any]], sent: str | None) -> dict[str, Any]:
        def new(start: str, tokens: list[str], **extra: Any) -> dict[str, Any]:
            ch = {"start": start, "tokens": tokens, "manifests": 0, **extra}
            chains.append(ch)
            return ch

        if sent is None:
            return new("initial", [])
        for ch in reversed(chains):
            if ch["tokens"] and ch["tokens"][-1] == sent and "rejected" not in ch:
                found: dict[str, Any] = ch
                return found
        for n, ch in reversed(list(enumerate(chains))):
            if sent in ch["tokens"]:
                return new("branch", [sent], branch_of=n)
        return new("resumed", [sent])

    def to_dict(self) -> dict[str, Any]:
        """The sidecar's content (plain JSON)."""
        time_range = None
        if self.first is not None and self.last is not None:
            time_range = {
                "start": _iso(self.first),
                "end": _iso(self.last),
                "seconds": round(self.last - self.first, 3),
            }
        collections = sorted(
            self.collections.values(), key=lambda c: (c["upstream"] or "", c["collection"] or "")
        )
        return {
            "v": INDEX_VERSION,
            "recording": self.recording,
            "written_by": f"repltap {__version__}, mitmproxy {mitmproxy_version.VERSION}",
            # True only when every flow was written with redaction on.
            "redacted": self.unredacted_flows == 0 and self.flows > 0,
            "redaction": {
                "flows_redacted": self.redacted_flows,
                "flows_not_redacted": self.unredacted_flows,
                "removed": dict(sorted(self.redactions.items())),
            },
            "flows": self.flows,
            "replication_flows": self.decoded,
            "errors": self.errors,
            "replayed": self.replayed,
            "time": time_range,
            "upstreams": dict(sorted(self.upstreams.items())),
            "methods": dict(sorted(self.methods.items())),
            "collections": collections,
            "resources": len(self.resources),
            "anomalies": dict(sorted(self.anomalies.items())),
        }


def index_of_flows(flows: list[http.HTTPFlow], recording: str) -> dict[str, Any]:
    """The index of flows already recorded (for a recording made with ``-w``, say)."""
    idx = RecordingIndex(recording)
    for f in flows:
        rec = f.metadata.get(RECORD_KEY)
        redacted = rec.get("redacted") if isinstance(rec, dict) else None
        removed = rec.get("removed", []) if isinstance(rec, dict) else []
        idx.add(f, redacted, list(removed))
    return idx.to_dict()


def write_index(path: Path, doc: dict[str, Any]) -> None:
    """Write the sidecar atomically: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ the addon


class Record:
    """Write finished flows, redacted, to ``repl_record``; keep its sidecar index current."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.spec: str | None = None
        self.file: IO[bytes] | None = None
        self.writer: io.FlowWriter | None = None
        self.index: RecordingIndex | None = None
        self.redact = True
        self.active: dict[str, http.HTTPFlow] = {}
        self.saved: dict[str, None] = {}  # ids of the flows written lately (an ordered set)
        self.written = 0
        self._index_at = 0.0

    def load(self, loader: Any) -> None:
        loader.add_option(
            "repl_record",
            Optional[str],  # noqa: UP045 - mitmproxy's option type check needs typing.Optional
            None,
            "Write every flow as it completes to this file (mitmproxy's flow format, with "
            "repltap's decoded summary), credentials redacted unless repl_redact=false; a "
            "sidecar PATH.index.json lists its collections, token chains and time range. "
            "Prefix the path with + to append.",
        )
        loader.add_option(
            "repl_redact",
            bool,
            True,
            "Redact credentials (Authorization, Proxy-Authorization, Cookie, Set-Cookie, "
            "NTLM/Negotiate challenges, password form fields) in what repl_record writes.",
        )

    def configure(self, updated: set[str]) -> None:
        if "repl_redact" in updated:
            self.redact = ctx.options.repl_redact
            if not self.redact:
                logger.warning(
                    "repl_redact=false: recordings keep credentials (Authorization, cookies)"
                )
        if "repl_record" not in updated:
            return
        spec = ctx.options.repl_record or None
        if spec == self.spec:
            return
        self._close()
        if spec:
            append = spec.startswith("+")
            path = Path(os.path.expanduser(spec[1:] if append else spec))
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                earlier = _read_existing(path) if append else []
                self.file = path.open("ab" if append else "wb")
            except OSError as e:
                raise exceptions.OptionsError(
                    f"repl_record: cannot write {path}: {e.strerror or e}"
                ) from e
            except exceptions.FlowReadException as e:
                raise exceptions.OptionsError(
                    f"repl_record: cannot append to {path}, it is not a flow file: {e}"
                ) from e
            self.writer = io.FlowWriter(self.file)
            self.path = path
            self.index = RecordingIndex(path.name)
            for f in earlier:
                rec = f.metadata.get(RECORD_KEY)
                ok = rec.get("redacted") if isinstance(rec, dict) else None
                self.index.add(f, ok, list(rec.get("removed", [])) if isinstance(rec, dict) else [])
            self._write_index()
        self.spec = spec

    # ---------------------------------------------------------------- hooks

    def request(self, flow: http.HTTPFlow) -> None:
        if self.writer is None:
            return
        if len(self.active) >= _MAX_ACTIVE:
            self.active.pop(next(iter(self.active)))
        self.active[flow.id] = flow

    def response(self, flow: http.HTTPFlow) -> None:
        # A flow an earlier addon killed in this hook (a fault) is written here too: mitmproxy
        # fires no error hook after the response hook, so this is its last word.
        self._save(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._save(flow)

    def done(self) -> None:
        if self.writer is not None:
            # Flows still under way at shutdown are written as they are, as -w does, with the
            # request's summary (Decode puts a plain request's off until its answer).
            for f in list(self.active.values()):
                summary_now(f)
                self._save(f)
        self._close()

    # ---------------------------------------------------------------- writing

    def _save(self, flow: http.HTTPFlow) -> None:
        self.active.pop(flow.id, None)
        if self.writer is None or self.file is None or self.index is None:
            return
        if flow.id in self.saved:
            return  # one flow, one entry, as its id says
        if len(self.saved) >= _MAX_ACTIVE:
            self.saved.pop(next(iter(self.saved)))
        self.saved[flow.id] = None
        # A copy with the same id (events and logs name flows by id); the live flow is untouched.
        copy = http.HTTPFlow.from_state(flow.get_state())
        assert isinstance(copy, http.HTTPFlow)
        removed = redact(copy) if self.redact else []
        copy.metadata[RECORD_KEY] = {"v": 1, "redacted": self.redact, "removed": removed}
        if removed:
            note = "🔒 credentials redacted: " + ", ".join(removed)
            copy.comment = f"{copy.comment}\n{note}" if copy.comment else note
        try:
            self.writer.add(copy)
            self.file.flush()
        except (OSError, ValueError) as e:
            # ValueError: metadata another addon made unserialisable; OSError: a full disk.
            logger.error("repl_record: cannot write flow %s to %s: %s", flow.id, self.path, e)
            return
        self.written += 1
        self.index.add(copy, self.redact, removed)
        if time.monotonic() - self._index_at >= INDEX_INTERVAL:
            self._write_index()

    def _write_index(self) -> None:
        if self.path is None or self.index is None:
            return
        self._index_at = time.monotonic()
        try:
            write_index(index_path(self.path), self.index.to_dict())
        except OSError as e:
            logger.error("repl_record: cannot write the index of %s: %s", self.path, e)

    def _close(self) -> None:
        if self.file is not None:
            self._write_index()
            self.file.close()
            logger.info("repl_record: %d flows written to %s", self.written, self.path)
        self.file = self.writer = None
        self.path = self.index = None
        self.spec = None
        self.active.clear()
        self.saved.clear()

    @command.command("repl.record.index")
    def show_index(self) -> str:
        """The index of the recording being written (what its sidecar says), as JSON."""
        if self.index is None:
            raise exceptions.CommandError("not recording: set repl_record=PATH first")
        self._write_index()
        return json.dumps(self.index.to_dict(), indent=1, ensure_ascii=False)


def _read_existing(path: Path) -> list[http.HTTPFlow]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    with path.open("rb") as fo:
        return [f for f in io.FlowReader(fo).stream() if isinstance(f, http.HTTPFlow)]


__all__ = [
    "RECORD_KEY",
    "REDACTED",
    "Record",
    "RecordingIndex",
    "index_of_flows",
    "index_path",
    "redact",
    "write_index",
]
