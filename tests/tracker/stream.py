"""A long, soak-like stream of flow summaries for the tracker's retention tests and measurements.

Each round is what a busy proxy sees in a few seconds: one of three Exchange clients syncs the
Inbox (items created, changed, deleted, moved on the server meanwhile), a client writes with a
condition (some stale: 412), a CalDAV client syncs a calendar with Depth: 1 (an anomaly every
time) and edits and deletes an event; now and then the Inbox is re-created (475, then a resync)
and a naive client sends a rejected token again. Every token, tag and item name is new, so a
tracker that keeps everything grows with every round; what it must keep does not. Summaries go
through the real decoder (build.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .build import dav_write, manifest, sync, write

INBOX = "/exchange/alice/Inbox/"
CAL = "/alice/cal/"
CLIENTS = ("10.0.0.1 repltap-sync/1", "10.0.0.2 repltap-sync/1", "10.0.0.3 repltap-sync/1")
CALDAV = "10.0.0.9 python-caldav/3.6"
LIVE = 12  # items kept in the Inbox and the calendar


def rounds(n: int) -> Iterator[tuple[dict[str, Any], str]]:
    """(summary, client) pairs for ``n`` rounds."""
    held: dict[str, str | None] = dict.fromkeys(CLIENTS)
    inbox: dict[int, tuple[str, int]] = {}  # item -> (name, version)
    cal: dict[int, int] = {}  # event -> version
    cal_token: str | None = None
    removed: list[str] = []  # deleted by the client: its next sync lists them as removed

    def tag(i: int, v: int) -> str:
        return f"rt:{i:08x}{v:08x}"

    for r in range(n):
        # the server changes the Inbox: one new item, one changed, one deleted or moved
        entries: list[tuple[str, str | None, str | None, str | None]] = []
        made = r + 1
        inbox[made] = (f"m{made}.EML", 0)
        entries.append(("new", INBOX + f"m{made}.EML", tag(made, 0), f"rid:{made}"))
        i = min(inbox)
        name, v = inbox[i]
        inbox[i] = (name, v + 1)
        entries.append(("change", INBOX + name, tag(i, v + 1), f"rid:{i}"))
        if len(inbox) > LIVE:
            gone = sorted(inbox)[1]
            del inbox[gone]
            entries.append(("delete", None, None, f"rid:{gone}"))
        if r % 3 == 0 and len(inbox) > 2:
            # a rename: a delete, and the same repl-uid at a new href (spec §8.6)
            k = sorted(inbox)[2]
            name, v = inbox[k]
            inbox[k] = (f"moved-{r}-{name}", v)
            entries.append(("delete", None, None, f"rid:{k}"))
            entries.append(("change", INBOX + f"moved-{r}-{name}", tag(k, v), f"rid:{k}"))
        client = CLIENTS[r % len(CLIENTS)]
        sent = held[client]
        got = f"T{r}"
        if r % 97 == 96 and sent is not None:  # the Inbox was re-created: the token is refused
            yield manifest(INBOX, sent, None, status=475), client
            yield manifest(INBOX, sent, None, status=475), client  # a naive client insists
            held[client] = None
            sent = None
            # the resync lists everything there is
            entries = [
                ("new", INBOX + nm, tag(k, ver), f"rid:{k}") for k, (nm, ver) in inbox.items()
            ]
        yield manifest(INBOX, sent, got, entries), client
        held[client] = got

        # a client writes the changed item; every fourth write is stale (412)
        name, v = inbox[i]
        if r % 4 == 3:
            yield write("PUT", INBOX + name, 412, if_=f"(<{tag(i, v - 1)}>)"), client
        else:
            yield write("PUT", INBOX + name, 204, if_=f"(<{tag(i, v)}>)", tag=tag(i, v + 1)), client
            inbox[i] = (name, v + 1)

        # CalDAV: sync with Depth: 1, edit one event with If-Match, delete one without
        members: list[tuple[str, str | None]] = [(href, None) for href in removed]
        removed.clear()
        e = r + 1
        cal[e] = 0
        members.append((CAL + f"e{e}.ics", f'"{e}-0"'))
        if len(cal) > LIVE:
            old = min(cal)
            del cal[old]
            members.append((CAL + f"e{old}.ics", None))
        got_cal = f"S{r}"
        yield sync(CAL, cal_token, got_cal, members, depth="1"), CALDAV
        cal_token = got_cal
        k = max(cal)
        ver = cal[k]
        yield (
            dav_write(
                "PUT", CAL + f"e{k}.ics", 204, if_match=f'"{k}-{ver}"', etag=f'"{k}-{ver + 1}"'
            ),
            CALDAV,
        )
        cal[k] = ver + 1
        if len(cal) > LIVE - 2:
            victim = min(cal)
            del cal[victim]
            yield dav_write("DELETE", CAL + f"e{victim}.ics", 204), CALDAV
            removed.append(CAL + f"e{victim}.ics")  # the next sync reports it removed
