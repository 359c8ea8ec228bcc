"""The subset of Exchange's WebDAV SQL that the reference server understands.

What may live here: parsing one ``SELECT … FROM SCOPE(…) [WHERE …] [ORDER BY …]`` statement into a
:class:`Query`, and evaluating its WHERE clause against a row of property values. What may not:
anything about replication state, HTTP or XML.

Supported (everything else is refused with :class:`SqlError`, answered as 400 with the reason):
- ``SELECT *`` or a list of quoted property names, each with an optional ``AS alias``;
- ``FROM SCOPE('SHALLOW|DEEP|HIERARCHICAL TRAVERSAL OF "url"')``, ``FROM SCOPE('"url"')`` and
  ``FROM "url"``; one scope only, because a collblob is bound to one collection;
- WHERE: ``AND``, ``OR``, ``NOT``, parentheses, ``= <> != < > <= >=``, ``[NOT] LIKE``,
  ``IS [NOT] NULL``, ``[NOT] IN (…)``, literals ``'text'``, numbers, ``true``/``false``/``null`` and
  ``CAST("value" AS 'type')``;
- ORDER BY is parsed and ignored: a manifest's order is the server's (spec §3 step 7, §13.23).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Value = str | int | float | bool | None


class SqlError(ValueError):
    """A statement outside the supported subset; the message is one readable sentence."""


def clark(name: str) -> str:
    """``DAV:href`` → ``{DAV:}href``: the namespace ends at the last ``:``, ``/`` or ``#``."""
    if name.startswith("{"):
        return name
    cut = max(name.rfind(":"), name.rfind("/"), name.rfind("#"))
    if cut < 0 or cut == len(name) - 1:
        raise SqlError(f"{name!r} is not a namespace-qualified property name")
    return "{" + name[: cut + 1] + "}" + name[cut + 1 :]


@dataclass(frozen=True)
class Column:
    """One SELECT column: the property (Clark notation) and its alias, if any."""

    prop: str
    alias: str | None = None


@dataclass
class Query:
    """A parsed statement."""

    columns: list[Column] | None  # None for SELECT *
    depth: str  # shallow | deep | hierarchical
    scope_url: str
    where: Expr | None
    binding: str  # the normalised text a collblob is bound to (everything from FROM on)
    text: str  # the statement, whitespace normalised

    def matches(self, row: Callable[[str], Value]) -> bool:
        """Whether the row (a property getter) satisfies the WHERE clause."""
        return True if self.where is None else bool(self.where.eval(row))


# --------------------------------------------------------------------------------------------
# Tokens

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<dq>"(?:[^"]|"")*")
      | (?P<sq>'(?:[^']|'')*')
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<op><>|!=|<=|>=|[=<>(),*;])
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Tok:
    kind: str  # dq, sq, num, op, word, end
    text: str
    pos: int

    @property
    def value(self) -> str:
        """The unquoted text of a quoted token."""
        q = self.text[0]
        return self.text[1:-1].replace(q + q, q)

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.text.upper() in words


def _tokens(sql: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    while True:
        m = _TOKEN_RE.match(sql, pos)
        if m is None or m.end() == pos:
            rest = sql[pos:].strip()
            if rest:
                raise SqlError(f"cannot read the SQL at {rest[:30]!r}")
            break
        kind = m.lastgroup or "end"
        out.append(Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    out.append(Tok("end", "", len(sql)))
    return out


# --------------------------------------------------------------------------------------------
# Expressions


@dataclass
class Expr:
    """A WHERE expression node."""

    op: str  # and, or, not, cmp, like, isnull, in, prop, lit
    args: list[Any] = field(default_factory=list)

    def eval(self, row: Callable[[str], Value]) -> Value:
        """Evaluate with SQL's three-valued logic collapsed: unknown (None) counts as false."""
        op, a = self.op, self.args
        if op == "lit":
            return a[0]  # type: ignore[no-any-return]
        if op == "prop":
            return row(a[0])
        if op == "and":
            return all(bool(x.eval(row)) for x in a)
        if op == "or":
            return any(bool(x.eval(row)) for x in a)
        if op == "not":
            return not bool(a[0].eval(row))
        if op == "isnull":
            return bool((a[0].eval(row) is None) != a[1])
        if op == "like":
            v = a[0].eval(row)
            return v is not None and (a[1].fullmatch(str(v)) is not None) != a[2]
        if op == "in":
            v = a[0].eval(row)
            return v is not None and any(_compare(v, "=", x) for x in a[1]) != a[2]
        if op == "cmp":
            left, right = a[0].eval(row), a[2].eval(row)
            if left is None or right is None:
                return False
            return _compare(left, a[1], right)
        raise AssertionError(op)


def _coerce(v: Value, like: Value) -> Value:
    """Bring ``v`` to the type of ``like`` where that is meaningful (bool/number vs text)."""
    if isinstance(like, bool) and not isinstance(v, bool):
        s = str(v).strip().lower()
        if s in ("1", "true", "t"):
            return True
        if s in ("0", "false", "f"):
            return False
        return v
    if isinstance(like, int | float) and not isinstance(like, bool) and isinstance(v, str):
        try:
            return float(v) if "." in v else int(v)
        except ValueError:
            return v
    return v


def _compare(left: Value, op: str, right: Value) -> bool:
    left = _coerce(left, right)
    right = _coerce(right, left)
    if type(left) is not type(right) and not (
        isinstance(left, int | float) and isinstance(right, int | float)
    ):
        left, right = str(left), str(right)
    if isinstance(left, str) and isinstance(right, str):
        # Exchange compares text case-insensitively (its default collation).
        left, right = left.lower(), right.lower()
    try:
        if op == "=":
            return bool(left == right)
        if op in ("<>", "!="):
            return bool(left != right)
        if op == "<":
            return bool(left < right)  # type: ignore[operator]
        if op == ">":
            return bool(left > right)  # type: ignore[operator]
        if op == "<=":
            return bool(left <= right)  # type: ignore[operator]
        if op == ">=":
            return bool(left >= right)  # type: ignore[operator]
    except TypeError:
        return False
    raise AssertionError(op)


def _like_pattern(pattern: str) -> re.Pattern[str]:
    out = []
    for ch in pattern:
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def _cast(text: str, type_name: str) -> Value:
    t = type_name.lower()
    if t in ("boolean", "bool"):
        return text.strip().lower() in ("1", "true", "t")
    if t in ("int", "i2", "i4", "i8", "ui1", "ui2", "ui4", "ui8", "number"):
        try:
            return int(text)
        except ValueError:
            raise SqlError(f"CAST({text!r} AS {type_name!r}): not an integer") from None
    if t in ("float", "r4", "r8"):
        try:
            return float(text)
        except ValueError:
            raise SqlError(f"CAST({text!r} AS {type_name!r}): not a number") from None
    return text  # string, dateTime, dateTime.tz and the like compare as text


class _Parser:
    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.toks = _tokens(sql)
        self.i = 0

    @property
    def cur(self) -> Tok:
        return self.toks[self.i]

    def take(self) -> Tok:
        t = self.toks[self.i]
        if t.kind != "end":
            self.i += 1
        return t

    def expect_word(self, *words: str) -> Tok:
        t = self.take()
        if not t.is_word(*words):
            raise SqlError(f"expected {' or '.join(words)} at {self._at(t)}")
        return t

    def expect_op(self, op: str) -> Tok:
        t = self.take()
        if t.kind != "op" or t.text != op:
            raise SqlError(f"expected {op!r} at {self._at(t)}")
        return t

    def _at(self, t: Tok) -> str:
        return repr(self.sql[t.pos : t.pos + 30]) if t.kind != "end" else "the end"

    # SELECT ----------------------------------------------------------------------------------
    def columns(self) -> list[Column] | None:
        if self.cur.kind == "op" and self.cur.text == "*":
            self.take()
            return None
        cols = []
        while True:
            t = self.take()
            if t.kind != "dq":
                raise SqlError(f"expected a quoted property name at {self._at(t)}")
            alias = None
            if self.cur.is_word("AS"):
                self.take()
                a = self.take()
                if a.kind == "word":
                    alias = a.text
                elif a.kind in ("dq", "sq"):
                    alias = a.value
                else:
                    raise SqlError(f"expected an alias at {self._at(a)}")
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", alias):
                    raise SqlError(f"the alias {alias!r} is not a valid XML element name")
            cols.append(Column(clark(t.value), alias))
            if self.cur.kind == "op" and self.cur.text == ",":
                self.take()
                continue
            return cols

    # FROM ------------------------------------------------------------------------------------
    def scope(self) -> tuple[str, str]:
        t = self.take()
        if t.kind == "dq":  # FROM "url": Exchange reads it as a shallow scope
            return "shallow", t.value
        if not t.is_word("SCOPE"):
            raise SqlError(f"expected SCOPE('…') or a quoted URL after FROM at {self._at(t)}")
        self.expect_op("(")
        body = self.take()
        if body.kind != "sq":
            raise SqlError(f"expected a quoted scope inside SCOPE() at {self._at(body)}")
        self.expect_op(")")
        if self.cur.kind == "op" and self.cur.text == ",":
            raise SqlError("more than one SCOPE: a collblob is bound to one collection")
        m = re.fullmatch(
            r'\s*(?:(SHALLOW|DEEP|HIERARCHICAL)\s+TRAVERSAL\s+OF\s+)?"([^"]*)"\s*',
            body.value,
            re.IGNORECASE,
        )
        if m is None:
            raise SqlError(f"cannot read the scope {body.value!r}")
        # A scope without a traversal keyword is read as shallow: the one scope Exchange allows
        # everywhere (deep traversal is refused in the MAPI public folder tree, spec §8.8).
        return (m.group(1) or "shallow").lower(), m.group(2)

    # WHERE -----------------------------------------------------------------------------------
    def expr(self) -> Expr:
        parts = [self.and_expr()]
        while self.cur.is_word("OR"):
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else Expr("or", parts)

    def and_expr(self) -> Expr:
        parts = [self.not_expr()]
        while self.cur.is_word("AND"):
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else Expr("and", parts)

    def not_expr(self) -> Expr:
        if self.cur.is_word("NOT"):
            self.take()
            return Expr("not", [self.not_expr()])
        if self.cur.kind == "op" and self.cur.text == "(":
            self.take()
            e = self.expr()
            self.expect_op(")")
            return e
        return self.predicate()

    def operand(self) -> Expr:
        t = self.take()
        if t.kind == "dq":
            return Expr("prop", [clark(t.value)])
        if t.kind == "sq":
            return Expr("lit", [t.value])
        if t.kind == "num":
            return Expr("lit", [float(t.text) if "." in t.text else int(t.text)])
        if t.is_word("TRUE"):
            return Expr("lit", [True])
        if t.is_word("FALSE"):
            return Expr("lit", [False])
        if t.is_word("NULL"):
            return Expr("lit", [None])
        if t.is_word("CAST"):
            self.expect_op("(")
            v = self.take()
            if v.kind not in ("dq", "sq", "num"):
                raise SqlError(f"expected a value inside CAST() at {self._at(v)}")
            self.expect_word("AS")
            ty = self.take()
            if ty.kind not in ("dq", "sq", "word"):
                raise SqlError(f"expected a type name in CAST() at {self._at(ty)}")
            self.expect_op(")")
            text = v.text if v.kind == "num" else v.value
            return Expr("lit", [_cast(text, ty.text if ty.kind == "word" else ty.value)])
        raise SqlError(f"expected a property, a value or CAST() at {self._at(t)}")

    def predicate(self) -> Expr:
        left = self.operand()
        t = self.cur
        if t.kind == "op" and t.text in ("=", "<>", "!=", "<", ">", "<=", ">="):
            self.take()
            return Expr("cmp", [left, t.text, self.operand()])
        if t.is_word("IS"):
            self.take()
            negate = bool(self.cur.is_word("NOT")) and self.take() is not None
            self.expect_word("NULL")
            return Expr("isnull", [left, negate])
        negate = False
        if t.is_word("NOT"):
            self.take()
            negate = True
        if self.cur.is_word("LIKE"):
            self.take()
            p = self.take()
            if p.kind != "sq":
                raise SqlError(f"expected a quoted pattern after LIKE at {self._at(p)}")
            return Expr("like", [left, _like_pattern(p.value), negate])
        if self.cur.is_word("IN"):
            self.take()
            self.expect_op("(")
            values: list[Value] = []
            while True:
                v = self.operand()
                if v.op != "lit":
                    raise SqlError("IN (…) takes values only")
                values.append(v.args[0])
                if self.cur.kind == "op" and self.cur.text == ",":
                    self.take()
                    continue
                self.expect_op(")")
                break
            return Expr("in", [left, values, negate])
        raise SqlError(f"expected a comparison at {self._at(self.cur)}")


def parse(sql: str) -> Query:
    """Parse one statement; raises :class:`SqlError` with a readable reason."""
    text = " ".join(sql.split())
    if not text:
        raise SqlError("the SQL statement is empty")
    p = _Parser(text)
    p.expect_word("SELECT")
    columns = p.columns()
    from_tok = p.expect_word("FROM")
    depth, url = p.scope()
    where = None
    if p.cur.is_word("WHERE"):
        p.take()
        where = p.expr()
    if p.cur.is_word("ORDER"):
        p.take()
        p.expect_word("BY")
        while p.cur.kind != "end" and not (p.cur.kind == "op" and p.cur.text == ";"):
            p.take()
    if p.cur.kind == "op" and p.cur.text == ";":
        p.take()
    if p.cur.kind != "end":
        raise SqlError(f"unexpected {p._at(p.cur)} after the statement")
    # The binding is the text from FROM on, as the protocol core's parse_sql normalises it, so
    # that only the SELECT list may change between manifest requests (spec §8.2, §13.8).
    return Query(columns, depth, url, where, text[from_tok.pos :], text)
