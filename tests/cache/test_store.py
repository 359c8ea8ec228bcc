"""The cache's storage on its own (repltap.cachestore): request identities, what may be stored,
dropping a collection on an invalid token, exact-token lookups, the replica, bad database files,
credentials, and several writers at once."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from repltap import cachestore
from repltap.cachestore import Answer, CacheError, CacheStore, identity, key_of, not_storable
from tests.tracker.build import UPSTREAM, dav_write, manifest, sync, write

INBOX = "/exchange/alice/Inbox/"
CAL = "/alice/cal/"


def ident(s: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return identity(s, scheme="http", **kw)


def answer_of(s: dict[str, Any], *, flow: str = "f1", stored: float = 1000.0) -> Answer:
    i = ident(s)
    return Answer(
        key=key_of(i),
        identity=i,
        upstream=UPSTREAM,
        collection=s["collection"],
        protocol=s["protocol"],
        token=s["request"].get("token"),
        received=s["response"].get("token"),
        status=s["response"]["status"],
        reason="Multi-Status",
        headers=[["Content-Type", "text/xml"]],
        body=b"<multistatus/>",
        entries=len(s["response"].get("entries") or []),
        stored=stored,
        flow=flow,
    )


@pytest.fixture
def store(tmp_path: Path) -> CacheStore:
    st = CacheStore(tmp_path / "c.db")
    yield st
    st.close()


def ok(s: dict[str, Any]) -> str | None:
    return not_storable(s, streamed=False, body=b"x", declared_length="1")


# ----------------------------------------------------------------------------- identities


def test_identity_separates_everything_that_changes_the_answer() -> None:
    base = manifest(INBOX, "T1", "T2")
    k = key_of(ident(base))
    assert key_of(ident(manifest(INBOX, "T1", "T9"))) == k  # the answer is not the identity
    others = [
        ident(manifest(INBOX, "T2", "T3")),  # token
        ident(manifest(INBOX, None, "T3")),  # initial sync
        ident(manifest(INBOX, "T1", "T2", rng="rows=0-9")),  # range
        ident(manifest(INBOX, "T1", "T2", ack=("rt:1",))),  # acknowledged tags
        ident(manifest("/exchange/alice/Sent/", "T1", "T2")),  # collection
        ident(base, auth="someone"),  # who asks
        ident(base, brief="t"),
        ident(base, query_string="x=1"),
        {**ident(base), "upstream": "other.example.com:80"},
        identity(base, scheme="https"),
    ]
    keys = [key_of(o) for o in others]
    assert k not in keys and len(set(keys)) == len(keys)
    rfc = [
        key_of(ident(sync(CAL, "t1", "t2"))),
        key_of(ident(sync(CAL, "t1", "t2", limit=10))),
        key_of(ident(sync(CAL, "t2", "t3"))),
    ]
    assert len(set(rfc)) == 3
    assert ident(sync(CAL, "t1", "t2"))["protocol"] == "rfc6578"


def test_empty_collblob_spellings_are_one_initial_sync() -> None:
    # <R:collblob/> and a whitespace collblob both mean "initial": the server answers the same.
    a = manifest(INBOX, None, "T1")
    b = manifest(INBOX, "   ", "T1")
    assert a["request"]["token"] is None and b["request"]["token"] is None
    assert key_of(ident(a)) == key_of(ident(b))


# ----------------------------------------------------------------------------- never stored


def test_only_complete_2xx_manifests_are_storable() -> None:
    assert ok(manifest(INBOX, "T1", "T2", [("new", INBOX + "a", "rt:1", "rid:1")])) is None
    assert ok(manifest(INBOX, "T1", None)) is None  # the empty <R:repl/>: no changes
    paged = manifest(INBOX, None, "T1", rng="rows=0-1", content_range="rows 0-1; total=5")
    assert ok(paged) is None  # a page is a complete answer to its own Range
    assert "status 475" in (ok(manifest(INBOX, "T1", None, status=475)) or "")
    assert "status 404" in (ok(manifest(INBOX, "T1", None, status=404)) or "")
    assert "status 503" in (ok(manifest(INBOX, "T1", None, status=503)) or "")
    assert "status 416" in (ok(manifest(INBOX, "T1", None, status=416)) or "")
    assert "status 403" in (ok(sync(CAL, "bad", None, error_status=403)) or "")
    assert "truncated" in (ok(sync(CAL, "t1", "t2", [(CAL + "a", '"1"')], truncated=True)) or "")
    good = manifest(INBOX, "T1", "T2")
    assert "streamed" in (not_storable(good, streamed=True, body=b"x", declared_length=None) or "")
    assert "streamed" in (not_storable(good, streamed=False, body=None, declared_length=None) or "")
    short = not_storable(good, streamed=False, body=b"12345", declared_length="9")
    assert short == "the body is 5 bytes but Content-Length says '9'"


def test_a_cut_off_body_is_not_storable() -> None:
    from repltap.protocol import exchange
    from repltap.summary import summarise
    from tests.tracker.build import manifest_request, manifest_response

    h, body = manifest_request(INBOX, "T1")
    req = exchange.decode_request("SEARCH", INBOX, h, body)
    full = manifest_response("T2", [("new", INBOX + "a", "rt:1", "rid:1")])
    cut = full[:-40]
    resp = exchange.decode_response(req, 207, {"Content-Length": str(len(full))}, cut)
    s = summarise(req, resp, upstream=UPSTREAM)
    why = not_storable(s, streamed=False, body=cut, declared_length=str(len(full)))
    assert why is not None and "Content-Length" in why
    assert "decoded" in (not_storable(s, streamed=False, body=cut, declared_length=None) or "")


# ----------------------------------------------------------------------------- lookups and drops


def test_served_only_for_the_exact_token(store: CacheStore) -> None:
    s = manifest(INBOX, "T1", "T2")
    a = answer_of(s)
    store.record_manifest(s, a, now=1000.0, flow="f1")
    hit = store.lookup(a.key, UPSTREAM, INBOX, "T1")
    assert hit.answer is not None and hit.answer.body == b"<multistatus/>"
    assert hit.answer.received == "T2" and hit.answer.token == "T1"
    for other in ("T0", "T2", "t1", "T1x"):
        k = key_of(ident(manifest(INBOX, other, None)))
        found = store.lookup(k, UPSTREAM, INBOX, other.strip() or None)
        assert found.answer is None
    # Same token, other range: not served, but the token was seen.
    ranged = key_of(ident(manifest(INBOX, "T1", None, rng="rows=0-9")))
    found = store.lookup(ranged, UPSTREAM, INBOX, "T1")
    assert found.answer is None and found.token_seen


def test_a_newer_answer_replaces_the_older_one(store: CacheStore) -> None:
    s1 = manifest(INBOX, "T1", None)
    s2 = manifest(INBOX, "T1", "T2", [("delete", None, None, "rid:1")])
    store.record_manifest(s1, answer_of(s1, flow="a"), now=1.0)
    store.record_manifest(s2, answer_of(s2, flow="b"), now=2.0)
    got = store.lookup(answer_of(s2).key, UPSTREAM, INBOX, "T1").answer
    assert got is not None and got.flow == "b" and got.received == "T2"
    assert len(store.answer_keys()) == 1


@pytest.mark.parametrize(
    ("bad", "path"),
    [
        (manifest(INBOX, "T7", None, status=475), INBOX),
        (sync(CAL, "t7", None, error_status=403), CAL),  # Radicale's valid-sync-token
        (sync(CAL, "t7", None, error_status=412), CAL),  # Xandikos's
    ],
)
def test_an_invalid_token_drops_that_collections_answers(
    store: CacheStore, bad: dict[str, Any], path: str
) -> None:
    rfc = path == CAL
    mine = [sync(CAL, t, t + "x") if rfc else manifest(INBOX, t, t + "x") for t in ("t1", "t2")]
    other_coll = sync("/alice/other/", "t1", "t2") if rfc else manifest("/exchange/b/", "t1", "t2")
    for s in [*mine, other_coll]:
        store.record_manifest(s, answer_of(s))
    other_host = {**answer_of(mine[0]).__dict__, "key": "k-other", "upstream": "other:80"}
    store.record_manifest(mine[0] | {"upstream": "other:80"}, Answer(**other_host))
    assert len(store.answer_keys()) == 4
    dropped = store.record_manifest(bad, None)
    assert dropped == 2
    assert store.answer_keys() == {answer_of(other_coll).key, "k-other"}


# ----------------------------------------------------------------------------- the replica


def items(store: CacheStore, path: str = INBOX) -> dict[str, tuple[str | None, str | None]]:
    return {i["key"]: (i["href"], i["tag"]) for i in store.replica(UPSTREAM, path)}


def test_replica_follows_exchange_manifests_and_writes(store: CacheStore) -> None:
    a, b, c = INBOX + "a.EML", INBOX + "b.EML", INBOX + "c.EML"
    first = manifest(
        INBOX,
        None,
        "T1",
        [("new", a, "rt:a1", "rid:a"), ("new", b, "rt:b1", "rid:b"), ("new", c, "rt:c1", "rid:c")],
    )
    store.record_manifest(first, None, flow="f1")
    assert items(store) == {"rid:a": (a, "rt:a1"), "rid:b": (b, "rt:b1"), "rid:c": (c, "rt:c1")}
    later = manifest(
        INBOX, "T1", "T2", [("change", a, "rt:a2", "rid:a"), ("delete", None, None, "rid:b")]
    )
    store.record_manifest(later, None)
    assert items(store) == {"rid:a": (a, "rt:a2"), "rid:c": (c, "rt:c1")}
    # Writes through the proxy: their answers carry the new tag (and the uid of a new item).
    assert store.record_write(write("PUT", c, 204, if_="(<rt:c1>)", tag="rt:c2", uid="rid:c"))
    assert store.record_write(write("PUT", INBOX + "d.EML", 201, tag="rt:d1", uid="rid:d"))
    assert store.record_write(write("DELETE", a, 204, if_="(<rt:a2>)", tag="rt:tomb"))
    assert store.record_write(
        write("MOVE", c, 201, if_="(<rt:c2>)", destination="http://h" + INBOX + "e.EML")
    )
    assert not store.record_write(write("PUT", INBOX + "x.EML", 412, if_="(<rt:old>)"))
    assert items(store) == {
        "rid:c": (INBOX + "e.EML", "rt:c2"),
        "rid:d": (INBOX + "d.EML", "rt:d1"),
    }
    # A write to a collection nobody synchronised teaches nothing.
    assert not store.record_write(write("PUT", "/elsewhere/x.EML", 201, tag="rt:x", uid="rid:x"))
    [coll] = store.collections()
    assert coll["token"] == "T2" and coll["items"] == 2 and coll["changed"]


def test_a_complete_initial_listing_replaces_the_replica(store: CacheStore) -> None:
    a, b = INBOX + "a.EML", INBOX + "b.EML"
    store.record_manifest(
        manifest(INBOX, None, "T1", [("new", a, "rt:a", "rid:a"), ("new", b, "rt:b", "rid:b")]),
        None,
    )
    # A page of a paged initial sync lists only some members: nothing is removed.
    page = manifest(
        INBOX,
        None,
        "T2",
        [("new", a, "rt:a", "rid:a")],
        rng="rows=0-0",
        content_range="rows 0-0; total=2",
    )
    store.record_manifest(page, None)
    assert set(items(store)) == {"rid:a", "rid:b"}
    # After a 475 the client starts over, and the full listing says b is gone.
    full = manifest(
        INBOX,
        None,
        "T3",
        [("new", a, "rt:a", "rid:a")],
        rng="rows=0-99",
        content_range="rows 0-0; total=1",
    )
    store.record_manifest(full, None)
    assert set(items(store)) == {"rid:a"}


@pytest.mark.parametrize("change_first", [False, True])
@pytest.mark.parametrize("delete_href", [False, True])
def test_replica_follows_a_rename_in_either_order(
    store: CacheStore, change_first: bool, delete_href: bool
) -> None:
    """Spec §8.6: a rename is a delete of the repl-uid and a change of it at its new href."""
    a, b = INBOX + "a.EML", INBOX + "b.EML"
    store.record_manifest(manifest(INBOX, None, "T1", [("new", a, "rt:1", "rid:x")]), None)
    delete = ("delete", a if delete_href else None, None, "rid:x")
    change = ("change", b, "rt:1", "rid:x")
    entries = [change, delete] if change_first else [delete, change]
    store.record_manifest(manifest(INBOX, "T1", "T2", entries), None)
    assert items(store) == {"rid:x": (b, "rt:1")}
    # the same manifest again (another client of the collection, a retry): nothing moves
    store.record_manifest(manifest(INBOX, "T1", "T2", entries), None)
    assert items(store) == {"rid:x": (b, "rt:1")}
    # a delete naming another item's href removes neither
    store.record_manifest(manifest(INBOX, "T2", "T3", [("new", a, "rt:9", "rid:z")]), None)
    store.record_manifest(manifest(INBOX, "T3", "T4", [("delete", a, None, "rid:x")]), None)
    assert items(store) == {"rid:x": (b, "rt:1"), "rid:z": (a, "rt:9")}
    # and one without an href, of an item the manifest does not list, deletes it
    store.record_manifest(manifest(INBOX, "T4", "T5", [("delete", None, None, "rid:x")]), None)
    assert items(store) == {"rid:z": (a, "rt:9")}


def test_replica_follows_rfc6578_by_href(store: CacheStore) -> None:
    x, y = CAL + "x.ics", CAL + "y.ics"
    store.record_manifest(sync(CAL, None, "t1", [(x, '"x1"'), (y, '"y1"')]), None)
    store.record_manifest(sync(CAL, "t1", "t2", [(x, '"x2"'), (y, None)]), None)
    assert items(store, CAL) == {x: (x, '"x2"')}
    assert store.record_write(dav_write("PUT", CAL + "z.ics", 201, etag='"z1"'))
    assert store.record_write(dav_write("PUT", x, 204, if_match='"x2"', etag='"x3"'))
    assert store.record_write(dav_write("DELETE", x, 204, if_match='"x3"'))
    assert items(store, CAL) == {CAL + "z.ics": (CAL + "z.ics", '"z1"')}
    # A truncated answer is never stored, but its members are real: the replica learns them.
    store.record_manifest(sync(CAL, "t2", "t3", [(x, '"x9"')], truncated=True), None)
    assert items(store, CAL)[x] == (x, '"x9"')
    exported = store.export(UPSTREAM, CAL)
    assert exported["protocol"] == "rfc6578" and len(exported["items"]) == 2


def test_clear_forgets_everything(store: CacheStore) -> None:
    s = manifest(INBOX, None, "T1", [("new", INBOX + "a", "rt:a", "rid:a")])
    store.record_manifest(s, answer_of(s))
    assert store.clear() == (1, 1, 1)
    assert store.collections() == [] and store.answer_keys() == set()


# ----------------------------------------------------------------------------- the file


def test_unusable_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="does not exist"):
        CacheStore(tmp_path / "nowhere" / "c.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all, not even close" * 100)
    with pytest.raises(CacheError, match="not a usable SQLite database"):
        CacheStore(junk)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE mail (id INTEGER)")
    with pytest.raises(CacheError, match="of something else"):
        CacheStore(other)
    newer = tmp_path / "newer.db"
    CacheStore(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE meta SET value = '99' WHERE name = 'schema'")
    with pytest.raises(CacheError, match="schema 99"):
        CacheStore(newer)


def test_wal_and_reopen_keeps_everything(tmp_path: Path) -> None:
    st = CacheStore(tmp_path / "c.db")
    assert st.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s = manifest(INBOX, "T1", "T2")
    st.record_manifest(s, answer_of(s))
    salt = st.salt
    st.close()
    again = CacheStore(tmp_path / "c.db")
    assert again.salt == salt and again.answer_keys() == {answer_of(s).key}
    assert again.integrity() == "ok"
    again.close()


def test_credentials_are_only_hashed(tmp_path: Path) -> None:
    st = CacheStore(tmp_path / "c.db")
    secret = "Basic YWxpY2U6c2VjcmV0"  # alice:secret
    h = st.auth_hash([secret])
    assert h and secret not in h and st.auth_hash([]) is None
    assert st.auth_hash(["Basic Ym9iOng="]) != h
    s = manifest(INBOX, "T1", "T2")
    a = answer_of(s)
    i = {**a.identity, "auth": h}
    st.record_manifest(s, Answer(**{**a.__dict__, "identity": i, "key": key_of(i)}))
    st.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("c.db"))
    assert secret.encode() not in raw and b"YWxpY2U6c2VjcmV0" not in raw
    assert b"set-cookie" not in b"".join(
        n.lower().encode() for n, _ in cachestore.storable_headers([(b"Set-Cookie", b"s=1")])
    )


# ----------------------------------------------------------------------------- concurrency


def test_several_writers_at_once(tmp_path: Path) -> None:
    """Four threads, each with its own connection (as two proxies sharing a file would have),
    store 100 answers each and update one shared replica: nothing lost, no lock errors."""
    path = tmp_path / "c.db"
    CacheStore(path).close()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            st = CacheStore(path)
            for i in range(100):
                entry = ("change", INBOX + f"{n}.EML", f"rt:{i}", f"rid:{n}")
                s = manifest(INBOX, f"T{n}-{i}", f"T{n}-{i + 1}", [entry])
                st.record_manifest(s, answer_of(s, flow=f"{n}-{i}"))
            st.close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    st = CacheStore(path)
    assert len(st.answer_keys()) == 400 and st.integrity() == "ok"
    assert items(st) == {f"rid:{n}": (INBOX + f"{n}.EML", "rt:99") for n in range(4)}
    st.close()
