"""Fuzz the protocol core: any bytes, fed to the request and response paths of both decoders
(``repltap.protocol.decode_request``/``decode_response``, Exchange and RFC 6578), then to the
summary and the tracker as the addons do, must never raise. That is the whole contract: bad input
is reported in the decoded result (``problem``, ``malformed``, ``notes``), never as an exception.

    python tests/fuzz/fuzz_decode.py [--seconds 60] [--engine auto|atheris|hypothesis]
    python tests/fuzz/fuzz_decode.py --replay FILE...   # run inputs once; exit 1 on a failure
    python tests/fuzz/fuzz_decode.py --seed             # rewrite the seed inputs of the corpus

``make fuzz`` runs the first form for ``FUZZ_SECONDS``. With atheris (libFuzzer, coverage of the
repltap modules) new inputs are collected in a scratch directory and then merged into
``tests/fuzz/corpus/`` keeping only those that add coverage; without atheris, Hypothesis mutates
the corpus and keeps inputs that reach lines of repltap no corpus input reached. A failure stops
the run, prints the input's path and the traceback, and exits 1. ``tests/fuzz/test_corpus.py``
replays the whole corpus in CI.

One input is used several ways (see :func:`check`): as the body of requests with every method
and of answers to canonical requests; its first lines as the values of the replication headers
and as the request target; and, when it has an HTTP-like head (a start line, ``Name: value``
lines, a blank line), as that message with that body, so whole ``tests/vectors`` files are
meaningful inputs too.

Known bugs (``KNOWN``) are counted rather than reported while fuzzing, so that a run goes on to
find new ones; ``FUZZ_STRICT=1`` (or ``--strict``) reports them too. Their reproducers live in
``tests/fuzz/known/``; once fixed they move into the corpus as ``found-NAME``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CORPUS = HERE / "corpus"
KNOWN_DIR = HERE / "known"
DICT = HERE / "decode.dict"
MAX_LEN = 4096  # new inputs; seeds may be longer
MAX_CORPUS = 2 * 1024 * 1024  # bytes: the corpus is kept in git
HEADER_SLOTS = 8

# Known bugs, by a stable name: (exception type, the innermost repltap function it is raised
# in, a piece of its message), each with a reproducer named after it in tests/fuzz/known/.
# Fuzzing counts them instead of stopping, so that a run goes on to find new ones. Empty: the
# five found so far (non-ASCII digits in DAV:limit, status lines and Content-Length; a request
# path that is not UTF-8; a rejected initial sync in the tracker) were fixed in fd4692a, and
# their reproducers are in the corpus as found-*. For example:
#     "nresults-digit": (ValueError, frozenset(("decode_request",)), "invalid literal for int()"),
KNOWN: dict[str, tuple[type[BaseException], frozenset[str], str]] = {}


def known_issue(exc: BaseException) -> str | None:
    """The name of the known bug ``exc`` is, or None for anything else: judged by its type, its
    message and the innermost repltap function on its traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "repltap" in f.filename]
    if not frames:
        return None
    for name, (kind, where, message) in KNOWN.items():
        if isinstance(exc, kind) and message in str(exc) and frames[-1].name in where:
            return name
    return None


# ------------------------------------------------------------------------------ the target

_api: dict[str, Any] = {}


def api() -> dict[str, Any]:
    """repltap's modules, imported on first use (under atheris: inside its instrumentation)."""
    if not _api:
        from repltap import protocol
        from repltap.summary import is_relevant, summarise
        from repltap.tracker import Tracker

        _api.update(protocol=protocol, is_relevant=is_relevant, summarise=summarise)
        _api["Tracker"] = Tracker
        _api["canonical"] = _canonical(protocol)
    return _api


# Requests whose answers every input is also read as, each with the statuses (and header set:
# 0 plain, 1 the header slots) that mean something for it.
_CANONICAL: tuple[
    tuple[str, str, dict[str, str], bytes | None, tuple[tuple[int, int], ...]], ...
] = (
    (
        "REPORT",
        "/alice/cal/",
        {"Depth": "0"},
        b'<D:sync-collection xmlns:D="DAV:"><D:sync-token>http://radicale.org/ns/sync/1'
        b"</D:sync-token><D:sync-level>1</D:sync-level><D:limit><D:nresults>2"
        b"</D:nresults></D:limit><D:prop><D:getetag/></D:prop></D:sync-collection>",
        ((207, 0), (207, 1), (403, 0), (412, 1)),
    ),
    (
        "SEARCH",
        "/exchange/alice/Inbox/",
        {"Range": "rows=0-99"},
        b'<D:searchrequest xmlns:D="DAV:" xmlns:R="http://schemas.microsoft.com/repl/">'
        b"<R:repl><R:collblob>toCTAAMAAAAAXgAA8AD9</R:collblob></R:repl><D:sql>SELECT "
        b'"DAV:href" FROM SCOPE(\'SHALLOW TRAVERSAL OF "/exchange/alice/Inbox/"\')</D:sql>'
        b"</D:searchrequest>",
        ((207, 0), (206, 1), (475, 1)),
    ),
    (
        "PROPFIND",
        "/exchange/alice/Inbox/",
        {"Depth": "1"},
        b'<D:propfind xmlns:D="DAV:" xmlns:R="http://schemas.microsoft.com/repl/">'
        b"<R:repl><R:collblob/></R:repl></D:propfind>",
        ((207, 1), (475, 0)),
    ),
    ("PUT", "/exchange/alice/Inbox/a.EML", {"If": "(<rt:5e3c9a1f>)"}, b"x", ((412, 1), (201, 1))),
    ("PUT", "/alice/cal/e1.ics", {"If-Match": '"1a"'}, b"BEGIN:VCALENDAR", ((204, 1), (412, 0))),
    ("DELETE", "/alice/cal/e1.ics", {"If-Schedule-Tag-Match": '"s1"'}, None, ((204, 1),)),
    ("GET", "/exchange/alice/Inbox/a.EML", {}, None, ((200, 1),)),
    (
        "PROPFIND",
        "/alice/cal/",
        {"Depth": "0"},
        b'<d:propfind xmlns:d="DAV:"/>',
        ((207, 0), (207, 1)),
    ),
)


def _canonical(protocol: ModuleType) -> list[tuple[Any, tuple[tuple[int, int], ...]]]:
    return [(protocol.decode_request(m, t, h, b), a) for m, t, h, b, a in _CANONICAL]


METHODS = ("REPORT", "SEARCH", "PROPFIND", "PUT", "GET", "DELETE", "MOVE", "POST", "PROPPATCH")
REQUEST_SLOTS = (
    b"If", b"Range", b"If-Match", b"If-None-Match", b"If-Schedule-Tag-Match", b"Depth",
    b"Destination", b"Overwrite",
)  # fmt: skip
RESPONSE_SLOTS = (
    b"ResourceTag", b"Content-Range", b"Repl-UID", b"ETag", b"Content-Type", b"Content-Length",
    b"Location", b"Accept-Ranges",
)  # fmt: skip
_START_REQUEST = re.compile(rb"^([A-Za-z-]{1,20}) (\S{1,2000}) HTTP/\d\.\d$")
_START_STATUS = re.compile(rb"^HTTP/\d\.\d (\d{3})(?: .*)?$")


def _http_head(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes] | None:
    """(start line, headers, body) when ``data`` looks like an HTTP message (LF or CRLF)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, body = data.partition(sep)
        if found and len(head) < 16384:
            lines = head.replace(b"\r\n", b"\n").split(b"\n")
            pairs = []
            for line in lines[1:]:
                name, colon, value = line.partition(b":")
                if colon:
                    pairs.append((name.strip(), value.strip()))
            return lines[0], pairs, body
    return None


class Run:
    """One input's trip through the decoders, the summary and the tracker."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.hits: list[str] = []
        a = api()
        self.p = a["protocol"]
        self.summarise: Callable[..., dict[str, Any]] = a["summarise"]
        self.is_relevant: Callable[..., bool] = a["is_relevant"]
        self.tracker = a["Tracker"]()
        self.hints = self.p.Hints()
        self.n = 0

    def guard(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except Exception as e:
            name = known_issue(e)
            if name is None or self.strict:
                raise
            self.hits.append(name)
            return None

    def flow(
        self,
        method: str,
        target: str,
        req_headers: object,
        body: bytes | None,
        answers: Iterable[tuple[int, object, bytes | None]],
    ) -> None:
        req = self.guard(self.p.decode_request, method, target, req_headers, body)
        if req is None:
            return
        for status, headers, rbody in answers:
            r = copy.copy(req)  # decode_response may settle the protocol: start each afresh
            hint = self.hints.get("fuzz:80")
            resp = self.guard(self.p.decode_response, r, status, headers, rbody, hint=hint)
            self.observe(r, resp)
        if not answers:
            self.observe(req, None)

    def answer(self, req: Any, status: int, headers: object, body: bytes | None) -> None:
        r = copy.copy(req)
        resp = self.guard(self.p.decode_response, r, status, headers, body)
        self.observe(r, resp)

    def observe(self, req: Any, resp: Any) -> None:
        """What the Decode and Track addons do with a decoded flow."""
        self.hints.learn("fuzz:80", req, resp)
        if not self.is_relevant(req, resp):
            return
        s = self.summarise(req, resp, upstream="fuzz:80")
        json.dumps(s, ensure_ascii=False)  # flow metadata and the event log are plain JSON
        self.n += 1
        observe = self.tracker.observe
        events = self.guard(observe, s, flow=f"f{self.n}", ts=float(self.n), client="fuzz")
        json.dumps(events, ensure_ascii=False)


def check(data: bytes, *, strict: bool | None = None) -> list[str]:
    """Feed ``data`` everywhere; raise what the decoders raise, except known bugs (returned
    by name) unless ``strict`` (default: the ``FUZZ_STRICT`` environment variable)."""
    if strict is None:
        strict = os.environ.get("FUZZ_STRICT", "") not in ("", "0")
    run = Run(strict)
    lines = data.split(b"\n", HEADER_SLOTS)
    values = [ln[:512].rstrip(b"\r") for ln in lines[:HEADER_SLOTS]]
    values += [b""] * (HEADER_SLOTS - len(values))
    req_slots = list(zip(REQUEST_SLOTS, values, strict=True))
    resp_slots = list(zip(RESPONSE_SLOTS, values, strict=True))
    plain_req = [(b"Content-Type", b"text/xml; charset=utf-8"), (b"Depth", b"1")]
    plain_resp = [(b"Content-Type", b"text/xml; charset=utf-8")]
    resp_headers = (plain_resp, resp_slots)
    # mitmproxy's request.path: the request line's bytes, decoded UTF-8 with surrogateescape
    target = (b"/c/" + values[0][:200].lstrip(b"/")).decode("utf-8", "surrogateescape")

    # 1. the input as the body of a request, with plain headers and with header slots
    for method in METHODS:
        answers = [(207, plain_resp, data)] if method in ("REPORT", "SEARCH", "PROPFIND") else []
        run.flow(method, "/c/", plain_req, data, answers)
        run.flow(method, target, req_slots, data, [(412, resp_slots, None)])
    # 2. the input as the answer to canonical requests, with every status that means something
    for req, answers in api()["canonical"]:
        for status, h in answers:
            run.answer(req, status, resp_headers[h], data)
    # 3. the input as an HTTP message: its own start line, headers and body
    parsed = _http_head(data)
    if parsed is not None:
        start, headers, body = parsed
        if m := _START_REQUEST.match(start):
            method = m[1].decode("ascii")
            path = m[2].decode("utf-8", "surrogateescape")
            run.flow(method, path, headers, body, [(207, plain_resp, None), (412, plain_resp, b"")])
        elif m := _START_STATUS.match(start):
            for req, _ in api()["canonical"]:
                run.answer(req, int(m[1]), headers, body)
        else:
            for req, _ in api()["canonical"][:3]:
                run.answer(req, 207, headers, body)
    return run.hits


# ------------------------------------------------------------------------------ the corpus


def corpus_files(directory: Path = CORPUS) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


RFC6578_SEEDS: dict[str, bytes] = {
    "rfc-request-caldav": b'<?xml version="1.0" encoding="utf-8"?>\n<D:sync-collection '
    b'xmlns:D="DAV:"><D:sync-token/><D:sync-level>1</D:sync-level><D:prop><D:getetag/>'
    b"</D:prop></D:sync-collection>",
    "rfc-request-tsdav": b'<sync-collection xmlns="DAV:"><sync-level>1</sync-level>'
    b"<sync-token>http://radicale.org/ns/sync/5f3a</sync-token><limit><nresults>10</nresults>"
    b"</limit><prop><getetag/></prop></sync-collection>",
    "rfc-answer-radicale": b"<?xml version='1.0' encoding='utf-8'?>\n<multistatus "
    b'xmlns="DAV:"><sync-token>http://radicale.org/ns/sync/8c1f</sync-token><response>'
    b'<href>/alice/cal/e1.ics</href><propstat><prop><getetag>"1a"</getetag></prop><status>'
    b"HTTP/1.1 200 OK</status></propstat></response><response><href>/alice/cal/gone.ics"
    b"</href><status>HTTP/1.1 404 Not Found</status></response></multistatus>",
    "rfc-answer-xandikos": b'<ns0:multistatus xmlns:ns0="DAV:"><ns0:response><ns0:href>'
    b"/user/calendars/calendar/e1.ics</ns0:href><ns0:propstat><ns0:status>HTTP/1.1 200 OK"
    b'</ns0:status><ns0:prop><ns0:getetag>"a1b2"</ns0:getetag></ns0:prop></ns0:propstat>'
    b"<ns0:propstat><ns0:status>HTTP/1.1 404 Not Found</ns0:status><ns0:prop><ns1:calendar-data"
    b' xmlns:ns1="urn:ietf:params:xml:ns:caldav"/></ns0:prop></ns0:propstat></ns0:response>'
    b"<ns0:sync-token>3b4c0a1f9d2e8b7c6a5f4e3d2c1b0a9f8e7d6c5b</ns0:sync-token>"
    b"</ns0:multistatus>",
    "rfc-answer-truncated": b'<d:multistatus xmlns:d="DAV:"><d:response><d:href>/alice/cal/'
    b"</d:href><d:status>HTTP/1.1 507 Insufficient Storage</d:status><d:error>"
    b"<d:number-of-matches-within-limits/></d:error></d:response><d:response><d:href>"
    b'/alice/cal/e2.ics</d:href><d:propstat><d:prop><d:getetag>"2b"</d:getetag></d:prop>'
    b"<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response><d:sync-token>data:,17"
    b"</d:sync-token></d:multistatus>",
    "rfc-answer-invalid-token": b'<?xml version="1.0"?><D:error xmlns:D="DAV:">'
    b"<D:valid-sync-token/><D:responsedescription>bad token</D:responsedescription></D:error>",
    "rfc-answer-propfind-ctag": b'<d:multistatus xmlns:d="DAV:" '
    b'xmlns:cs="http://calendarserver.org/ns/"><d:response><d:href>/alice/cal/</d:href>'
    b'<d:propstat><d:prop><cs:getctag>"c9"</cs:getctag><d:sync-token>'
    b"http://radicale.org/ns/sync/8c1f</d:sync-token></d:prop><d:status>HTTP/1.1 200 OK"
    b"</d:status></d:propstat></d:response></d:multistatus>",
    "rfc-answer-utf16": '<?xml version="1.0" encoding="UTF-16"?><multistatus xmlns="DAV:">'
    "<sync-token>data:,3</sync-token><response><href>/alice/cal/caf%C3%A9.ics</href><status>"
    "HTTP/1.1 404 Not Found</status></response></multistatus>".encode("utf-16"),
    # header slots (If/ResourceTag, Range/Content-Range, If-Match/Repl-UID, If-None-Match/ETag,
    # If-Schedule-Tag-Match/Content-Type, Depth/Content-Length, Destination/Location,
    # Overwrite/Accept-Ranges), one value a line
    "hdr-exchange": b'<http://x/a.EML> (<rt:5e3c> ["e1"]) (Not <rid:5e3c0001>)\n'
    b"rows 0-99; total=350\n<rid:5e3c9a1f0000001a01>\n*\ntext/xml\n1\n"
    b"http://mail.example.com/exchange/alice/Archive/Report.EML\nF",
    "hdr-rfc6578": b'(["W/\\"x\\""])\nrows=0-1,5-,-3\n"1a"\n"1b"\n"s1"\n0\n/alice/cal/e1.ics\nT',
}
# Whole vector files with headers that matter: start line, headers and body in one input.
RAW_VECTORS = (
    "09-range-page", "11-put-conditional-412", "13-get-oddcase", "16-move", "20-put-210",
    "33-if-tagged-not", "34-range-list", "35-range-open", "36-range-suffix", "37-post-create",
)  # fmt: skip


def seeds() -> dict[str, bytes]:
    """The seed inputs: every distinct body of tests/vectors/exchange, some whole vector files,
    RFC 6578 requests and answers of the real peers, and header values."""
    sys.path.insert(0, str(ROOT))
    from tests.vectors.load import VECTOR_DIR, load, stems

    out: dict[str, bytes] = {}
    seen: set[bytes] = set()
    for stem in stems():
        for kind in ("request", "response"):
            try:
                body = load(stem, kind).body
            except FileNotFoundError:
                continue
            if body and body not in seen:
                seen.add(body)
                out[f"vec-{stem}.{kind}"] = body
    for stem in RAW_VECTORS:
        for kind in ("request", "response"):
            out[f"raw-{stem}.{kind}"] = (VECTOR_DIR / f"{stem}.{kind}.http").read_bytes()
    out.update(RFC6578_SEEDS)
    return out


def write_seeds(directory: Path = CORPUS) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (directory / name).write_bytes(data)
    return len(seeds())


def save_new(data: bytes, directory: Path = CORPUS) -> Path:
    """Store an input under its SHA-1, as libFuzzer names them."""
    path = directory / hashlib.sha1(data).hexdigest()
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------ engines


def _libfuzzer_child(argv: list[str]) -> None:
    """Runs under libFuzzer (``--libfuzzer`` followed by libFuzzer's own arguments)."""
    import atheris

    with atheris.instrument_imports(include=["repltap"]):
        api()

    def one_input(data: bytes) -> None:
        check(data)

    # argv[0] is what libFuzzer runs (through the shell) for -merge and -fork children
    atheris.Setup([f"{sys.executable} {Path(__file__).resolve()} --libfuzzer", *argv], one_input)
    atheris.Fuzz()


def _dir_size(directory: Path) -> tuple[int, int]:
    files = corpus_files(directory)
    return len(files), sum(p.stat().st_size for p in files)


def fuzz_atheris(seconds: int, extra: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="repltap-fuzz-"))
    new_dir, log = work / "new", work / "fuzz.log"
    new_dir.mkdir()
    # libFuzzer runs argv[0] through the shell for -merge: one string that starts this script
    base = [f"{sys.executable} {Path(__file__).resolve()} --libfuzzer"]
    cmd = [
        *base,
        str(new_dir),
        str(CORPUS),
        f"-max_total_time={seconds}",
        f"-dict={DICT}",
        f"-max_len={MAX_LEN}",
        "-timeout=20",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={work}/",
        *extra,
    ]
    print(f"atheris: fuzzing for {seconds} s; log {log}", flush=True)
    with log.open("wb") as f:
        rc = subprocess.run(
            shlex.split(cmd[0]) + cmd[1:], stdout=f, stderr=subprocess.STDOUT, timeout=seconds + 600
        ).returncode
    text = log.read_text(errors="replace")
    execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", text)
    if rc != 0:
        crashes = sorted(work.glob("crash-*")) + sorted(work.glob("timeout-*"))
        tail = "\n".join(text.splitlines()[-60:])
        print(f"{tail}\n\nFAILED (exit {rc}); input(s): {', '.join(map(str, crashes)) or '-'}")
        print(f"replay: {sys.executable} {__file__} --replay <input>; scratch dir kept: {work}")
        return 1
    before = set(p.name for p in corpus_files())
    merge = [*base, "-merge=1", f"-max_len={MAX_LEN}", str(CORPUS), str(new_dir)]
    with (work / "merge.log").open("wb") as f:
        subprocess.run(
            shlex.split(merge[0]) + merge[1:],
            stdout=f,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=900,
        )
    added = sorted(set(p.name for p in corpus_files()) - before)
    n, size = _dir_size(CORPUS)
    print(
        f"atheris: {int(execs[-1]) if execs else 0} executions in {seconds} s, coverage "
        f"{cov[-1][0] if cov else '?'} edges / {cov[-1][1] if cov else '?'} features; "
        f"{len(corpus_files(new_dir))} new inputs found, {len(added)} kept after merging; "
        f"corpus {n} files, {size / 1024:.0f} KiB"
    )
    for name in added:
        print(f"  + {name}")
    if size > MAX_CORPUS:
        print(f"the corpus is over {MAX_CORPUS // 1024} KiB: run {__file__} --minimize")
    if os.environ.get("FUZZ_KEEP"):
        print(f"scratch dir kept: {work}")
    else:
        shutil.rmtree(work)
    return 0


def minimize() -> int:
    """Shrink the corpus to the seeds plus a set of inputs with the same coverage (libFuzzer
    -merge=1 into an empty directory)."""
    work = Path(tempfile.mkdtemp(prefix="repltap-fuzz-min-"))
    out = work / "min"
    out.mkdir()
    n0, size0 = _dir_size(CORPUS)
    base = f"{sys.executable} {Path(__file__).resolve()} --libfuzzer"
    with (work / "merge.log").open("wb") as f:
        subprocess.run(
            [*shlex.split(base), "-merge=1", f"-max_len={MAX_LEN}", str(out), str(CORPUS)],
            stdout=f,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=900,
        )
    keep = {p.read_bytes() for p in corpus_files(out)}
    seed_names = set(seeds())
    for path in corpus_files():
        if path.name in seed_names or path.read_bytes() in keep:
            keep.discard(path.read_bytes())
        else:
            path.unlink()
    for data in keep:  # a merged file that libFuzzer named anew
        save_new(data)
    n, size = _dir_size(CORPUS)
    print(f"corpus: {n0} files ({size0 / 1024:.0f} KiB) → {n} files ({size / 1024:.0f} KiB)")
    shutil.rmtree(work)
    return 0


def _mutations() -> Any:
    from hypothesis import strategies as st

    tokens = [ln.split("=", 1)[1].strip()[1:-1] for ln in _dict_lines()]  # name="value"
    words = st.sampled_from([t.encode().decode("unicode_escape").encode("latin-1") for t in tokens])

    @st.composite
    def mutate(draw: Any, data: bytes) -> bytes:
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data)))
            j = draw(st.integers(i, min(len(data), i + 64)))
            op = draw(st.integers(0, 4))
            piece = draw(words | st.binary(min_size=1, max_size=8))
            if op == 0:
                data = data[:i]
            elif op == 1:
                data = data[:i] + data[j:]
            elif op == 2:
                data = data[:i] + piece + data[i:]
            elif op == 3:
                data = data[:i] + piece + data[j:]
            else:
                data = data[:j] + data[i:j] + data[j:]
        return data[: MAX_LEN * 2]

    return mutate


def _dict_lines() -> list[str]:
    return [ln for ln in DICT.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


class LineCoverage:
    """Lines of repltap reached so far (sys.monitoring, Python 3.12): the fallback engine's
    measure of an interesting input."""

    TOOL = 4

    def __init__(self) -> None:
        import repltap

        self.prefix = str(Path(repltap.__file__).resolve().parent)
        self.seen: set[tuple[str, int]] = set()
        self.new = 0
        mon = sys.monitoring
        mon.use_tool_id(self.TOOL, "repltap-fuzz")
        mon.register_callback(self.TOOL, mon.events.LINE, self._line)
        mon.set_events(self.TOOL, mon.events.LINE)

    def _line(self, code: Any, line: int) -> Any:
        if code.co_filename.startswith(self.prefix):
            key = (code.co_filename, line)
            if key not in self.seen:
                self.seen.add(key)
                self.new += 1
        return sys.monitoring.DISABLE

    def close(self) -> None:
        sys.monitoring.set_events(self.TOOL, 0)
        sys.monitoring.free_tool_id(self.TOOL)


def fuzz_hypothesis(seconds: int) -> int:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    files = corpus_files()
    inputs = [p.read_bytes() for p in files]
    cov = LineCoverage()
    for data in inputs:
        check(data)
    start_lines = len(cov.seen)
    kept: list[Path] = []
    execs = 0
    mutate = _mutations()

    @settings(
        max_examples=250,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.sampled_from(inputs).flatmap(mutate) | st.binary(max_size=1024))
    def one(data: bytes) -> None:
        nonlocal execs
        execs += 1
        cov.new = 0
        check(data)
        if cov.new:
            kept.append(save_new(data))

    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            one()
    except Exception:
        traceback.print_exc()
        print("FAILED: Hypothesis printed the smallest failing input above")
        return 1
    finally:
        cov.close()
    n, size = _dir_size(CORPUS)
    print(
        f"hypothesis: {execs} executions in {seconds} s; repltap lines reached "
        f"{start_lines} → {len(cov.seen)}; {len(kept)} new inputs kept; corpus {n} files, "
        f"{size / 1024:.0f} KiB"
    )
    return 0


def replay(paths: list[Path], strict: bool) -> int:
    failed = 0
    hits: dict[str, int] = {}
    t = time.perf_counter()
    for p in paths:
        try:
            for name in check(p.read_bytes(), strict=strict):
                hits[name] = hits.get(name, 0) + 1
        except Exception as e:
            failed += 1
            if failed <= 3:
                print(f"--- {p}")
                traceback.print_exc()
            else:
                print(f"--- {p}: {e!r}")
    took = time.perf_counter() - t
    print(f"{len(paths)} inputs in {took:.2f} s, {failed} failed; known bugs hit: {hits or 'none'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--libfuzzer"]:
        _libfuzzer_child(args[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")))
    ap.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    ap.add_argument("--strict", action="store_true", help="report known bugs too")
    ap.add_argument("--seed", action="store_true", help="rewrite the seed inputs and stop")
    ap.add_argument(
        "--minimize", action="store_true", help="keep the seeds and a coverage-equivalent set"
    )
    ap.add_argument("--replay", nargs="+", type=Path, metavar="FILE", help="run inputs once")
    ap.add_argument("libfuzzer_args", nargs="*", help="passed on to libFuzzer (after --)")
    ns = ap.parse_args(args)
    if ns.strict:
        os.environ["FUZZ_STRICT"] = "1"
    if ns.seed:
        print(f"{write_seeds()} seed inputs written to {CORPUS}")
        return 0
    if ns.minimize:
        return minimize()
    if ns.replay:
        paths = [q for p in ns.replay for q in (corpus_files(p) if p.is_dir() else [p])]
        return replay(paths, ns.strict)
    CORPUS.mkdir(parents=True, exist_ok=True)
    if not corpus_files():
        write_seeds()
    engine = ns.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed: fuzzing with Hypothesis instead")
            engine = "hypothesis"
        else:
            engine = "atheris"
    if engine == "atheris":
        return fuzz_atheris(ns.seconds, ns.libfuzzer_args)
    return fuzz_hypothesis(ns.seconds)


if __name__ == "__main__":
    sys.exit(main())
