"""repltap: WebDAV replication made visible. Load the whole suite with

    mitmdump -s addons/repl.py --mode reverse:http://server

Every import happens here, at load time: mitmproxy puts this file's folder on sys.path only
while it imports the script, so a later lazy import of the sibling package would fail.
Order matters: each flow is decoded before it is tracked, and tracked before it is logged.
The parts are one entry in mitmproxy's chain (see repltap/mitm/suite.py for why).
"""

from mitmproxy import contentviews

from repltap.mitm.cache import Cache
from repltap.mitm.contentview import WebDAVReplicationContentview
from repltap.mitm.decode import Decode
from repltap.mitm.faults import Faults
from repltap.mitm.log import Log
from repltap.mitm.record import Record
from repltap.mitm.replay import Replay
from repltap.mitm.suite import Suite
from repltap.mitm.track import Track

contentviews.add(WebDAVReplicationContentview)

log = Log()
cache = Cache()  # after Decode (looks up decoded requests), before Track (sees what is sent)
faults = Faults()  # after Cache (which stores the server's own answers), before Track
replay = Replay()  # right after Decode: answers in the request hook, before cache and faults
record = Record()  # last: writes the final flows, with every other addon's marks
addons = [Suite(Decode(), replay, cache, faults, Track(sinks=[log]), log, record)]
