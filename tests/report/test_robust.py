"""Any log the reader accepts can be reported: odd field types never end in a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repltap.report import _parse_jsonl, analyse, render_html, render_text

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = (
    "seq",
    "ts",
    "flow",
    "upstream",
    "scope",
    "sent",
    "received",
    "changes",
    "status",
    "kind",
    "severity",
    "detail",
    "client",
    "from",
    "to",
    "via",
    "uid",
    "method",
    "current",
    "content_range",
    "acknowledged",
    "range",
    "truncated",
)
KINDS = ("manifest", "token", "invalid_token", "tag", "conflict", "anomaly", "fault")


@st.composite
def events(draw: st.DrawFn) -> dict[str, object]:
    kind = draw(st.sampled_from(KINDS))
    ev: dict[str, object] = {"v": 1, "event": kind}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=8, unique=True)):
        ev[name] = draw(values)
    ev["collection"] = draw(st.sampled_from(["/a/", "/a/b/", "/c"]))
    ev["resource"] = draw(st.sampled_from(["/a/x", "/a/b/y", "/c/z", "/q"]))
    ev["code"] = draw(st.sampled_from(["token-regressed", "stale-condition", "made-up"]))
    if kind == "anomaly" and draw(st.booleans()):
        del ev["resource"]  # then it is a collection's
    return ev


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), max_size=25))
def test_any_accepted_log_renders(log: list[dict[str, object]]) -> None:
    data = "".join(json.dumps(e) + "\n" for e in log).encode()
    accepted, _ = _parse_jsonl("fuzz.jsonl", data)
    a = analyse(accepted, "fuzz.jsonl")
    render_text(a, color=True)
    page = render_html(a)
    assert page.endswith("</html>\n")


def test_sample_renders_the_same_twice() -> None:
    """Rendering is deterministic (the reference screenshot depends on it)."""
    data = (Path(__file__).parent / "data" / "session.jsonl").read_bytes()
    events, _ = _parse_jsonl("s.jsonl", data)
    assert render_html(analyse(events, "s")) == render_html(analyse(events, "s"))
