"""Shared pytest fixtures. The e2e harness itself lives in tests/harness/ (mitm.py, canned.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def mitm_confdir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One private mitmproxy confdir per test session: a fresh CA, nothing read from ~/.mitmproxy.

    Pass it as start_mitmdump(..., confdir=mitm_confdir). The CA is generated on the first start.
    """
    return str(tmp_path_factory.mktemp("mitmconf"))
