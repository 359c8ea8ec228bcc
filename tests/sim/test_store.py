"""The server's world without HTTP: change folding, paging watermarks, acknowledgements,
tombstones, moves, incarnations and persistence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from repltap.sim import collblob
from repltap.sim.store import DavError, RangeNotSatisfiable, Resource, Store, norm_path

C = "/c/"


def items(*names: str) -> list[dict[str, Any]]:
    return [{"path": C}, {"path": "/other/"}] + [
        {"path": C + n, "content": f"Subject: {n}\r\n\r\nbody of {n}\r\n"} for n in names
    ]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s, _ = Store.open(tmp_path / "d", items("a.EML", "b.EML", "c.EML"), fsync=False)
    yield s
    s.close()


def m(store: Store, since: collblob.State | None = None, **kw: Any) -> Any:
    kw.setdefault("scope", C)
    kw.setdefault("depth", "shallow")
    return store.manifest(sql="q", where=lambda r: not r.collection, since=since, **kw)


def rows(result: Any) -> list[tuple[str, str]]:
    return [
        (r.change, r.uid if r.change == "delete" else r.resource.path.rsplit("/", 1)[1])
        for r in result.rows
    ]


def test_initial_manifest_is_everything_new_in_order(store: Store) -> None:
    res = m(store)
    assert rows(res) == [("new", "a.EML"), ("new", "b.EML"), ("new", "c.EML")]
    assert res.state is not None and res.state.watermark == store.seq and not res.partial
    assert res.state.incarnation == store.require(C).incarnation


def test_no_changes_is_the_empty_repl_but_initial_always_gets_a_collblob(tmp_path: Path) -> None:
    s, _ = Store.open(tmp_path / "e", [{"path": C}], fsync=False)
    first = m(s)
    assert first.rows == [] and first.state is not None  # an empty collection: still a collblob
    s.create_item("/elsewhere.txt", b"x", "text/plain")  # outside the scope
    again = m(s, first.state)
    assert again.state is None and again.rows == []  # -> <R:repl/>
    s.close()


def test_changes_are_folded_per_uid_and_typed(store: Store) -> None:
    st = m(store).state
    store.update(C + "a.EML", content=b"Subject: a2\r\n\r\n")
    store.update(C + "a.EML", content=b"Subject: a3\r\n\r\n")
    store.create_item(C + "d.EML", b"Subject: d\r\n\r\n", "message/rfc822")
    store.create_item(C + "e.EML", b"x", "message/rfc822")
    store.delete(C + "e.EML")  # created and deleted since the collblob: never reported
    store.delete(C + "b.EML")
    res = m(store, st)
    b_uid = next(t.uid for t in store.tombstones if t.path == C + "b.EML")
    assert rows(res) == [("change", "a.EML"), ("new", "d.EML"), ("delete", b_uid)]
    assert res.rows[0].resource is not None
    assert res.rows[0].resource.props["{urn:schemas:httpmail:}subject"] == "a3"  # promoted


def test_moves_keep_uid_and_tag_and_leave_a_delete_behind(store: Store) -> None:
    st = m(store).state
    other_st = m(store, scope="/other/").state
    a = store.require(C + "a.EML")
    uid, tag = a.uid, a.tag
    store.move(C + "a.EML", C + "renamed.EML")  # rename inside the scope: one change
    store.move(C + "b.EML", "/other/b.EML")  # move out: delete here, change there
    res = m(store, st)
    b_uid = store.require("/other/b.EML").uid
    assert rows(res) == [("change", "renamed.EML"), ("delete", b_uid)]
    moved = store.require(C + "renamed.EML")
    assert (moved.uid, moved.tag) == (uid, tag)
    there = m(store, other_st, scope="/other/")
    assert rows(there) == [("change", "b.EML")]


def test_overwriting_move_and_overwrite_false(store: Store) -> None:
    with pytest.raises(DavError) as e:
        store.move(C + "a.EML", C + "b.EML", overwrite=False)
    assert e.value.status == 412
    b_uid = store.require(C + "b.EML").uid
    st = m(store).state
    _, existed = store.move(C + "a.EML", C + "b.EML")
    assert existed
    res = m(store, st)
    assert ("delete", b_uid) in rows(res) and ("change", "b.EML") in rows(res)


def test_paging_watermark_covers_exactly_the_rows_returned(store: Store) -> None:
    page = m(store, first=0, last=1)
    assert rows(page) == [("new", "a.EML"), ("new", "b.EML")]
    assert (page.total, page.first, page.last, page.partial) == (3, 0, 1, True)
    # A change between pages: the next page has the rest plus it, in sequence order.
    store.update(C + "a.EML", content=b"Subject: again\r\n\r\n")
    nxt = m(store, page.state, first=0, last=1)
    assert rows(nxt) == [("new", "c.EML"), ("change", "a.EML")]
    assert nxt.total == 2 and not nxt.partial
    assert m(store, nxt.state).state is None


def test_range_not_starting_at_zero_and_suffix_ranges(store: Store) -> None:
    second = m(store, first=1, last=1)  # §13.11's other reading: rows 1-1 of the same collblob
    assert rows(second) == [("new", "b.EML")]
    assert rows(m(store, second.state)) == [("new", "c.EML")]  # it covered rows 0-1
    with pytest.raises(RangeNotSatisfiable) as e:
        m(store, first=3, last=9)
    assert (e.value.status, e.value.total) == (416, 3)
    ff = m(store, first=None, last=0)  # rows=-0: no rows, a collblob covering everything
    assert ff.rows == [] and ff.state is not None and ff.state.watermark == store.seq
    assert m(store, ff.state).state is None
    last2 = m(store, first=None, last=2)
    assert rows(last2) == [("new", "b.EML"), ("new", "c.EML")]


def test_page_cap(store: Store) -> None:
    capped = m(store, cap=2)
    assert len(capped.rows) == 2 and capped.partial and capped.total == 3
    assert rows(m(store, capped.state, cap=2)) == [("new", "c.EML")]


def test_acknowledged_tags_fold_only_the_current_state(store: Store) -> None:
    st = m(store).state
    a = store.update(C + "a.EML", content=b"Subject: mine\r\n\r\n")
    b = store.update(C + "b.EML", content=b"Subject: mine too\r\n\r\n")
    acked_b = b.tag
    store.update(C + "b.EML", content=b"Subject: someone else\r\n\r\n")  # changed again
    res = m(store, st, acks=[a.tag, acked_b])
    assert rows(res) == [("change", "b.EML")]
    # Everything acknowledged: a new collblob with no rows (not the empty <R:repl/>).
    st2 = res.state
    c = store.update(C + "c.EML", content=b"Subject: c2\r\n\r\n")
    only_acked = m(store, st2, acks=[c.tag])
    assert only_acked.rows == [] and only_acked.state is not None
    assert m(store, only_acked.state).state is None


def test_acknowledgements_past_a_page_are_carried_in_the_collblob(store: Store) -> None:
    st = m(store).state
    store.update(C + "a.EML", content=b"1")
    store.update(C + "b.EML", content=b"2")
    c = store.update(C + "c.EML", content=b"3")
    page = m(store, st, acks=[c.tag], first=0, last=0)
    assert rows(page) == [("change", "a.EML")]
    assert page.state is not None and page.state.acked == (c.seq,)
    rest = m(store, page.state, first=0, last=0)  # the client does not repeat its list
    assert rows(rest) == [("change", "b.EML")]
    assert rest.state is not None and rest.state.watermark == store.seq  # c was consumed
    assert m(store, rest.state).state is None


def test_leaving_the_where_filter_is_a_delete(store: Store) -> None:
    st = m(store).state
    store.update(C + "a.EML", set_props={"{DAV:}ishidden": "1"})
    hidden = store.manifest(
        scope=C,
        depth="shallow",
        sql="q",
        since=st,
        where=lambda r: not r.collection and not store.prop(r, "{DAV:}ishidden"),
    )
    assert rows(hidden) == [("delete", store.require(C + "a.EML").uid)]


def test_deep_and_hierarchical_scopes(tmp_path: Path) -> None:
    s, _ = Store.open(
        tmp_path / "h",
        [{"path": "/r/a.txt", "content": "a"}, {"path": "/r/sub/b.txt", "content": "b"}],
        fsync=False,
    )
    every = s.manifest(scope="/r/", depth="deep", sql="q", where=lambda r: True, since=None)
    assert [r.resource.path for r in every.rows if r.resource] == [
        "/r/a.txt",
        "/r/sub/",
        "/r/sub/b.txt",
    ]
    folders = s.manifest(
        scope="/r/", depth="hierarchical", sql="q", where=lambda r: True, since=None
    )
    assert [r.resource.path for r in folders.rows if r.resource] == ["/r/sub/"]
    st = every.state
    s.delete("/r/sub/")  # children before their folder
    gone = s.manifest(scope="/r/", depth="deep", sql="q", where=lambda r: True, since=st)
    assert [r.change for r in gone.rows] == ["delete", "delete"]
    assert gone.rows[0].seq < gone.rows[1].seq
    s.close()


def test_recreate_is_a_new_incarnation_with_the_same_items(store: Store) -> None:
    before = {r.path: (r.uid, r.tag) for r in store.children(C)}
    inc = store.require(C).incarnation
    new = store.recreate(C, keep=["a.EML", "b.EML"])
    assert new.incarnation != inc
    after = {r.path: (r.uid, r.tag) for r in store.children(C)}
    assert after == {p: v for p, v in before.items() if not p.endswith("c.EML")}
    with pytest.raises(DavError, match="no such item"):
        store.recreate(C, keep=["zzz"])


def test_copy_makes_new_resources(store: Store) -> None:
    src = store.require(C + "a.EML")
    copy, existed = store.copy(C + "a.EML", "/other/a.EML")
    assert not existed and copy.uid != src.uid and copy.tag != src.tag
    assert copy.content == src.content
    with pytest.raises(DavError) as e:
        store.copy(C, C + "inner/")
    assert e.value.status == 403


def test_persistence_is_atomic_and_exclusive(tmp_path: Path) -> None:
    d = tmp_path / "p"
    s, seeded = Store.open(d, items("a.EML", "b.bin"), fsync=True)
    assert seeded
    s.update(C + "b.bin", content=bytes(range(256)))  # not UTF-8: stored as base64
    with pytest.raises(DavError) as e:
        Store.open(d, None)
    assert e.value.status == 503 and "already using" in e.value.reason
    snapshot = {r.path: (r.uid, r.tag, r.content, r.incarnation) for r in s.iter_all()}
    seq, key = s.seq, s.key
    s.close()
    assert sorted(p.name for p in d.iterdir()) == [".lock", "secret.key", "state.json"]
    doc = json.loads((d / "state.json").read_text())
    assert any("text" in r["content"] for r in doc["resources"])  # readable where possible
    again, seeded = Store.open(d, items("ignored.EML"))
    assert not seeded and again.seq == seq and again.key == key
    assert {r.path: (r.uid, r.tag, r.content, r.incarnation) for r in again.iter_all()} == snapshot
    again.close()


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    d = tmp_path / "x"
    d.mkdir()
    (d / "state.json").write_text("{not json")
    with pytest.raises(DavError, match="cannot read"):
        Store.open(d, None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a/b%20c.EML", "/a/b c.EML"),
        ("/a//b/", "/a/b/"),
        ("/a/b?x=1", "/a/b"),
        ("/", "/"),
    ],
)
def test_norm_path(raw: str, expected: str) -> None:
    assert norm_path(raw) == expected


@pytest.mark.parametrize("raw", ["a/b", "/a/../b", "/a/./b", "/a%00b", "/a%2Fb", "/a%2fb"])
def test_norm_path_refuses(raw: str) -> None:
    with pytest.raises(DavError) as e:
        norm_path(raw)
    assert e.value.status == 400


def test_live_properties(store: Store) -> None:
    a: Resource = store.require(C + "a.EML")
    assert store.prop(a, "{DAV:}isfolder") is False
    assert store.prop(a, "{DAV:}getcontentlength") == len(a.content)
    assert store.prop(a, "{DAV:}contentclass") == "urn:content-classes:message"
    assert store.prop(a, "{http://schemas.microsoft.com/repl/}repl-uid") == a.uid
    c = store.require(C)
    assert store.prop(c, "{DAV:}childcount") == 3
    ctag = store.prop(c, "{http://schemas.microsoft.com/repl/}contenttag")
    store.update(C + "a.EML", content=b"new")
    assert store.prop(c, "{http://schemas.microsoft.com/repl/}contenttag") != ctag
