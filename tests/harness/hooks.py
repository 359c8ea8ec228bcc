"""Drive a flow through mitmproxy's HTTP hooks in a taddons context, as the proxy would."""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.addonmanager import AddonManager
from mitmproxy.proxy.layers.http import (
    HttpErrorHook,
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)
from mitmproxy.test import tflow


async def run_hooks(addons: AddonManager, f: http.HTTPFlow, upstream: http.Response | None) -> bool:
    """The flow through every hook; ``upstream`` answers unless an addon did (None: the
    connection fails, and the flow ends in an error). Returns whether the upstream was asked."""
    await addons.handle_lifecycle(HttpRequestHeadersHook(f))
    await addons.handle_lifecycle(HttpRequestHook(f))
    asked = f.response is None
    if asked:
        if upstream is None:
            f.error = tflow.terr("[Errno 111] Connection refused")
            await addons.handle_lifecycle(HttpErrorHook(f))
            return asked
        f.response = upstream
    await addons.handle_lifecycle(HttpResponseHeadersHook(f))
    await addons.handle_lifecycle(HttpResponseHook(f))
    return asked
