"""The server's SQL subset: SELECT lists, scopes, WHERE, and refusals with reasons."""

from __future__ import annotations

import pytest

from repltap.protocol.exchange import parse_sql
from repltap.sim import sql

ROW = {
    "{DAV:}isfolder": False,
    "{DAV:}ishidden": False,
    "{DAV:}getcontentlength": 120,
    "{urn:schemas:httpmail:}subject": "Quarterly Report",
    "{DAV:}contentclass": "urn:content-classes:message",
}


def matches(where: str, row: dict[str, object] = ROW) -> bool:
    q = sql.parse(f'SELECT "DAV:href" FROM SCOPE(\'SHALLOW TRAVERSAL OF "/a/"\') WHERE {where}')
    return q.matches(lambda n: row.get(n))  # type: ignore[arg-type, return-value]


def test_select_scope_and_binding() -> None:
    text = (
        'SELECT "DAV:href", "urn:schemas:httpmail:subject" AS subj,\n'
        '  "http://schemas.microsoft.com/repl/repl-uid"\n'
        "FROM SCOPE('DEEP TRAVERSAL OF \"/exchange/alice/\"')\n"
        'WHERE "DAV:isfolder" = false ORDER BY "DAV:href"'
    )
    q = sql.parse(text)
    assert q.columns == [
        sql.Column("{DAV:}href"),
        sql.Column("{urn:schemas:httpmail:}subject", "subj"),
        sql.Column("{http://schemas.microsoft.com/repl/}repl-uid"),
    ]
    assert (q.depth, q.scope_url) == ("deep", "/exchange/alice/")
    # The binding is what the protocol core calls the query a collblob is bound to.
    assert q.binding == parse_sql(text)[2]


@pytest.mark.parametrize(
    ("from_clause", "depth"),
    [
        ("SCOPE('SHALLOW TRAVERSAL OF \"/a/\"')", "shallow"),
        ("SCOPE('hierarchical traversal of \"/a/\"')", "hierarchical"),
        ("SCOPE('\"/a/\"')", "shallow"),
        ('"/a/"', "shallow"),
    ],
)
def test_scope_forms(from_clause: str, depth: str) -> None:
    q = sql.parse(f"SELECT * FROM {from_clause}")
    assert (q.columns, q.depth, q.scope_url) == (None, depth, "/a/")


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ('"DAV:isfolder" = false', True),
        ('"DAV:isfolder" = true', False),
        ('"DAV:isfolder" = 0 AND "DAV:ishidden" = False', True),
        ('"DAV:getcontentlength" > 100', True),
        ('"DAV:getcontentlength" <= 100', False),
        ("\"urn:schemas:httpmail:subject\" = 'quarterly report'", True),  # case-insensitive
        ("\"urn:schemas:httpmail:subject\" LIKE '%Report'", True),
        ("\"urn:schemas:httpmail:subject\" NOT LIKE 'Q%'", False),
        ('"urn:schemas:httpmail:importance" IS NULL', True),
        ('"urn:schemas:httpmail:subject" IS NOT NULL', True),
        (
            "\"DAV:contentclass\" IN ('urn:content-classes:person', 'urn:content-classes:message')",
            True,
        ),
        ('NOT ("DAV:isfolder" = true OR "DAV:ishidden" = true)', True),
        ('"DAV:isfolder" = CAST("1" AS \'boolean\')', False),
        ('"urn:schemas:httpmail:importance" = 1', False),  # NULL never compares equal
    ],
)
def test_where(where: str, expected: bool) -> None:
    assert matches(where) is expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("DELETE FROM x", "expected SELECT"),
        ('SELECT DAV:href FROM "/a/"', "cannot read the SQL"),
        ('SELECT 42 FROM "/a/"', "quoted property name"),
        ('SELECT "DAV:href" FROM SCOPE(\'"/a/"\'), SCOPE(\'"/b/"\')', "more than one SCOPE"),
        ('SELECT "DAV:href" FROM SCOPE(\'SIDEWAYS TRAVERSAL OF "/a/"\')', "cannot read the scope"),
        ('SELECT "DAV:href" FROM "/a/" WHERE "DAV:isfolder" ==', "expected a property"),
        ('SELECT "DAV:href" FROM "/a/" WHERE "DAV:isfolder"', "expected a comparison"),
        ('SELECT "DAV:href" FROM "/a/" extra', "unexpected"),
        ('SELECT "nonamespace" FROM "/a/"', "not a namespace-qualified"),
        ('SELECT "DAV:href" AS "1bad" FROM "/a/"', "not a valid XML element name"),
    ],
)
def test_refusals_say_why(text: str, reason: str) -> None:
    with pytest.raises(sql.SqlError, match=reason):
        sql.parse(text)


def test_clark() -> None:
    assert sql.clark("DAV:href") == "{DAV:}href"
    assert sql.clark("http://schemas.microsoft.com/repl/repl-uid") == (
        "{http://schemas.microsoft.com/repl/}repl-uid"
    )
    assert sql.clark("http://schemas.microsoft.com/mapi/proptag/x0fff0102") == (
        "{http://schemas.microsoft.com/mapi/proptag/}x0fff0102"
    )
