"""repltap: WebDAV replication made visible. Load the whole suite with

    mitmdump -s addons/repl.py --mode reverse:http://server

Every import happens here, at load time: mitmproxy puts this file's folder on sys.path only
while it imports the script, so a later lazy import of the sibling package would fail.
"""

from mitmproxy import contentviews

from repltap.mitm.contentview import WebDAVReplicationContentview
from repltap.mitm.decode import Decode

contentviews.add(WebDAVReplicationContentview)

addons = [Decode()]
