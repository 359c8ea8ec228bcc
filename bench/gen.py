"""Synthetic Exchange manifests of a given size, shaped like real Exchange 2003 output."""

from __future__ import annotations

REPL = "http://schemas.microsoft.com/repl/"


def manifest(entries: int) -> bytes:
    """A 207 manifest with ``entries`` responses (new, change, delete in turn), ~500 B each."""
    parts = [
        '<?xml version="1.0"?>\n<a:multistatus xmlns:a="DAV:" '
        'xmlns:b="urn:uuid:c2f41010-65b3-11d1-a29f-00aa00c14882/" '
        f'xmlns:d="{REPL}" xmlns:e="urn:schemas:httpmail:">',
        "<d:repl><d:collblob>toCTAAMAAAAAAAAAAAAAAAAAAAAAAAAHkJaBFAA=</d:collblob></d:repl>",
    ]
    for i in range(entries):
        kind = ("new", "change", "delete")[i % 3]
        parts.append(
            "<a:response>"
            f"<a:href>http://mail.example.com/exchange/alice/Inbox/Message-{i:06d}.EML</a:href>"
            "<a:propstat><a:status>HTTP/1.1 200 OK</a:status><a:prop>"
            f"<e:subject>Message number {i} with a subject line of ordinary length</e:subject>"
            f'<a:getcontentlength b:dt="int">{1000 + i}</a:getcontentlength>'
            f"<d:resourcetag>rt:8996592620a48a4393901c9368f7c518000000001497{i:044x}</d:resourcetag>"
            f"<d:repl-uid>rid:8996592620a48a4393901c9368f7c518{i:012x}</d:repl-uid>"
            '<a:isfolder b:dt="boolean">0</a:isfolder>'
            "</a:prop></a:propstat>"
            f"<d:changetype>{kind}</d:changetype>"
            "</a:response>\n"
        )
    parts.append("</a:multistatus>")
    return "".join(parts).encode()


MANIFEST_REQUEST = (
    b'<?xml version="1.0"?><D:searchrequest xmlns:D="DAV:" '
    b'xmlns:R="http://schemas.microsoft.com/repl/"><R:repl>'
    b"<R:collblob>toCTAAMAAAAAAAAAAAAAAAAAAAAAAAAHkJaBFAA=</R:collblob></R:repl>"
    b'<D:sql>SELECT "DAV:href", "http://schemas.microsoft.com/repl/resourcetag", '
    b'"http://schemas.microsoft.com/repl/repl-uid" FROM SCOPE(\'SHALLOW TRAVERSAL OF '
    b'"/exchange/alice/Inbox/"\')</D:sql></D:searchrequest>'
)
