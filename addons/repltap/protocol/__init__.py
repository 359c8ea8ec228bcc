"""The protocol core: bytes and headers in, typed messages out (sans-IO, no mitmproxy).

Modules: ``xml`` (the one safe parser), ``headers`` (If, Range rows, Content-Range, ResourceTag),
``model`` (the typed results), ``exchange`` (Exchange WebDAV replication).
"""

from .exchange import decode_request, decode_response, status_meaning
from .model import Condition, Entry, Request, Response, Scope, normalise_path, short_token
from .xml import Undecodable

__all__ = [
    "Condition",
    "Entry",
    "Request",
    "Response",
    "Scope",
    "Undecodable",
    "decode_request",
    "decode_response",
    "normalise_path",
    "short_token",
    "status_meaning",
]
