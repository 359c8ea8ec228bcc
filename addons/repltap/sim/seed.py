"""What a new reference server starts with: the example mailbox, or a seed file.

A seed file is YAML or JSON: a list of resources, or ``{"resources": [...]}``. Each resource has a
``path`` (a trailing slash makes a collection; missing parent collections are created) and, for
an item, one of ``content`` (text), ``content_base64`` or ``file`` (a path relative to the seed
file), plus optional ``content_type`` (guessed from the extension otherwise) and ``props`` (dead
properties, named ``urn:schemas:httpmail:importance`` or ``{urn:schemas:httpmail:}importance``)::

    resources:
      - path: /exchange/bob/Inbox/
      - path: /exchange/bob/Inbox/Welcome.EML
        content: "Subject: Welcome\\r\\n\\r\\nHello Bob\\r\\n"
        props: {"urn:schemas:httpmail:importance": "2"}
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .sql import SqlError, clark
from .store import DavError, norm_path

if TYPE_CHECKING:
    from .store import Store

_TYPES = {
    ".eml": "message/rfc822",
    ".vcf": "text/vcard",
    ".ics": "text/calendar",
    ".txt": "text/plain",
    ".html": "text/html",
    ".xml": "text/xml",
}


class SeedError(ValueError):
    """A seed file that cannot be used; the message names the file and the problem."""


def guess_type(name: str) -> str:
    """A content type from a file name's extension."""
    dot = name.rfind(".")
    return (
        _TYPES.get(name[dot:].lower(), "application/octet-stream")
        if dot >= 0
        else ("application/octet-stream")
    )


def _mail(frm: str, subject: str, date: str, msgid: str, body: str) -> str:
    head = (
        f"From: {frm}\r\nTo: Alice Example <alice@example.com>\r\nSubject: {subject}\r\n"
        f"Date: {date}\r\nMessage-ID: <{msgid}@example.com>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    return head + body.replace("\n", "\r\n")


def _card(fn: str, email: str, tel: str) -> str:
    n = ";".join(reversed(fn.split(" ", 1))) + ";;;"
    return (
        f"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:{fn}\r\nN:{n}\r\nEMAIL;TYPE=work:{email}\r\n"
        f"TEL;TYPE=work:{tel}\r\nEND:VCARD\r\n"
    )


def example() -> list[dict[str, Any]]:
    """The example mailbox: alice's Inbox (5 messages and a Receipts subfolder), Contacts
    (3 cards) and an empty Archive."""
    inbox = "/exchange/alice/Inbox/"
    return [
        {"path": inbox},
        {
            "path": inbox + "Hello.EML",
            "content": _mail(
                "Bob Jones <bob@example.com>",
                "Hello",
                "Mon, 02 Feb 2004 09:00:00 +0000",
                "1",
                "Hi Alice,\n\nwelcome to the new mail server.\n\nBob\n",
            ),
        },
        {
            "path": inbox + "Lunch on Friday.EML",
            "content": _mail(
                "Carol Smith <carol@example.com>",
                "Lunch on Friday?",
                "Tue, 03 Feb 2004 11:30:00 +0000",
                "2",
                "Shall we try the new place around the corner?\n",
            ),
        },
        {
            "path": inbox + "Report.EML",
            "content": _mail(
                "Dave Brown <dave@example.com>",
                "Quarterly report",
                "Wed, 04 Feb 2004 16:45:00 +0000",
                "3",
                "The figures are in. Please review before Friday.\n",
            ),
            "props": {"urn:schemas:httpmail:importance": "2"},
        },
        {
            "path": inbox + "Meeting.EML",
            "content": _mail(
                "Bob Jones <bob@example.com>",
                "Meeting notes",
                "Thu, 05 Feb 2004 10:15:00 +0000",
                "4",
                "1. Budget\n2. Hiring\n3. Any other business\n",
            ),
        },
        {
            "path": inbox + "Newsletter.EML",
            "content": _mail(
                "News <news@example.com>",
                "=?utf-8?q?Newsletter_de_f=C3=A9vrier?=",
                "Fri, 06 Feb 2004 07:00:00 +0000",
                "5",
                "This month: replication, collblobs and resource tags.\n",
            ),
        },
        {"path": inbox + "Receipts/"},
        {
            "path": inbox + "Receipts/Receipt-1042.EML",
            "content": _mail(
                "Shop <orders@example.com>",
                "Your receipt #1042",
                "Sat, 07 Feb 2004 12:00:00 +0000",
                "6",
                "Thank you for your order.\n",
            ),
        },
        {"path": "/exchange/alice/Contacts/"},
        {
            "path": "/exchange/alice/Contacts/Bob Jones.vcf",
            "content": _card("Bob Jones", "bob@example.com", "+1 555 0101"),
        },
        {
            "path": "/exchange/alice/Contacts/Carol Smith.vcf",
            "content": _card("Carol Smith", "carol@example.com", "+1 555 0102"),
        },
        {
            "path": "/exchange/alice/Contacts/Dave Brown.vcf",
            "content": _card("Dave Brown", "dave@example.com", "+1 555 0103"),
        },
        {"path": "/exchange/alice/Archive/"},
    ]


def load(path: Path) -> list[dict[str, Any]]:
    """Read a seed file (YAML or JSON) into resource dicts with content as bytes."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SeedError(f"cannot read the seed file {path}: {e}") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise SeedError(f"{path} is not valid JSON: {e}") from None
    else:
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SeedError(f"{path} is not valid YAML: {e}") from None
    if isinstance(doc, dict):
        doc = doc.get("resources")
    if not isinstance(doc, list):
        raise SeedError(f"{path}: expected a list of resources or {{'resources': [...]}}")
    out = []
    for i, d in enumerate(doc):
        where = f"{path}, resource {i + 1}"
        if not isinstance(d, dict) or not isinstance(d.get("path"), str):
            raise SeedError(f"{where}: each resource needs a 'path'")
        d = dict(d)
        if "file" in d:
            try:
                d["content_bytes"] = (path.parent / str(d.pop("file"))).read_bytes()
            except OSError as e:
                raise SeedError(f"{where}: {e}") from None
        elif "content_base64" in d:
            try:
                d["content_bytes"] = base64.b64decode(str(d.pop("content_base64")), validate=True)
            except binascii.Error as e:
                raise SeedError(f"{where}: content_base64 is not base64: {e}") from None
        out.append(d)
    return out


def apply(store: Store, resources: Iterable[dict[str, Any]]) -> None:
    """Create the resources in an (empty) store; the caller holds the lock and commits."""
    for i, d in enumerate(resources):
        try:
            path = norm_path(d["path"])
            props = {clark(str(k)): str(v) for k, v in (d.get("props") or {}).items()}
            if path.endswith("/"):
                if store.get(path) is None:
                    store._ensure_parents(path)
                    store._add_collection(path).props.update(props)
                continue
            content = d.get("content_bytes")
            if content is None:
                content = str(d.get("content", "")).encode("utf-8")
            store._ensure_parents(path)
            ctype = str(d.get("content_type") or guess_type(path))
            store._create_item(path, content, ctype, props)
        except (DavError, SqlError) as e:
            raise SeedError(f"seed resource {i + 1} ({d.get('path')!r}): {e}") from None
