"""mitmproxy finds hooks by attribute name: an attribute of an addon named like a hook (a
``done`` dict, a ``log`` sink) makes mitmproxy refuse the addon when that hook fires."""

from __future__ import annotations

import pytest
from mitmproxy import hooks
from mitmproxy.test import taddons

from tests.harness.mitm import load_repl_script


def _suite() -> list[object]:
    (suite,) = load_repl_script().addons
    return [suite, *suite.parts]


@pytest.mark.parametrize("addon", _suite(), ids=lambda a: type(a).__name__)
def test_every_attribute_named_like_a_hook_is_callable(addon: object) -> None:
    assert len(hooks.all_hooks) > 40
    with taddons.context(addon):  # configured and running, as in the proxy
        clashes = [
            name
            for name in hooks.all_hooks
            if hasattr(addon, name) and not callable(getattr(addon, name))
        ]
    assert clashes == []
