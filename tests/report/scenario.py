"""A small, realistic replication session as mitmproxy flows, for the report's tests.

Three clients share alice's mailbox on one Exchange-style upstream: two of them sync the Inbox and
collide on one message, one restores an old collblob, the Calendar is re-created under its URL
(475, then a full resync) and the Contacts are listed from scratch twice. The flows carry real
request and response bodies, so the events come from the real decoder and tracker.

``python -m tests.report.scenario`` rewrites ``tests/report/data/session.mitm`` and
``session.jsonl`` (the committed recording and event log the HTML and Chromium tests read, and
the README's screenshot shows) from these flows.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

from mitmproxy import http
from mitmproxy.test import tflow

HOST, PORT = "mail.example.com", 80
START = 1772442000.0  # 2026-03-02 09:00:00 UTC
REPL = "http://schemas.microsoft.com/repl/"
GUID = "5e3c9a1f07b24d4c8a61d2e0f4b79c35"
INBOX, CALENDAR, CONTACTS = (
    "/exchange/alice/Inbox/",
    "/exchange/alice/Calendar/",
    ("/exchange/alice/Contacts/"),
)
EVOLUTION = ("10.0.0.21", "Evolution/3.46.4")
DAVMAIL = ("10.0.0.35", "DavMail/6.2.2")
OWA = ("10.0.0.48", "owa-tcl/1.0")
DATA = Path(__file__).resolve().parent / "data"

Entry = tuple[str, str | None, str | None, str | None]  # changetype, name, tag, uid


def uid(n: int) -> str:
    """A repl-uid shaped like Exchange's."""
    return f"rid:{GUID}{n:012x}"


def tag(n: int, version: int) -> str:
    """A resourcetag: the item's source key, then a change key that grows with each version."""
    return f"rt:{GUID}{n:012x}{GUID}{0x3D00 + version * 0x11 + n:012x}"


def token(name: str) -> str:
    """A collblob-shaped token, different per name."""
    digest = hashlib.sha256(name.encode()).digest()
    return "toCTAAMAAAA" + base64.b64encode(digest[:30]).decode()


class Session:
    """Flows in completion order, one second (or so) apart."""

    def __init__(self) -> None:
        self.flows: list[http.HTTPFlow] = []
        self.clock = START

    def _flow(
        self,
        who: tuple[str, str],
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        status: int,
        rheaders: dict[str, str],
        rbody: bytes,
        took: float = 0.4,
    ) -> http.HTTPFlow:
        self.clock += 1.5
        req = http.Request.make(
            method,
            f"http://{HOST}:{PORT}{path}",
            body,
            {"Host": HOST, "User-Agent": who[1], "Translate": "f", **headers},
        )
        req.timestamp_start = self.clock
        req.timestamp_end = self.clock + 0.01
        resp = http.Response.make(status, rbody, {"Server": "Microsoft-IIS/6.0", **rheaders})
        resp.timestamp_start = self.clock + took - 0.05
        resp.timestamp_end = self.clock + took
        f = tflow.tflow(req=req, resp=resp)
        f.client_conn.peername = (who[0], 50000 + len(self.flows))
        f.id = str(uuid.UUID(bytes=hashlib.md5(f"flow{len(self.flows)}".encode()).digest()))
        self.flows.append(f)
        return f

    def search(
        self,
        who: tuple[str, str],
        path: str,
        sent: str | None,
        received: str | None,
        entries: list[Entry] = (),  # type: ignore[assignment]
        *,
        ack: tuple[str, ...] = (),
        status: int = 207,
    ) -> None:
        """A SEARCH manifest and its answer (``received`` None: the empty ``<R:repl/>``)."""
        blob = "<R:collblob/>" if sent is None else f"<R:collblob>{escape(sent)}</R:collblob>"
        taglist = ""
        if ack:
            taglist = (
                "<R:resourcetaglist>"
                + "".join(f"<R:resourcetag>{t}</R:resourcetag>" for t in ack)
                + "</R:resourcetaglist>"
            )
        sql = (
            'SELECT "DAV:href", "http://schemas.microsoft.com/repl/resourcetag", '
            '"http://schemas.microsoft.com/repl/repl-uid" '
            f'FROM SCOPE(\'SHALLOW TRAVERSAL OF "{path}"\') WHERE "DAV:ishidden" = false'
        )
        body = (
            f'<?xml version="1.0"?><D:searchrequest xmlns:D="DAV:" xmlns:R="{REPL}">'
            f"<R:repl>{blob}{taglist}</R:repl><D:sql>{escape(sql)}</D:sql></D:searchrequest>"
        )
        rbody = self._multistatus(path, received, entries) if status == 207 else b""
        self._flow(
            who,
            "SEARCH",
            path,
            {"Content-Type": "text/xml"},
            body.encode(),
            status,
            {"Content-Type": "text/xml"} if rbody else {},
            rbody,
        )

    def propfind(
        self,
        who: tuple[str, str],
        path: str,
        sent: str | None,
        received: str | None,
        entries: list[Entry],
    ) -> None:
        """A PROPFIND manifest (Depth 1, ``R:repl`` inside ``D:propfind``)."""
        blob = "<R:collblob/>" if sent is None else f"<R:collblob>{escape(sent)}</R:collblob>"
        body = (
            f'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:R="{REPL}"><R:repl>{blob}'
            "</R:repl><D:prop><D:displayname/><R:resourcetag/><R:repl-uid/></D:prop></D:propfind>"
        )
        self._flow(
            who,
            "PROPFIND",
            path,
            {"Content-Type": "text/xml", "Depth": "1"},
            body.encode(),
            207,
            {"Content-Type": "text/xml"},
            self._multistatus(path, received, entries),
        )

    @staticmethod
    def _multistatus(path: str, received: str | None, entries: list[Entry]) -> bytes:
        repl = (
            "<R:repl/>"
            if received is None
            else f"<R:repl><R:collblob>{escape(received)}</R:collblob></R:repl>"
        )
        parts = [f'<?xml version="1.0"?><D:multistatus xmlns:D="DAV:" xmlns:R="{REPL}">{repl}']
        for kind, name, t, u in entries:
            props = (f"<R:resourcetag>{t}</R:resourcetag>" if t else "") + (
                f"<R:repl-uid>{u}</R:repl-uid>" if u else ""
            )
            href = f"<D:href>http://{HOST}{path}{name}</D:href>" if name else ""
            parts.append(
                f"<D:response>{href}<D:propstat><D:status>HTTP/1.1 200 OK</D:status>"
                f"<D:prop>{props}</D:prop></D:propstat><R:changetype>{kind}</R:changetype>"
                "</D:response>"
            )
        parts.append("</D:multistatus>")
        return "".join(parts).encode()

    def write(
        self,
        who: tuple[str, str],
        method: str,
        path: str,
        status: int,
        *,
        if_tag: str | None = None,
        new_tag: str | None = None,
        new_uid: str | None = None,
    ) -> None:
        """A PUT (or GET, DELETE ...) with an optional ``If: (<rt:…>)`` and its answer."""
        headers = {"If": f"(<{if_tag}>)"} if if_tag else {}
        rheaders: dict[str, str] = {}
        if new_tag:
            rheaders["ResourceTag"] = f"<{new_tag}>"
        if new_uid:
            rheaders["Repl-UID"] = f"<{new_uid}>"
        body = b"Subject: hello\r\n\r\nbody\r\n" if method == "PUT" else b""
        rbody = b"Subject: hello\r\n\r\nbody\r\n" if method == "GET" and status == 200 else b""
        if body:
            headers["Content-Type"] = "message/rfc822"
        self._flow(who, method, path, headers, body, status, rheaders, rbody)


def build() -> list[http.HTTPFlow]:
    """The session's flows, in the order they completed."""
    s = Session()
    hello, report, lunch, meeting = 0x1A01, 0x1A02, 0x1B17, 0x1C30
    inbox_items: list[Entry] = [
        ("new", "Hello.EML", tag(hello, 1), uid(hello)),
        ("new", "Report.EML", tag(report, 1), uid(report)),
        ("new", "Lunch%20on%20Friday.EML", tag(lunch, 1), uid(lunch)),
    ]
    # Both mail clients list the Inbox from scratch.
    s.search(EVOLUTION, INBOX, None, token("i1"), inbox_items)
    s.search(DAVMAIL, INBOX, None, token("i2"), inbox_items)
    # Evolution edits Hello with the right tag, then acknowledges the new tag; the server
    # reports it anyway.
    s.write(
        EVOLUTION,
        "PUT",
        INBOX + "Hello.EML",
        204,
        if_tag=tag(hello, 1),
        new_tag=tag(hello, 2),
        new_uid=uid(hello),
    )
    s.search(
        EVOLUTION,
        INBOX,
        token("i1"),
        token("i3"),
        [("change", "Hello.EML", tag(hello, 2), uid(hello))],
        ack=(tag(hello, 2),),
    )
    # DavMail edits Hello too, with the tag it had: a conflict, then a blind retry.
    s.write(DAVMAIL, "PUT", INBOX + "Hello.EML", 412, if_tag=tag(hello, 1))
    s.write(DAVMAIL, "PUT", INBOX + "Hello.EML", 412, if_tag=tag(hello, 1))
    # It syncs, fetches Hello, and writes again with the current tag.
    s.search(
        DAVMAIL,
        INBOX,
        token("i2"),
        token("i4"),
        [
            ("change", "Hello.EML", tag(hello, 2), uid(hello)),
            ("new", "Meeting.EML", tag(meeting, 1), uid(meeting)),
        ],
    )
    s.write(DAVMAIL, "GET", INBOX + "Hello.EML", 200, new_tag=tag(hello, 2), new_uid=uid(hello))
    s.write(
        DAVMAIL,
        "PUT",
        INBOX + "Hello.EML",
        204,
        if_tag=tag(hello, 2),
        new_tag=tag(hello, 3),
        new_uid=uid(hello),
    )
    # The web client overwrites Report without a condition.
    s.write(OWA, "PUT", INBOX + "Report.EML", 204, new_tag=tag(report, 2), new_uid=uid(report))
    # Evolution syncs: a delete without a repl-uid comes back.
    s.search(
        EVOLUTION,
        INBOX,
        token("i3"),
        token("i5"),
        [
            ("change", "Hello.EML", tag(hello, 3), uid(hello)),
            ("change", "Report.EML", tag(report, 2), uid(report)),
            ("new", "Meeting.EML", tag(meeting, 1), uid(meeting)),
            ("delete", None, None, None),
        ],
    )
    # Evolution restarts from a backup and sends its first collblob again.
    s.search(
        EVOLUTION,
        INBOX,
        token("i1"),
        token("i6"),
        [
            ("change", "Hello.EML", tag(hello, 3), uid(hello)),
            ("change", "Report.EML", tag(report, 2), uid(report)),
            ("new", "Meeting.EML", tag(meeting, 1), uid(meeting)),
        ],
    )
    s.search(
        DAVMAIL,
        INBOX,
        token("i4"),
        token("i7"),
        [
            ("change", "Hello.EML", tag(hello, 3), uid(hello)),
            ("change", "Report.EML", tag(report, 2), uid(report)),
        ],
    )
    s.search(EVOLUTION, INBOX, token("i6"), None)
    s.search(DAVMAIL, INBOX, token("i7"), None)

    # The Calendar is deleted and re-created under its URL: 475, then a full resync.
    standup, review = 0x2001, 0x2002
    s.search(
        EVOLUTION,
        CALENDAR,
        None,
        token("c1"),
        [
            ("new", "Standup.EML", tag(standup, 1), uid(standup)),
            ("new", "Review.EML", tag(review, 1), uid(review)),
        ],
    )
    s.search(
        EVOLUTION,
        CALENDAR,
        token("c1"),
        token("c2"),
        [
            ("change", "Review.EML", tag(review, 2), uid(review)),
        ],
    )
    s.search(EVOLUTION, CALENDAR, token("c2"), None, status=475)
    s.search(
        EVOLUTION,
        CALENDAR,
        None,
        token("c3"),
        [
            ("new", "Standup.EML", tag(standup + 0x100, 1), uid(standup + 0x100)),
            ("new", "Review.EML", tag(review + 0x100, 1), uid(review + 0x100)),
        ],
    )
    s.search(EVOLUTION, CALENDAR, token("c3"), None)

    # DavMail lists the Contacts from scratch although it holds a collblob.
    bob, carol, dave = 0x1D01, 0x1D02, 0x1D03
    contacts: list[Entry] = [
        ("new", "Bob%20Smith.EML", tag(bob, 1), uid(bob)),
        ("new", "Carol%20White.EML", tag(carol, 1), uid(carol)),
        ("new", "Dave%20Jones.EML", tag(dave, 1), uid(dave)),
    ]
    s.propfind(DAVMAIL, CONTACTS, None, token("k1"), contacts)
    s.propfind(
        DAVMAIL,
        CONTACTS,
        token("k1"),
        token("k2"),
        [("change", "Carol%20White.EML", tag(carol, 2), uid(carol))],
    )
    s.propfind(
        DAVMAIL,
        CONTACTS,
        None,
        token("k3"),
        [*contacts[:1], ("new", "Carol%20White.EML", tag(carol, 2), uid(carol)), contacts[2]],
    )
    return s.flows


def events() -> list[dict[str, object]]:
    """The events the tracker gives for the session (the live run's log)."""
    from repltap.offline import events_from_flows

    return events_from_flows(build())


def write_recording(path: Path) -> None:
    """The session as a mitmproxy flow file."""
    from mitmproxy import io

    with open(path, "wb") as fo:
        w = io.FlowWriter(fo)
        for f in build():
            w.add(f)


def main() -> int:
    DATA.mkdir(exist_ok=True)
    write_recording(DATA / "session.mitm")
    out = DATA / "session.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for e in events():
            f.write(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
