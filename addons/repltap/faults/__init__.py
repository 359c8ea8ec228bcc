"""Fault scenarios: the pure half of fault injection (the mitmproxy adapter is mitm/faults.py).

What may live here: reading and validating scenario files (``scenario``), deciding which rule
fires for which flow (``scenario``), and rewriting replication answers (``rewrite``). What may
not: mitmproxy, sockets, or any state beyond what a scenario's rules count.
"""

from __future__ import annotations

from .scenario import (
    ACTIONS,
    Action,
    FlowView,
    Match,
    Rule,
    RuleState,
    Scenario,
    ScenarioError,
    load,
    loads,
)

__all__ = [
    "ACTIONS",
    "Action",
    "FlowView",
    "Match",
    "Rule",
    "RuleState",
    "Scenario",
    "ScenarioError",
    "load",
    "loads",
]
