"""The one XML parser: safe against entity attacks, DTDs, depth and size, never raising anything
but XmlProblem."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from repltap.protocol import xml as safexml

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<D:multistatus xmlns:D="DAV:"><D:response><D:href>&lol9;</D:href></D:response></D:multistatus>"""

QUADRATIC = (
    b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "'
    + b"x" * 50_000
    + b'">]><m>'
    + b"&a;" * 50_000
    + b"</m>"
)


def test_parses_ordinary_xml_and_keeps_prefixes_in_pretty_output() -> None:
    root = safexml.parse(b'<a:multistatus xmlns:a="DAV:"><a:response/></a:multistatus>')
    assert root.tag == "{DAV:}multistatus"
    out = safexml.pretty(b'<a:multistatus xmlns:a="DAV:"><a:response/></a:multistatus>')
    assert out == '<a:multistatus xmlns:a="DAV:">\n  <a:response/>\n</a:multistatus>\n'


@pytest.mark.parametrize("bomb", [BILLION_LAUGHS, QUADRATIC], ids=["billion-laughs", "quadratic"])
def test_entity_bombs_are_refused_quickly(bomb: bytes) -> None:
    t = time.perf_counter()
    with pytest.raises(safexml.XmlProblem) as e:
        safexml.parse(bomb)
    assert e.value.reason == "dtd-forbidden"
    assert time.perf_counter() - t < 2  # no expansion happened (a generous bound, not a benchmark)


def test_external_file_entity_is_never_read(tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    doc = (
        f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file://{secret}">]><d>&x;</d>'
    ).encode()
    with pytest.raises(safexml.XmlProblem) as e:
        safexml.parse(doc)
    assert e.value.reason == "dtd-forbidden"
    assert "TOP-SECRET" not in e.value.detail


def test_external_url_entity_and_dtd_are_never_fetched() -> None:
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<!ENTITY y 'fetched'>")

        def log_message(self, *a: object) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}"
        docs = [
            f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "{url}/ent">]><d>&x;</d>',
            f'<?xml version="1.0"?><!DOCTYPE d SYSTEM "{url}/dtd"><d/>',
            f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY % p SYSTEM "{url}/pe"> %p;]><d/>',
        ]
        for doc in docs:
            with pytest.raises(safexml.XmlProblem):
                safexml.parse(doc.encode())
    finally:
        srv.shutdown()
    assert hits == []


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(safexml.XmlProblem) as e:
        safexml.parse(b"<a>" * 10_000 + b"</a>" * 10_000)
    assert e.value.reason == "too-deep"


def test_size_limit() -> None:
    with pytest.raises(safexml.XmlProblem) as e:
        safexml.parse(b"<a>" + b"x" * 2000 + b"</a>", max_bytes=1000)
    assert e.value.reason == "too-large"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty-body"),
        (b"   \n ", "empty-body"),
        (b"HTTP error page", "not-xml"),
        (b"<a><b>", "truncated"),
        (b'<?xml version="1.0" encoding="utf-8"?><a>\xff\xfe</a>', "invalid-encoding"),
        (b'<?xml version="1.0" encoding="x-nonsense"?><a/>', "invalid-encoding"),
        (b"<a></b>", "malformed-xml"),
    ],
)
def test_bad_input_gives_a_typed_reason(data: bytes, reason: str) -> None:
    with pytest.raises(safexml.XmlProblem) as e:
        safexml.parse(data)
    assert e.value.reason == reason
    assert e.value.detail


def test_utf16_with_bom_is_read() -> None:
    doc = '<?xml version="1.0" encoding="utf-16"?><a>é</a>'.encode("utf-16")
    assert safexml.parse(doc).text == "é"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (BILLION_LAUGHS, "dtd-forbidden"),
        (QUADRATIC, "dtd-forbidden"),
        (b'<?xml version="1.0"?><!DOCTYPE d SYSTEM "http://127.0.0.1:9/x"><d/>', "dtd-forbidden"),
        (b"<a>" * 10_000 + b"</a>" * 10_000, "too-deep"),
        (b"<a><b>", "truncated"),
        (b"", "empty-body"),
        (b"nope", "not-xml"),
    ],
)
def test_the_streaming_reader_is_as_safe(data: bytes, reason: str) -> None:
    with pytest.raises(safexml.XmlProblem) as e:
        list(safexml.iterparse(data, ["{*}href", "{*}a"]))
    assert e.value.reason == reason


def test_the_streaming_reader_yields_elements_as_they_end() -> None:
    got = [el.text for el in safexml.iterparse(b"<r><a>1</a><b/><a>2</a></r>", ["a"])]
    assert got == ["1", "2"]


MS = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<!-- before -->'
    b'<D:multistatus xmlns:D="DAV:" note="a > b">'
    + b"".join(b"<D:response><D:href>/i%d</D:href></D:response>\n" % i for i in range(50))
    + b"<D:sync-token>t</D:sync-token></D:multistatus>\n"
)


def _children(roots: list) -> list[bytes]:
    return [safexml.etree.tostring(c, with_tail=False) for r in roots for c in r]


@pytest.mark.parametrize("piece_bytes", [1, 100, 1000, 10**9])
def test_pieces_hold_every_child_of_the_root_once_in_order(piece_bytes: int) -> None:
    roots = list(safexml.parse_pieces(MS, piece_bytes=piece_bytes))
    assert _children(roots) == _children([safexml.parse(MS)])
    assert {(r.tag, r.get("note")) for r in roots} == {("{DAV:}multistatus", "a > b")}
    if piece_bytes == 1:
        assert len(roots) == 51  # one cut after every response
    if piece_bytes == 10**9:
        assert len(roots) == 1


@pytest.mark.parametrize(
    "data",
    [
        MS.replace(b"<D:response>", b"<!-- </D:response> --><D:response>", 1),  # cut in a comment
        MS.replace(b"<D:href>/i3", b"<D:href><![CDATA[</D:response>]]>/i3"),  # in CDATA
        MS.replace(b"/i3</D:href>", b"/i3</D:href><D:response/></D:response>", 1),  # nested
        MS.replace(b"<!-- before -->", b'<!DOCTYPE D:multistatus SYSTEM "x.dtd">'),
        MS.decode().replace("utf-8", "utf-16").encode("utf-16"),
        MS.replace(b"utf-8", b"shift_jis"),
        MS + b"<!-- after the root -->",
        MS.replace(b"</D:multistatus>", b""),  # no end tag
        MS.replace(b"/i7</D:href>", b"/i7</D:hre>"),  # not well-formed
    ],
    ids=[
        "comment",
        "cdata",
        "nested",
        "doctype",
        "utf-16",
        "shift_jis",
        "trailer",
        "unclosed",
        "malformed",
    ],
)
def test_bodies_that_cannot_be_cut_say_so(data: bytes) -> None:
    with pytest.raises(safexml.NotInPieces):
        list(safexml.parse_pieces(data, piece_bytes=1))


def test_pieces_keep_the_size_limit() -> None:
    with pytest.raises(safexml.XmlProblem) as e:
        list(safexml.parse_pieces(MS, max_bytes=100))
    assert e.value.reason == "too-large"
