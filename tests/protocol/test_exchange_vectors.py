"""The Exchange decoder against every raw vector of tests/vectors/exchange (spec §8, §9, §14.4)."""

from __future__ import annotations

import pytest

from repltap.protocol import exchange
from repltap.protocol.model import Request, Response
from repltap.summary import is_relevant, summarise
from tests.protocol.readings import reading
from tests.vectors.load import load_pair, stems

CANON = "http://schemas.microsoft.com/repl/"


def dec(stem: str) -> tuple[Request, Response]:
    rq, rs = load_pair(stem)
    req = exchange.decode_request(rq.method, rq.path, rq.headers, rq.body)
    resp = exchange.decode_response(req, rs.status, rs.headers, rs.body)
    return req, resp


@pytest.mark.parametrize("stem", stems())
def test_every_vector_decodes_and_summarises(stem: str) -> None:
    req, resp = dec(stem)
    assert req.problem is None and resp.problem is None, (req.problem, resp.problem)
    assert is_relevant(req, resp)
    s = summarise(req, resp, upstream="mail.example.com:80")
    assert s["summary"].startswith(f"{req.kind} {req.target}")


@pytest.mark.parametrize(
    ("stem", "form"),
    [
        ("01-initial-selfclosing", "empty-element"),
        ("02-initial-emptytext", "empty-element"),
        ("03-initial-whitespace", "whitespace"),
        ("04-initial-missing", "missing"),
    ],
)
def test_initial_sync_in_every_form(stem: str, form: str) -> None:
    req, resp = dec(stem)
    assert req.kind == "manifest" and req.manifest and req.initial
    assert req.token is None
    assert req.token_form == form
    assert req.scope[0].depth == "shallow"
    assert req.scope[0].url == "/exchange/alice/Inbox/"
    assert "http://schemas.microsoft.com/repl/resourcetag" in req.select
    assert resp.manifest and resp.token and resp.token.startswith("toCTAA")
    assert resp.changes == {"new": 2, "change": 0, "delete": 0}
    assert all(
        e["tag"] and e["tag"].startswith("rt:") and e["uid"] and e["uid"].startswith("rid:")
        for e in resp.entries
    )
    if form == "missing":
        assert any("no R:collblob" in n for n in req.notes)
    else:
        assert req.notes == []


def test_updated_manifest_mix() -> None:
    req, resp = dec("05-updated-mixed")
    assert (
        req.token
        == "toCTAAMAAAAAJgD0rx4AAADU0AC9TQCqbwAH3c0AAAAAAACQAIXa29GC4/YE2rZnAAtD42QABgAAFA=="
        or req.token
    )
    assert not req.initial
    assert resp.changes == {"new": 1, "change": 2, "delete": 2}
    deletes = [e for e in resp.entries if e["type"] == "delete"]
    assert [e["href"] for e in deletes] == [None, ""]  # absent, and an empty <D:href/>
    assert all(e["uid"] for e in deletes)
    implicit = [e for e in resp.entries if e.get("implicit")]
    assert len(implicit) == 1 and implicit[0]["type"] == "change"  # absent changetype = change
    inside_prop = [e for e in resp.entries if e["href"] and e["href"].endswith("Report.EML")]
    assert inside_prop[0]["type"] == "change" and not inside_prop[0].get("implicit")
    # an empty R:resourcetag in a 404 propstat does not erase anything
    assert deletes[1]["tag"] is None


def _semantics(resp: Response) -> list[tuple[str, str | None, str | None, str | None]]:
    return [(e["type"], e["href"], e["tag"], e["uid"]) for e in resp.entries]


@pytest.mark.parametrize("stem", ["24-prefix-generated", "25-prefix-default-ns"])
def test_prefix_variants_decode_alike(stem: str) -> None:
    _, base = dec("05-updated-mixed")
    _, other = dec(stem)
    assert other.token == base.token
    assert _semantics(other) == _semantics(base)
    assert other.nonstandard_ns == []


def test_taglists() -> None:
    assert dec("06-taglist-zero")[0].acknowledged == []
    assert len(dec("06-taglist-one")[0].acknowledged) == 1
    req, _ = dec("06-taglist-many")
    assert len(req.acknowledged) == 3
    assert all(t.startswith("rt:") and len(t) == 91 for t in req.acknowledged)


def test_no_changes_keeps_no_token() -> None:
    req, resp = dec("07-no-changes")
    assert resp.manifest and resp.no_changes
    assert resp.token is None and resp.entries == []
    s = summarise(req, resp)
    assert s["summary"].endswith("(no changes)")


def test_invalid_collblob_475() -> None:
    req, resp = dec("08-invalid-collblob")
    assert req.token and resp.status == 475 and resp.invalid_token
    assert "invalid collblob" in resp.meaning
    assert "rejected" in summarise(req, resp)["summary"]


def test_range_page_and_past_end() -> None:
    req, resp = dec("09-range-page")
    assert [str(r) for r in req.range or []] == ["0-99"]
    assert resp.content_range is not None
    assert (resp.content_range.first, resp.content_range.last, resp.content_range.total) == (
        0,
        99,
        350,
    )
    assert resp.accept_ranges == "rows"
    assert resp.manifest and resp.token
    req, resp = dec("10-range-past-end")
    assert resp.status == 416 and "past the end" in resp.meaning


def test_range_variants() -> None:
    req, resp = dec("34-range-list")
    assert [str(r) for r in req.range or []] == ["0-5", "10-15", "-3"]
    assert resp.content_range is not None and resp.content_range.total == 350
    req, resp = dec("35-range-open")
    assert [str(r) for r in req.range or []] == ["100-"]
    req, resp = dec("36-range-suffix")
    assert [str(r) for r in req.range or []] == ["-0"]
    assert resp.manifest and resp.token and resp.entries == []
    req, resp = dec("40-ranged-206")
    assert resp.status == 206 and resp.manifest and resp.content_range is not None


def test_put_conditional_412_and_create() -> None:
    req, resp = dec("11-put-conditional-412")
    assert req.kind == "upload" and len(req.condition.tags) == 1
    assert resp.status == 412 and "condition" in resp.meaning
    req, resp = dec("12-put-create")
    assert req.condition.empty
    assert resp.status == 201 and resp.tag and resp.tag.startswith("rt:")
    assert resp.uid and resp.uid.startswith("rid:") and resp.location


def test_get_with_odd_header_case() -> None:
    req, resp = dec("13-get-oddcase")
    assert req.kind == "download"
    assert resp.tag and resp.tag.startswith("rt:") and not resp.tag.startswith("<")


def test_propfind_with_if() -> None:
    req, resp = dec("14-propfind-if-207")
    assert req.kind == "properties" and not req.manifest and req.condition.tags
    assert resp.status == 207 and not resp.manifest
    assert resp.entries and resp.entries[0]["tag"] and resp.entries[0]["uid"]
    req, resp = dec("15-propfind-if-412")
    assert resp.status == 412


def test_move_and_its_manifests() -> None:
    req, resp = dec("16-move")
    assert req.kind == "move" and req.destination and req.overwrite == "F" and req.condition.tags
    assert resp.status == 201 and resp.tag is None
    _, src = dec("17-move-source-manifest")
    _, dst = dec("18-move-dest-manifest")
    (gone,) = [e for e in src.entries if e["type"] == "delete"]
    (came,) = dst.entries
    assert came["type"] == "change" and came["uid"] == gone["uid"] and came["href"] != gone["href"]


def test_210_content_different() -> None:
    req, resp = dec("19-copy-210")
    assert req.kind == "copy" and resp.status == 210 and "re-fetch" in resp.meaning
    req, resp = dec("20-put-210")
    assert resp.status == 210 and resp.tag and resp.uid


@pytest.mark.parametrize(("stem", "status"), [("21-mkcol-409", 409), ("22-mkcol-405", 405)])
def test_mkcol_existing(stem: str, status: int) -> None:
    req, resp = dec(stem)
    assert req.kind == "mkcol" and resp.status == status
    assert resp.meaning == "the collection already exists"


def test_mkcol_created() -> None:
    _, resp = dec("23-mkcol-201")
    assert resp.status == 201 and resp.tag and resp.uid


@pytest.mark.parametrize(
    ("stem", "ns"),
    [
        ("26-https-namespace", "https://schemas.microsoft.com/repl/"),
        ("27-noslash-namespace", "http://schemas.microsoft.com/repl"),
    ],
)
def test_noncanonical_namespaces_accepted_and_reported(stem: str, ns: str) -> None:
    req, resp = dec(stem)
    assert req.manifest and req.nonstandard_ns == [ns]
    assert any("non-canonical" in n for n in req.notes)
    assert resp.manifest and resp.token and resp.nonstandard_ns == [ns]
    assert len(resp.entries) >= 1 and all(e["uid"] for e in resp.entries)


def test_capitalised_names() -> None:
    req, resp = dec("28-capitalised")
    assert req.token and req.token.startswith("toCTAA")
    assert resp.token and resp.token.startswith("toCTAA")
    assert resp.changes == {"new": 0, "change": 1, "delete": 1}
    assert not any(e.get("implicit") for e in resp.entries)


def test_propfind_manifest() -> None:
    req, resp = dec("29-propfind-manifest")
    assert req.method == "PROPFIND" and req.manifest and req.initial and req.depth == "1"
    assert "{{{}resourcetag}}".format("") not in req.props
    assert f"{{{CANON}}}resourcetag" in req.props
    assert resp.manifest and resp.changes["new"] == 3


def test_deep_and_hierarchical_scopes() -> None:
    req, resp = dec("30-deep-traversal")
    assert [(s.depth, s.url) for s in req.scope] == [("deep", "/exchange/alice/Docs/")]
    assert len(resp.entries) >= 3
    req, resp = dec("31-hierarchical")
    assert [(s.depth, s.url) for s in req.scope] == [("hierarchical", "/exchange/alice/")]
    assert req.query is not None and req.query.startswith("FROM SCOPE(")


def test_search_without_sql() -> None:
    req, resp = dec("32-search-no-sql")
    assert req.manifest and req.token and req.query is None
    assert any("no D:sql" in n for n in req.notes)
    assert resp.manifest


def test_complex_if_header() -> None:
    req, resp = dec("33-if-tagged-not")
    c = req.condition
    assert len(c.tags) == 1 and len(c.not_uids) == 1 and len(c.etags) == 1
    assert c.uids == ()
    assert resp.status == 204 and resp.tag


def test_post_ignores_if() -> None:
    req, resp = dec("37-post-create")
    assert req.kind == "upload" and any("ignored on POST" in n for n in req.notes)
    assert resp.status == 201 and resp.tag and resp.uid and resp.location


def test_proppatch() -> None:
    req, resp = dec("38-proppatch")
    assert req.kind == "upload" and req.condition.tags
    assert resp.status == 207 and resp.tag and resp.uid


def test_delete_412_and_get_rid_412() -> None:
    req, resp = dec("39-delete-412")
    assert req.kind == "delete" and resp.status == 412
    req, resp = dec("42-get-if-rid-412")
    assert req.condition.uids and not req.condition.tags and resp.status == 412


def test_bracketless_lowercase_headers() -> None:
    _, resp = dec("41-bracketless-headers")
    assert resp.tag and resp.tag.startswith("rt:") and resp.uid and resp.uid.startswith("rid:")


def test_plain_search_and_propfind_are_not_manifests() -> None:
    for stem in ("47-search-plain", "48-propfind-plain"):
        req, resp = dec(stem)
        assert not req.manifest and not resp.manifest
        assert req.kind in ("query", "properties")
        assert resp.entries and all(e["tag"] for e in resp.entries)


def test_changetype_case_and_unknown_values() -> None:
    _, resp = dec("49-changetype-case-unknown")
    assert [e["type"] for e in resp.entries] == ["new", "delete", "change", "change"]
    assert [e.get("changetype_raw") for e in resp.entries] == ["NEW", "Delete", "Change", "modify"]
    assert any("unknown changetype 'modify'" in n for n in resp.notes)


def test_sql_aliases() -> None:
    req, _ = dec("50-sql-alias")
    assert "urn:schemas:httpmail:subject" in req.select


def test_opaque_token_shapes_kept_exactly() -> None:
    _, resp = dec("51-opaque-token-shapes")
    assert [e["tag"] for e in resp.entries] == [
        "rt:doc1-01",
        "rt:19a23000c26511d18faf00600892444c",
        "rt:8C0A2F1E-6B4D-4E1A-9F3C-2D7B5A6E9C01@00000000002",
    ]
    assert resp.entries[2]["uid"] == "rid:{8C0A2F1E-6B4D-4E1A-9F3C-2D7B5A6E9C01}"


@pytest.mark.parametrize("mode", ["pieces", "stream"])
@pytest.mark.parametrize("stem", stems())
def test_large_body_readings_agree_with_the_tree(stem: str, mode: str) -> None:
    """Bodies over safexml.STREAM_ABOVE are read in pieces, or as a stream when they cannot be
    cut; every vector must read alike either way."""
    _, tree = dec(stem)
    with reading(mode):
        _, other = dec(stem)
    assert other.to_dict() == tree.to_dict()
