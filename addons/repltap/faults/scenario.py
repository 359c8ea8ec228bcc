"""Fault scenarios: the YAML schema, its validation, and the decision which rule fires.

What may live here: turning a scenario file into :class:`Scenario` (every mistake reported with
the file, the line and the field), the catalogue of actions and their parameters, and
:class:`RuleState`, which counts a rule's matches and decides, deterministically, whether it
fires for a flow described by a :class:`FlowView`. What may not: mitmproxy, sockets, or touching
a message (the adapter does that).

A scenario::

    description: a flaky link          # optional, shown by repl.faults.list
    seed: 7                            # optional (default 0): seeds every probability and jitter
    rules:
      - name: slow-manifests           # required, unique: letters, digits, . _ -
        match:                         # optional; every criterion given must hold
          method: [SEARCH, REPORT]     # one or a list
          path: "/exchange/*/Inbox/*"  # glob on the normalised path (* also matches /)
          kind: manifest               # manifest, upload, download, delete, ... (one or a list)
          protocol: exchange           # exchange or rfc6578
          initial: false               # manifests only: true = initial syncs, false = incremental
          after_token: 2               # int: once N tokens were handed out for the collection;
                                       # str: once that exact token was seen on the wire
                                       # (both counted from the scenario's (re)load)
          header: {User-Agent: "repltap-sync/*"}   # request headers (value globs; "*" = present)
          status: [200, 204]           # the server's status (actions after the answer only)
          nth: 2                       # only the 2nd matching flow (or a list: [2, 5])
          every: 3                     # every 3rd matching flow
          probability: 0.25            # drawn from the seeded generator of this rule
        action: {type: delay, ms: 500, jitter_ms: 200}   # or just the name: "action: drop"
        times: 3                       # inject at most 3 times
        duration: 30s                  # stop 30 s after the first injection (ms, s, m, h)
        enabled: true                  # false: loaded but off until repl.faults.enable

Determinism: a rule counts the flows it *could* apply to (its criteria hold and the action makes
sense for the flow), in the order they reach the rule's hook; ``nth``/``every`` select among
those, and probabilities and jitter come from ``random.Random(f"{seed}/{rule name}")``. The same
seed and the same traffic therefore give the same faults (``duration`` aside, which is time).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..protocol.model import KINDS, PROTOCOLS

# Phases, in the order a flow goes through them (the mitmproxy hooks of the same names).
REQUEST, RESPONSEHEADERS, RESPONSE = "request", "responseheaders", "response"
PHASES = (REQUEST, RESPONSEHEADERS, RESPONSE)
WRITE_KINDS = frozenset(("upload", "delete", "move", "copy", "mkcol"))
CHANGE_TYPES = ("new", "change", "delete")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_METHOD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,31}$")
_HEADER_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file, line and field."""

    def __init__(self, path: str, line: int | None, field: str, message: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")
        self.path = path
        self.line = line
        self.field = field
        self.message = message


# --------------------------------------------------------------------------------------------
# YAML with line numbers

_CONSTRUCTOR = yaml.constructor.SafeConstructor()


@dataclass
class Y:
    """A YAML value with the line (1-based) it starts on."""

    value: Any  # dict[str, Y], list[Y] or a plain scalar
    line: int


def _tree(node: yaml.Node, path: str, where: str = "") -> Y:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Y] = {}
        for knode, vnode in node.value:
            key = _tree(knode, path)
            if not isinstance(key.value, str):
                raise ScenarioError(
                    path, key.line, where.rstrip("."), f"a key must be a name, not {key.value!r}"
                )
            if key.value in out:
                raise ScenarioError(
                    path,
                    key.line,
                    where + key.value,
                    f"given twice (first on line {out[key.value].line})",
                )
            out[key.value] = _tree(vnode, path, f"{where}{key.value}.")
            out[key.value].line = key.line  # errors point at the key, where people look
        return Y(out, line)
    if isinstance(node, yaml.SequenceNode):
        base = where.rstrip(".")
        return Y([_tree(n, path, f"{base}[{i}].") for i, n in enumerate(node.value)], line)
    return Y(_CONSTRUCTOR.construct_object(node, deep=True), line)


def _plain(v: Any) -> Any:
    """A value without its line numbers, for messages."""
    if isinstance(v, Y):
        return _plain(v.value)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _parse_yaml(text: str, path: str) -> Y | None:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ScenarioError(path, line, "", f"not valid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ScenarioError(path, None, "", f"not valid YAML: {e}") from None
    return None if node is None else _tree(node, path)


# --------------------------------------------------------------------------------------------
# Field checkers: each takes (value, fail) and returns the clean value or calls fail(message).

Fail = Callable[[str], Any]
Check = Callable[[Any, Fail], Any]


def _number(lo: float | None = None, hi: float | None = None, *, integer: bool = False) -> Check:
    def check(v: Any, fail: Fail) -> Any:
        ok = isinstance(v, int) if integer else isinstance(v, int | float)
        if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)):
            return fail(f"expected {'a whole number' if integer else 'a number'}, got {v!r}")
        if lo is not None and v < lo:
            return fail(f"must be at least {lo}, got {v}")
        if hi is not None and v > hi:
            return fail(f"must be at most {hi}, got {v}")
        return v

    return check


def _fraction(v: Any, fail: Fail) -> float:
    v = _number()(v, fail)
    if not 0 < v < 1:
        fail(f"must be between 0 and 1 (exclusive), got {v}")
    return float(v)


def _bool(v: Any, fail: Fail) -> bool:
    if not isinstance(v, bool):
        fail(f"expected true or false, got {v!r}")
    return bool(v)


def _text(v: Any, fail: Fail) -> str:
    if isinstance(v, bool):
        fail(f"expected text, got {v!r} (YAML reads yes/no/on/off as true/false: quote it)")
    if not isinstance(v, str):
        fail(f"expected text, got {v!r}")
    return str(v)


def _choice(*choices: str) -> Check:
    def check(v: Any, fail: Fail) -> str:
        if v not in choices:
            close = difflib.get_close_matches(str(v), choices, 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            fail(f"must be one of {', '.join(choices)}; got {v!r}{hint}")
        return str(v)

    return check


def _one_or_list(item: Check) -> Check:
    def check(v: Any, fail: Fail) -> list[Any]:
        items = v if isinstance(v, list) else [v]
        if not items:
            fail("must not be an empty list")
        return [item(i.value if isinstance(i, Y) else i, fail) for i in items]

    return check


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")


def _seconds(v: Any, fail: Fail) -> float:
    """A duration: a number of seconds or text with a unit (250ms, 30s, 5m, 1h)."""
    if isinstance(v, str):
        m = _DURATION_RE.match(v)
        if not m:
            fail(f"expected a duration such as 500ms, 30s, 5m or 1h, got {v!r}")
        secs = float(m[1]) * _UNITS[m[2]] if m else 0.0
    else:
        secs = float(_number(0)(v, fail))
    if secs <= 0:
        fail("must be longer than zero")
    return secs


def _status(v: Any, fail: Fail) -> int:
    return int(_number(100, 599, integer=True)(v, fail))


def _method(v: Any, fail: Fail) -> str:
    if not isinstance(v, str) or not _METHOD_RE.match(v):
        fail(f"expected an HTTP method such as PUT or SEARCH, got {v!r}")
    return str(v).upper()


def _glob(v: Any, fail: Fail) -> str:
    if not isinstance(v, str) or not v:
        fail(f"expected a path glob such as /exchange/*/Inbox/*, got {v!r}")
    return str(v)


def _headers_map(v: Any, fail: Fail, *, glob: bool) -> dict[str, str]:
    if not isinstance(v, dict) or not v:
        fail("expected a mapping of header names to values, such as {If: '*rt:*'}")
    out: dict[str, str] = {}
    for name, val in v.items():
        if not _HEADER_RE.match(name):
            fail(f"{name!r} is not a header name")
        value = _plain(val)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            fail(f"the value of {name} must be text, got {value!r}")
        if not glob and ("\r" in value or "\n" in value):
            fail(f"the value of {name} must be one line")
        out[name.lower() if glob else name] = value
    return out


def _after_token(v: Any, fail: Fail) -> str | int:
    if isinstance(v, bool):
        fail(f"expected a token (text) or a number of tokens, got {v!r}")
    if isinstance(v, int):
        return int(_number(1, integer=True)(v, fail))
    if not isinstance(v, str) or not v.strip():
        fail(f"expected a token (text) or a number of tokens, got {v!r}")
    return str(v).strip()


# --------------------------------------------------------------------------------------------
# The action catalogue


@dataclass(frozen=True)
class Param:
    """One parameter of an action."""

    check: Check
    default: Any = None
    required: bool = False
    doc: str = ""


@dataclass(frozen=True)
class ActionDef:
    """One kind of fault: where it happens, what it takes, whether it ends the flow."""

    name: str
    group: str  # transport | http | replication
    phases: tuple[str, ...]  # the first is the default; more means a `phase` parameter
    params: dict[str, Param]
    terminal: bool  # the client gets no (further) answer from the server after it
    doc: str

    @property
    def needs_response(self) -> bool:
        """True when the action always happens after the server answered."""
        return REQUEST not in self.phases


_PHASE_DOC = "request: before the server is asked; response: after it answered"
_WHICH = _choice("first", "last", "random")


def _types(v: Any, fail: Fail) -> list[str]:
    return list(_one_or_list(_choice(*CHANGE_TYPES))(v, fail))


ACTIONS: dict[str, ActionDef] = {
    a.name: a
    for a in (
        # transport
        ActionDef(
            "delay",
            "transport",
            (REQUEST, RESPONSE),
            {
                "ms": Param(_number(0, 600_000), required=True, doc="milliseconds"),
                "jitter_ms": Param(_number(0, 600_000), 0, doc="± uniform jitter, seeded"),
            },
            False,
            "hold the flow (and only it) for ms ± jitter_ms",
        ),
        ActionDef(
            "drop", "transport", (REQUEST, RESPONSE), {}, True, "close the connection, no byte"
        ),
        ActionDef(
            "reset",
            "transport",
            (REQUEST, RESPONSE),
            {},
            True,
            "abort the client connection with a TCP RST, no byte",
        ),
        ActionDef(
            "truncate",
            "transport",
            (RESPONSEHEADERS,),
            {
                "bytes": Param(_number(0, integer=True), doc="body bytes to pass"),
                "fraction": Param(_fraction, doc="share of the body to pass"),
                "rst": Param(_bool, False, doc="end with a TCP RST instead of a FIN"),
            },
            True,
            "pass the server's headers and the first bytes of the body, then close",
        ),
        ActionDef(
            "hang",
            "transport",
            (REQUEST, RESPONSE),
            {"seconds": Param(_seconds, doc="give up after this long (default: never)")},
            True,
            "answer nothing until the client gives up, then close",
        ),
        # HTTP
        ActionDef(
            "status",
            "http",
            (REQUEST, RESPONSE),
            {
                "code": Param(_status, required=True, doc="HTTP status"),
                "retry_after": Param(
                    lambda v, fail: (
                        str(_number(0, integer=True)(v, fail))
                        if not isinstance(v, str)
                        else _text(v, fail)
                    ),
                    doc="Retry-After header (seconds or an HTTP date)",
                ),
                "body": Param(_text, doc="body text"),
                "headers": Param(
                    lambda v, fail: _headers_map(v, fail, glob=False), doc="extra headers"
                ),
            },
            True,
            "answer with this status instead of the server",
        ),
        ActionDef(
            "slow_first_byte",
            "http",
            (RESPONSEHEADERS,),
            {
                "ms": Param(_number(0, 600_000), required=True),
                "jitter_ms": Param(_number(0, 600_000), 0),
            },
            False,
            "hold the server's answer before its first byte reaches the client",
        ),
        # replication
        ActionDef(
            "invalid_token",
            "replication",
            (RESPONSE,),
            {"status": Param(_choice("auto", "475", "403", "412"), "auto")},
            True,
            "reject an incremental manifest's token (475, or 403/412 + valid-sync-token)",
        ),
        ActionDef(
            "conflict",
            "replication",
            (REQUEST,),
            {},
            True,
            "answer 412 to a conditional write without passing it on",
        ),
        ActionDef(
            "corrupt_token",
            "replication",
            (RESPONSE,),
            {"mode": Param(_choice("flip", "garbage", "empty"), "flip")},
            False,
            "change the token in a manifest answer",
        ),
        ActionDef(
            "swap_token",
            "replication",
            (RESPONSE,),
            {},
            False,
            "hand out a token another collection got",
        ),
        ActionDef(
            "stale_token",
            "replication",
            (RESPONSE,),
            {"back": Param(_number(1, 64, integer=True), 1, doc="how many answers back")},
            False,
            "answer a manifest with an older answer of the same collection again",
        ),
        ActionDef(
            "drop_entries",
            "replication",
            (RESPONSE,),
            {
                "count": Param(_number(1, integer=True), doc="entries to drop (default 1)"),
                "fraction": Param(_fraction, doc="share of the entries to drop"),
                "which": Param(_WHICH, "random"),
                "types": Param(_types, doc="only entries of these change types"),
            },
            False,
            "leave entries out of a manifest answer",
        ),
        ActionDef(
            "duplicate_entries",
            "replication",
            (RESPONSE,),
            {
                "count": Param(_number(1, integer=True), 1),
                "which": Param(_WHICH, "random"),
                "types": Param(_types),
            },
            False,
            "repeat entries of a manifest answer",
        ),
        ActionDef(
            "reorder_entries",
            "replication",
            (RESPONSE,),
            {"order": Param(_choice("reverse", "shuffle"), "shuffle")},
            False,
            "change the order of a manifest answer's entries",
        ),
        ActionDef(
            "paginate",
            "replication",
            (RESPONSE,),
            {"rows": Param(_number(1, integer=True), required=True, doc="entries per page")},
            False,
            "split a manifest answer into pages (Content-Range / 507)",
        ),
        ActionDef(
            "content_different",
            "replication",
            (RESPONSE,),
            {"body": Param(_text, doc="the 210 answer's text")},
            False,
            "answer 210 Content Different to a successful upload",
        ),
        ActionDef(
            "strip_tags",
            "replication",
            (RESPONSE,),
            {
                "headers": Param(
                    _one_or_list(
                        lambda v, fail: (
                            v
                            if isinstance(v, str) and _HEADER_RE.match(v)
                            else fail(f"{v!r} is not a header name")
                        )
                    ),
                    ["ResourceTag", "ETag"],
                )
            },
            False,
            "remove ResourceTag/ETag (or other named) headers from the answer",
        ),
        ActionDef(
            "rewrite_changetype",
            "replication",
            (RESPONSE,),
            {
                "from": Param(_choice("any", *CHANGE_TYPES), "any"),
                "to": Param(_choice(*CHANGE_TYPES, "none"), required=True),
                "count": Param(_number(1, integer=True), doc="entries to rewrite (default all)"),
            },
            False,
            "rewrite R:changetype of Exchange manifest entries (none: remove it)",
        ),
    )
}


# --------------------------------------------------------------------------------------------
# The scenario


@dataclass(frozen=True)
class Action:
    """A rule's action with its parameters resolved (defaults filled in)."""

    type: str
    phase: str
    params: dict[str, Any]

    @property
    def spec(self) -> ActionDef:
        return ACTIONS[self.type]

    def describe(self) -> str:
        """``delay 200±50 ms (request)``: one short line for lists and logs."""
        p = self.params
        bits = [self.type]
        if self.type in ("delay", "slow_first_byte"):
            bits.append(f"{p['ms']:g}" + (f"±{p['jitter_ms']:g}" if p["jitter_ms"] else "") + " ms")
        elif self.type == "status":
            bits.append(str(p["code"]))
        elif self.type == "truncate":
            cut = f"{p['bytes']} bytes" if p["bytes"] is not None else f"{p['fraction']:.0%}"
            bits.append(cut + (", RST" if p["rst"] else ""))
        elif self.type == "paginate":
            bits.append(f"{p['rows']} rows")
        elif self.type == "rewrite_changetype":
            bits.append(f"{p['from']}→{p['to']}")
        elif self.type in ("drop_entries", "duplicate_entries"):
            bits.append(f"{p['fraction']:.0%}" if p.get("fraction") else str(p.get("count") or 1))
        elif self.type == "hang" and p["seconds"]:
            bits.append(f"≤ {p['seconds']:g} s")
        if len(self.spec.phases) > 1:
            bits.append(f"({self.phase})")
        return " ".join(bits)


@dataclass(frozen=True)
class Match:
    """The criteria of a rule; None means "any"."""

    method: tuple[str, ...] | None = None
    path: tuple[str, ...] | None = None
    kind: tuple[str, ...] | None = None
    protocol: str | None = None
    initial: bool | None = None
    after_token: str | int | None = None
    header: tuple[tuple[str, str], ...] = ()
    status: tuple[int, ...] | None = None
    nth: tuple[int, ...] | None = None
    every: int | None = None
    probability: float = 1.0


@dataclass(frozen=True)
class Rule:
    """A named rule: when (match), what (action), how often (times, duration)."""

    name: str
    match: Match
    action: Action
    times: int | None = None
    duration: float | None = None
    seed: str = "0"
    enabled: bool = True
    description: str = ""
    line: int = 0


@dataclass(frozen=True)
class Scenario:
    """A loaded scenario file."""

    path: str
    rules: tuple[Rule, ...]
    seed: str = "0"
    description: str = ""

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file; raises :class:`ScenarioError`."""
    p = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(p, None, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(p, None, "", f"cannot be read: {e}") from None
    return loads(text, p)


def loads(text: str, path: str = "<scenario>") -> Scenario:
    """Validate scenario text; ``path`` is only used in error messages."""
    doc = _parse_yaml(text, path)
    if doc is None or not isinstance(doc.value, dict):
        raise ScenarioError(
            path, doc.line if doc else None, "", "expected a mapping with a 'rules' list"
        )
    top = _Fields(path, doc, "", ("description", "seed", "rules"))
    seed = top.get("seed", _seed, "0")
    description = top.get("description", _text, "")
    rules_y = top.require("rules")
    if not isinstance(rules_y.value, list):
        top.fail_at(rules_y, "rules", "expected a list of rules")
    rules: list[Rule] = []
    for i, ry in enumerate(rules_y.value):
        rules.append(_rule(path, ry, i, seed))
    seen: dict[str, Rule] = {}
    for r in rules:
        if r.name in seen:
            raise ScenarioError(
                path,
                r.line,
                f"rules[{rules.index(r)}].name",
                f"{r.name!r} is already the name of the rule on line {seen[r.name].line}",
            )
        seen[r.name] = r
    return Scenario(path, tuple(rules), seed, description)


def _seed(v: Any, fail: Fail) -> str:
    if isinstance(v, bool) or not isinstance(v, int | str):
        fail(f"expected a number or a word, got {v!r}")
    return str(v)


class _Fields:
    """The keys of one mapping, checked against the allowed ones, with errors that say where."""

    def __init__(self, path: str, y: Y, prefix: str, allowed: Iterable[str]) -> None:
        self.path = path
        self.y = y
        self.prefix = prefix
        self.allowed = tuple(allowed)
        if not isinstance(y.value, dict):
            raise ScenarioError(path, y.line, prefix.rstrip("."), "expected a mapping")
        for key, val in y.value.items():
            if key not in self.allowed:
                close = difflib.get_close_matches(key, self.allowed, 1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ScenarioError(
                    path,
                    val.line,
                    prefix + key,
                    f"unknown field{hint}; allowed here: {', '.join(self.allowed)}",
                )

    def has(self, key: str) -> bool:
        return key in self.y.value

    def fail_at(self, y: Y, key: str, message: str) -> Any:
        raise ScenarioError(self.path, y.line, self.prefix + key, message)

    def require(self, key: str) -> Y:
        if key not in self.y.value:
            raise ScenarioError(self.path, self.y.line, self.prefix + key, "missing")
        v: Y = self.y.value[key]
        return v

    def get(self, key: str, check: Check, default: Any = None) -> Any:
        y = self.y.value.get(key)
        if y is None or y.value is None:
            return default
        return check(_plain(y.value), lambda m: self.fail_at(y, key, m))


def _rule(path: str, ry: Y, i: int, scenario_seed: str) -> Rule:
    if not isinstance(ry.value, dict):
        raise ScenarioError(path, ry.line, f"rules[{i}]", "expected a mapping (a rule)")
    name_y = ry.value.get("name")
    label = f"rules[{i}]"
    if name_y is not None and isinstance(name_y.value, str):
        label = f"rules[{i}] ({name_y.value})"
    f = _Fields(
        path,
        ry,
        label + ".",
        ("name", "description", "enabled", "match", "action", "times", "duration", "seed"),
    )
    name = f.get("name", _text)
    if name is None:
        raise ScenarioError(path, ry.line, label + ".name", "missing (every rule needs a name)")
    if not _NAME_RE.match(name):
        f.fail_at(
            ry.value["name"],
            "name",
            f"{name!r}: use letters, digits, '.', '_' and '-' (up to 64), starting with a "
            "letter or digit",
        )
    action = _action(path, f.require("action"), label + ".action")
    match = _match(path, ry.value.get("match"), label + ".match", action, ry.line)
    return Rule(
        name=name,
        match=match,
        action=action,
        times=f.get("times", _number(1, integer=True)),
        duration=f.get("duration", _seconds),
        seed=f.get("seed", _seed, scenario_seed),
        enabled=f.get("enabled", _bool, True),
        description=f.get("description", _text, ""),
        line=ry.line,
    )


def _action(path: str, ay: Y, label: str) -> Action:
    if isinstance(ay.value, str):
        ay = Y({"type": Y(ay.value, ay.line)}, ay.line)
    if not isinstance(ay.value, dict):
        raise ScenarioError(
            path, ay.line, label, "expected an action name or a mapping with 'type'"
        )
    type_y = ay.value.get("type")
    if type_y is None:
        raise ScenarioError(path, ay.line, label + ".type", "missing")
    type_ = _choice(*ACTIONS)(type_y.value, lambda m: _raise(path, type_y.line, label + ".type", m))
    spec = ACTIONS[type_]
    allowed = ["type", *spec.params]
    if len(spec.phases) > 1:
        allowed.append("phase")
    f = _Fields(path, ay, label + ".", allowed)
    params = {}
    for pname, p in spec.params.items():
        if p.required and not f.has(pname):
            raise ScenarioError(path, ay.line, label + "." + pname, f"missing ({p.doc or pname})")
        params[pname] = f.get(pname, p.check, p.default)
    phase = (
        f.get("phase", _choice(*spec.phases), spec.phases[0])
        if len(spec.phases) > 1
        else (spec.phases[0])
    )
    if type_ == "truncate" and (params["bytes"] is None) == (params["fraction"] is None):
        raise ScenarioError(path, ay.line, label, "truncate needs either bytes or fraction")
    if type_ == "drop_entries" and params["count"] is not None and params["fraction"] is not None:
        raise ScenarioError(path, ay.line, label, "drop_entries takes count or fraction, not both")
    return Action(type_, phase, params)


def _raise(path: str, line: int, fieldname: str, message: str) -> Any:
    raise ScenarioError(path, line, fieldname, message)


def _match(path: str, my: Y | None, label: str, action: Action, rule_line: int) -> Match:
    if my is None or my.value is None:
        return Match()
    f = _Fields(
        path,
        my,
        label + ".",
        (
            "method",
            "path",
            "kind",
            "protocol",
            "initial",
            "after_token",
            "header",
            "status",
            "nth",
            "every",
            "probability",
        ),
    )

    def listed(key: str, check: Check) -> tuple[Any, ...] | None:
        v = f.get(key, _one_or_list(check))
        return tuple(v) if v is not None else None

    status = listed("status", _status)
    if status is not None and action.phase == REQUEST:
        f.fail_at(
            my.value["status"],
            "status",
            f"the server's status is not known yet when {action.type} happens "
            f"(phase {action.phase}); use phase: response, or drop the status criterion",
        )
    header = f.get("header", lambda v, fail: _headers_map(v, fail, glob=True), {})
    return Match(
        method=listed("method", _method),
        path=listed("path", _glob),
        kind=listed("kind", _choice(*KINDS)),
        protocol=f.get("protocol", _choice(*PROTOCOLS)),
        initial=f.get("initial", _bool),
        after_token=f.get("after_token", _after_token),
        header=tuple(sorted(header.items())),
        status=status,
        nth=listed("nth", _number(1, integer=True)),
        every=f.get("every", _number(1, integer=True)),
        probability=float(f.get("probability", _number(0, 1), 1.0)),
    )


# --------------------------------------------------------------------------------------------
# Deciding


@dataclass
class FlowView:
    """What a rule may look at, as the adapter saw the flow at one phase."""

    phase: str
    method: str
    path: str  # normalised
    kind: str  # one of model.KINDS
    protocol: str
    headers: dict[str, str] = field(default_factory=dict)  # request headers, lower-case names
    manifest: bool = False
    initial: bool | None = None  # manifests: no token sent
    sent_token: str | None = None
    conditional: bool = False  # a write with If / If-Match / If-None-Match
    status: int | None = None  # the server's (after the answer only)
    response_headers: frozenset[str] = frozenset()  # lower-case names
    has_body: bool = False  # the answer has a body still to come (responseheaders)
    received_token: str | None = None
    entries: tuple[str, ...] = ()  # change types of a manifest answer's entries, in order
    invalid_token: bool = False  # the server itself rejected the token
    older_answers: int = 0  # earlier manifest answers kept for this collection
    other_tokens: bool = False  # tokens of other collections are known
    collection_tokens: int = 0  # distinct tokens handed out for it (up to the largest after_token)
    tokens_seen: frozenset[str] | set[str] = frozenset()  # (of those after_token names)


def applies(action: Action, v: FlowView) -> bool:
    """Whether the action makes sense for this flow (a rule only counts flows where it does)."""
    t = action.type
    p = action.params
    if t in ("delay", "drop", "reset", "hang", "status"):
        return True
    if t == "slow_first_byte":
        return v.status is not None
    if t == "truncate":
        return v.has_body and v.method != "HEAD"
    if t == "conflict":
        return v.kind in WRITE_KINDS and v.conditional
    if t == "content_different":
        return v.kind == "upload" and v.status in (200, 201, 204)
    if t == "strip_tags":
        return any(h.lower() in v.response_headers for h in p["headers"])
    # Everything below rewrites a manifest answer.
    if not v.manifest or v.status is None:
        return False
    if t == "invalid_token":
        return not v.initial and v.sent_token is not None and not v.invalid_token
    answer = v.status in (206, 207) and not v.invalid_token
    if not answer:
        return False
    if t == "corrupt_token":
        return v.received_token is not None
    if t == "swap_token":
        return v.received_token is not None and v.other_tokens
    if t == "stale_token":
        return v.older_answers >= int(p["back"])
    if t in ("drop_entries", "duplicate_entries"):
        wanted = p["types"]
        return any(e in wanted for e in v.entries) if wanted else bool(v.entries)
    if t == "reorder_entries":
        return len(v.entries) >= 2
    if t == "paginate":
        return len(v.entries) > p["rows"] and v.received_token is not None
    if t == "rewrite_changetype":
        return v.protocol == "exchange" and any(
            p["from"] in ("any", e) and e != p["to"] for e in v.entries
        )
    raise AssertionError(f"unknown action {t}")


def matches(m: Match, v: FlowView) -> bool:
    """The static criteria (everything but nth, every and probability)."""
    if m.method is not None and v.method not in m.method:
        return False
    if m.path is not None and not any(fnmatch.fnmatchcase(v.path, g) for g in m.path):
        return False
    if m.kind is not None and v.kind not in m.kind:
        return False
    if m.protocol is not None and v.protocol != m.protocol:
        return False
    if m.initial is not None and (not v.manifest or bool(v.initial) != m.initial):
        return False
    if m.status is not None and v.status not in m.status:
        return False
    if isinstance(m.after_token, int) and v.collection_tokens < m.after_token:
        return False
    if isinstance(m.after_token, str) and m.after_token not in v.tokens_seen:
        return False
    for name, pattern in m.header:
        value = v.headers.get(name)
        if value is None or not fnmatch.fnmatchcase(value, pattern):
            return False
    return True


@dataclass
class RuleState:
    """One rule's counters and random generator; the runtime half of a :class:`Rule`."""

    rule: Rule
    enabled: bool = True
    candidates: int = 0  # flows the rule could have applied to
    injected: int = 0
    skipped: int = 0  # not selected by nth / every / probability
    limited: int = 0  # selected, but times or duration was used up
    continued: int = 0  # follow-ups served for an earlier injection (paginate)
    first_at: float | None = None
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.enabled = self.rule.enabled
        self.rng = random.Random(f"{self.rule.seed}/{self.rule.name}")

    def exhausted(self, now: float) -> bool:
        """True once times or duration is used up."""
        r = self.rule
        if r.times is not None and self.injected >= r.times:
            return True
        return (
            r.duration is not None
            and self.first_at is not None
            and now - self.first_at > (r.duration)
        )

    def consider(self, v: FlowView, now: float) -> int | None:
        """The occurrence number if the rule fires for this flow, else None."""
        r = self.rule
        if not self.enabled or not matches(r.match, v) or not applies(r.action, v):
            return None
        self.candidates += 1
        n = self.candidates
        m = r.match
        if (m.nth is not None and n not in m.nth) or (m.every is not None and n % m.every):
            self.skipped += 1
            return None
        if self.exhausted(now):
            self.limited += 1
            return None
        if m.probability < 1 and self.rng.random() >= m.probability:
            self.skipped += 1
            return None
        self.injected += 1
        if self.first_at is None:
            self.first_at = now
        return n

    def jitter(self, ms: float, jitter_ms: float) -> float:
        """``ms`` ± a uniform draw of ``jitter_ms``, never below zero, in seconds."""
        if jitter_ms:
            ms += self.rng.uniform(-jitter_ms, jitter_ms)
        return max(0.0, ms) / 1000
