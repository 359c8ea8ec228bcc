"""The scenario schema (every mistake named by file, line and field) and the decision which
rule fires (deterministic for a seed and a sequence of flows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from repltap.faults import ACTIONS, FlowView, RuleState, ScenarioError, load, loads
from repltap.faults.scenario import REQUEST, RESPONSE, applies, matches

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = sorted((ROOT / "config" / "faults").glob("*.yaml"))


def error(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as e:
        loads(text, "s.yaml")
    return e.value


# ------------------------------------------------------------------------ the schema


def test_a_full_rule_loads_with_defaults_filled_in() -> None:
    sc = loads(
        """\
description: demo
seed: 7
rules:
  - name: slow-manifests
    match:
      method: [search, REPORT]
      path: "/exchange/*/Inbox/*"
      kind: manifest
      protocol: exchange
      initial: false
      after_token: 2
      header: {User-Agent: "repltap-sync/*"}
      nth: [2, 5]
      every: 3
      probability: 0.25
    action: {type: delay, ms: 500, jitter_ms: 200}
    times: 3
    duration: 1.5m
  - name: plain
    action: drop
    enabled: false
""",
        "s.yaml",
    )
    r = sc.rules[0]
    assert (sc.description, sc.seed, r.seed, r.line) == ("demo", "7", "7", 4)
    assert r.match.method == ("SEARCH", "REPORT")
    assert r.match.header == (("user-agent", "repltap-sync/*"),)  # names match any case
    assert (r.match.nth, r.match.every, r.match.after_token) == ((2, 5), 3, 2)
    assert r.action.params == {"ms": 500, "jitter_ms": 200} and r.action.phase == REQUEST
    assert (r.times, r.duration) == (3, 90.0)
    assert sc.rules[1].action.type == "drop" and sc.rules[1].enabled is False
    assert sc.rule("plain") is sc.rules[1] and sc.rule("nope") is None


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ("rules: [\n", "s.yaml:2", "not valid YAML"),
        ("seed: 1\n", "s.yaml:1: rules", "missing"),
        ("rules: 3\n", "s.yaml:1: rules", "expected a list"),
        ("rules:\n  - drop\n", "s.yaml:2: rules[0]", "expected a mapping"),
        ("rules:\n  - action: drop\n", "s.yaml:2: rules[0].name", "missing"),
        ("rules:\n  - name: a b\n    action: drop\n", "s.yaml:2: rules[0] (a b).name", "letters"),
        ("rules:\n  - name: a\n", "s.yaml:2: rules[0] (a).action", "missing"),
        ("rules:\n  - name: off\n    action: drop\n", "s.yaml:2: rules[0].name", "quote it"),
        (
            "rules:\n  - name: a\n    action: {type: dely}\n",
            "s.yaml:3: rules[0] (a).action.type",
            "did you mean 'delay'",
        ),
        (
            "rules:\n  - name: a\n    action: {type: delay}\n",
            "s.yaml:3: rules[0] (a).action.ms",
            "missing",
        ),
        (
            "rules:\n  - name: a\n    action: {type: delay, ms: fast}\n",
            "s.yaml:3: rules[0] (a).action.ms",
            "expected a number",
        ),
        (
            "rules:\n  - name: a\n    action:\n      type: status\n      code: 999\n",
            "s.yaml:5: rules[0] (a).action.code",
            "at most 599",
        ),
        (
            "rules:\n  - name: a\n    action: {type: drop, ms: 3}\n",
            "s.yaml:3: rules[0] (a).action.ms",
            "unknown field",
        ),
        (
            "rules:\n  - name: a\n    action: {type: conflict, phase: response}\n",
            "s.yaml:3: rules[0] (a).action.phase",
            "unknown field",
        ),
        (
            "rules:\n  - name: a\n    action: {type: truncate}\n",
            "s.yaml:3: rules[0] (a).action",
            "either bytes or fraction",
        ),
        (
            "rules:\n  - name: a\n    action: {type: truncate, fraction: 1.5}\n",
            "s.yaml:3: rules[0] (a).action.fraction",
            "between 0 and 1",
        ),
        (
            "rules:\n  - name: a\n    action: drop\n    match:\n      probabilty: 0.3\n",
            "s.yaml:5: rules[0] (a).match.probabilty",
            "did you mean 'probability'",
        ),
        (
            "rules:\n  - name: a\n    action: drop\n    match: {kind: [manifest, uplod]}\n",
            "s.yaml:4: rules[0] (a).match.kind",
            "did you mean 'upload'",
        ),
        (
            "rules:\n  - name: a\n    action: drop\n    match: {status: 200}\n",
            "s.yaml:4: rules[0] (a).match.status",
            "not known yet",
        ),
        (
            "rules:\n  - name: a\n    action: drop\n    match: {header: {'bad name': x}}\n",
            "s.yaml:4: rules[0] (a).match.header",
            "not a header name",
        ),
        (
            "rules:\n  - name: a\n    action: drop\n    duration: soon\n",
            "s.yaml:4: rules[0] (a).duration",
            "a duration such as",
        ),
        (
            "rules:\n  - name: a\n    action: drop\n    times: 0\n",
            "s.yaml:4: rules[0] (a).times",
            "at least 1",
        ),
        (
            "rules:\n  - name: a\n    action: drop\n    action: reset\n",
            "s.yaml:4: rules[0].action",
            "given twice (first on line 3)",
        ),
        (
            "rules:\n  - name: a\n    action: drop\n  - name: a\n    action: reset\n",
            "s.yaml:4: rules[1].name",
            "already the name of the rule on line 2",
        ),
        (
            "rules:\n  - name: a\n    action: drop\n    match: {probability: 2}\n",
            "s.yaml:4: rules[0] (a).match.probability",
            "at most 1",
        ),
    ],
)
def test_errors_name_file_line_and_field(text: str, where: str, says: str) -> None:
    e = error(text)
    assert str(e).startswith(where), str(e)
    assert says in str(e)


def test_a_missing_file_is_named() -> None:
    with pytest.raises(ScenarioError, match=r"^/no/such\.yaml: no such file"):
        load("/no/such.yaml")


def test_every_action_is_accepted_by_name_alone_or_with_its_required_parameters() -> None:
    required = {
        "delay": "{ms: 1}",
        "slow_first_byte": "{ms: 1}",
        "truncate": "{bytes: 1}",
        "status": "{code: 503}",
        "paginate": "{rows: 1}",
        "rewrite_changetype": "{to: change}",
    }
    lines = ["rules:"]
    for name in ACTIONS:
        params = required.get(name, "{}")
        lines += [f"  - name: r-{name}", f"    action: {{type: {name}, **{params}}}"]
    text = "\n".join(lines).replace(", **{}", "").replace(", **{", ", ").replace("}}", "}")
    sc = loads(text, "all.yaml")
    assert [r.action.type for r in sc.rules] == list(ACTIONS)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_the_library_loads(path: Path) -> None:
    sc = load(path)
    assert sc.description and sc.rules
    assert all(r.description for r in sc.rules)  # repl.faults.list and the README show them


def test_the_library_has_the_five_scenarios_of_the_issue() -> None:
    assert [p.stem for p in LIBRARY] == [
        "conflict-storm",
        "flaky-network",
        "server-reset",
        "token-corruption",
        "truncated-manifests",
    ]


# ------------------------------------------------------------------------ deciding


def view(**kw: object) -> FlowView:
    base: dict[str, object] = {
        "phase": REQUEST,
        "method": "SEARCH",
        "path": "/exchange/alice/Inbox/",
        "kind": "manifest",
        "protocol": "exchange",
        "manifest": True,
        "initial": False,
        "sent_token": "T1",
    }
    base.update(kw)
    return FlowView(**base)  # type: ignore[arg-type]


def rule(text: str) -> RuleState:
    return RuleState(loads("rules:\n" + text, "r.yaml").rules[0])


def fired(st: RuleState, views: list[FlowView], now: float = 0.0) -> list[int | None]:
    return [st.consider(v, now) for v in views]


def test_criteria() -> None:
    m = (
        loads(
            "rules:\n  - name: a\n    action: drop\n    match:\n"
            "      method: SEARCH\n      path: '/exchange/*/Inbox/'\n      kind: manifest\n"
            "      protocol: exchange\n      initial: false\n"
            "      header: {User-Agent: 'sync/*'}\n",
            "m.yaml",
        )
        .rules[0]
        .match
    )
    ok = view(headers={"user-agent": "sync/1.0"})
    assert matches(m, ok)
    assert not matches(m, view(headers={"user-agent": "other"}))
    assert not matches(m, view(headers={}))
    assert not matches(m, view(headers=ok.headers, method="PROPFIND"))
    assert not matches(m, view(headers=ok.headers, path="/exchange/alice/Contacts/"))
    assert not matches(m, view(headers=ok.headers, initial=True, sent_token=None))
    assert not matches(m, view(headers=ok.headers, protocol="rfc6578"))
    assert not matches(m, view(headers=ok.headers, kind="upload", manifest=False))


def test_after_token_by_count_or_by_value() -> None:
    by_count = rule("  - name: a\n    action: drop\n    match: {after_token: 2}\n")
    by_value = rule("  - name: b\n    action: drop\n    match: {after_token: 'T7'}\n")
    assert fired(by_count, [view(collection_tokens=1), view(collection_tokens=2)]) == [None, 1]
    assert fired(by_value, [view(tokens_seen={"T1"}), view(tokens_seen={"T1", "T7"})]) == [None, 1]


def test_nth_every_and_the_limits() -> None:
    nth = rule("  - name: a\n    action: drop\n    match: {nth: [2, 4]}\n")
    assert fired(nth, [view()] * 5) == [None, 2, None, 4, None]
    assert (nth.candidates, nth.injected, nth.skipped) == (5, 2, 3)
    every = rule("  - name: a\n    action: drop\n    match: {every: 2}\n    times: 2\n")
    assert fired(every, [view()] * 7) == [None, 2, None, 4, None, None, None]
    assert every.limited == 1 and every.skipped == 4
    timed = rule("  - name: a\n    action: drop\n    duration: 10s\n")
    assert [timed.consider(view(), t) for t in (100.0, 105.0, 110.0, 110.5)] == [1, 2, 3, None]


def test_a_rule_counts_only_flows_its_action_applies_to() -> None:
    st = rule("  - name: a\n    action: conflict\n    match: {nth: 2}\n")
    put = view(kind="upload", method="PUT", manifest=False, conditional=True)
    blind = view(kind="upload", method="PUT", manifest=False, conditional=False)
    assert fired(st, [put, blind, blind, put]) == [None, None, None, 2]


def test_same_seed_same_faults_other_seed_other_faults() -> None:
    text = "  - name: flaky\n    action: {type: delay, ms: 100, jitter_ms: 50}\n"
    text += "    match: {probability: 0.5}\n"

    def run(seed: str) -> list[object]:
        sc = loads(f"seed: {seed}\nrules:\n{text}", "p.yaml")
        st = RuleState(sc.rules[0])
        out: list[object] = []
        for _ in range(40):
            n = st.consider(view(), 0.0)
            out.append(None if n is None else round(st.jitter(100, 50), 6))
        return out

    a, b = run("1"), run("1")
    assert a == b
    assert 10 < sum(x is not None for x in a) < 30
    assert all(0.05 <= x <= 0.15 for x in a if isinstance(x, float))
    assert run("2") != a


def test_applicability() -> None:
    def rs(action: str) -> object:
        return loads(f"rules:\n  - name: x\n    action: {action}\n", "a.yaml").rules[0].action

    answer = view(phase=RESPONSE, status=207, received_token="T2", entries=("new", "change"))
    assert applies(rs("corrupt_token"), answer)  # type: ignore[arg-type]
    assert not applies(rs("corrupt_token"), view(phase=RESPONSE, status=207))  # type: ignore[arg-type]
    assert applies(rs("invalid_token"), answer)  # type: ignore[arg-type]
    initial = view(phase=RESPONSE, status=207, initial=True, sent_token=None, received_token="T")
    assert not applies(rs("invalid_token"), initial)  # type: ignore[arg-type]
    assert not applies(rs("{type: paginate, rows: 2}"), answer)  # type: ignore[arg-type]
    assert applies(rs("{type: paginate, rows: 1}"), answer)  # type: ignore[arg-type]
    assert not applies(rs("stale_token"), answer)  # type: ignore[arg-type]
    assert applies(rs("stale_token"), view(phase=RESPONSE, status=207, older_answers=1))  # type: ignore[arg-type]
    assert not applies(rs("swap_token"), answer)  # type: ignore[arg-type]
    upload = view(kind="upload", manifest=False, method="PUT", status=201, phase=RESPONSE)
    assert applies(rs("content_different"), upload)  # type: ignore[arg-type]
    assert not applies(rs("content_different"), view(kind="upload", status=412))  # type: ignore[arg-type]
    assert applies(rs("strip_tags"), view(response_headers=frozenset({"etag"})))  # type: ignore[arg-type]
    ct = rs("{type: rewrite_changetype, from: delete, to: change}")
    assert not applies(ct, answer)  # type: ignore[arg-type]
    assert not applies(
        ct,  # type: ignore[arg-type]
        view(phase=RESPONSE, status=207, entries=("delete",), protocol="rfc6578"),
    )
