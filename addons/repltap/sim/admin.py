"""The reference server's admin interface: JSON over HTTP under ``/_admin/``, and
``repltap admin`` to drive it from a shell.

What may live here: changing the server's world from outside the protocol, so a demo or a test
can make "server-side changes" between two syncs. What may not: protocol behaviour (server.py).

HTTP API (JSON in, JSON out; errors are ``{"error": "..."}`` with a 4xx status):

====================  ==========================================================================
GET  /_admin/         this list
GET  /_admin/tree     every resource: path, uid, tag, collection, size, content_type, props
GET  /_admin/export?path=/exchange/alice/Inbox/
                      the items directly in a collection, with their content (base64)
GET  /_admin/settings current runtime settings
POST /_admin/settings ``{"page_cap": 3 | null, "transform": "off" | "crlf"}``
POST /_admin/create   ``{"path", "content" | "content_base64" | "subject"+"body", "content_type",
                      "props": {name: value}, "parents": bool}``; a path ending in / makes a
                      collection
POST /_admin/modify   ``{"path", "content" | "content_base64" | "subject"+"body", "content_type",
                      "props": {...}, "remove_props": [...]}`` (a new resourcetag)
POST /_admin/delete   ``{"path"}``
POST /_admin/move     ``{"path", "destination", "overwrite": true}``
POST /_admin/copy     ``{"path", "destination", "overwrite": true}``
POST /_admin/recreate ``{"path", "keep": true | false | ["name", ...]}``: delete the collection and
                      create it again (a new incarnation: old collblobs get 475), restoring the
                      kept items with their repl-uids and resourcetags, as from a backup
====================  ==========================================================================

Property names are ``urn:schemas:httpmail:subject`` or ``{urn:schemas:httpmail:}subject``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .seed import guess_type
from .sql import SqlError, clark
from .store import DavError, Resource, name_of, norm_path

if TYPE_CHECKING:
    from .server import ReplServer

ENDPOINTS = {
    "GET /_admin/": "this list",
    "GET /_admin/tree": "every resource (path, uid, tag, collection, size, content_type, props)",
    "GET /_admin/export?path=COLLECTION": "the items directly in a collection, with content",
    "GET /_admin/settings": "runtime settings",
    "POST /_admin/settings": '{"page_cap": N|null, "transform": "off"|"crlf"}',
    "POST /_admin/create": '{"path", "content"|"content_base64"|"subject"+"body", '
    '"content_type", "props", "parents"}; a path ending in / makes a collection',
    "POST /_admin/modify": '{"path", "content"|"content_base64"|"subject"+"body", '
    '"content_type", "props", "remove_props"}',
    "POST /_admin/delete": '{"path"}',
    "POST /_admin/move": '{"path", "destination", "overwrite": true}',
    "POST /_admin/copy": '{"path", "destination", "overwrite": true}',
    "POST /_admin/recreate": '{"path", "keep": true|false|[names]}: new incarnation, old '
    "collblobs get 475; kept items keep their repl-uids and tags",
}


class AdminError(ValueError):
    """A bad admin request (400) or a failed admin call (client side)."""


def make_message(subject: str, body: str, sender: str = "Admin <admin@example.com>") -> bytes:
    """A small RFC 822 message with CRLF line endings."""
    head = (
        f"From: {sender}\r\nTo: Alice Example <alice@example.com>\r\nSubject: {subject}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    text = body if body.endswith("\n") else body + "\n"
    return (head + text.replace("\r\n", "\n").replace("\n", "\r\n")).encode("utf-8")


def describe(r: Resource, with_content: bool = False) -> dict[str, Any]:
    """The JSON form of a resource."""
    d: dict[str, Any] = {
        "path": r.path,
        "name": name_of(r.path),
        "uid": r.uid,
        "tag": r.tag,
        "collection": r.collection,
        "props": dict(r.props),
    }
    if r.collection:
        d["incarnation"] = r.incarnation
    else:
        d["content_type"] = r.content_type
        d["size"] = len(r.content)
    if with_content and not r.collection:
        d["content_base64"] = base64.b64encode(r.content).decode("ascii")
    return d


# ------------------------------------------------------------------------------ server side


def handle(server: ReplServer, method: str, path: str, query: str, body: bytes) -> tuple[int, Any]:
    """Answer one admin request: (status, JSON document)."""
    op = path[len("/_admin") :].strip("/")
    try:
        if method == "GET":
            return 200, _get(server, op, parse_qs(query))
        if method != "POST":
            return 405, {"error": f"the admin interface takes GET and POST, not {method}"}
        try:
            args = json.loads(body or b"{}")
        except ValueError as e:
            raise AdminError(f"the body is not JSON: {e}") from None
        if not isinstance(args, dict):
            raise AdminError("the body must be a JSON object")
        return 200, _post(server, op, args)
    except AdminError as e:
        return 400, {"error": str(e)}
    except DavError as e:
        return e.status, {"error": e.reason}
    except SqlError as e:
        return 400, {"error": str(e)}


def _path(args: dict[str, Any], key: str = "path") -> str:
    v = args.get(key)
    if not isinstance(v, str) or not v:
        raise AdminError(f"{key!r} is required (a path such as /exchange/alice/Inbox/Hello.EML)")
    return norm_path(v)


def _content(args: dict[str, Any]) -> bytes | None:
    if "content_base64" in args:
        try:
            return base64.b64decode(str(args["content_base64"]), validate=True)
        except binascii.Error as e:
            raise AdminError(f"content_base64 is not base64: {e}") from None
    if "content" in args:
        return str(args["content"]).encode("utf-8")
    if "subject" in args:
        return make_message(str(args["subject"]), str(args.get("body", "")))
    return None


def _props(args: dict[str, Any]) -> dict[str, str]:
    props = args.get("props") or {}
    if not isinstance(props, dict):
        raise AdminError("'props' must be an object of name: value")
    return {clark(str(k)): str(v) for k, v in props.items()}


def _get(server: ReplServer, op: str, q: dict[str, list[str]]) -> Any:
    store = server.store
    if op == "":
        return {"endpoints": ENDPOINTS}
    if op == "tree":
        return {"seq": store.seq, "resources": [describe(r) for r in store.iter_all()]}
    if op == "settings":
        return server.settings.to_dict()
    if op == "export":
        path = _path({"path": (q.get("path") or [""])[0]})
        with store.lock:
            coll = store.require(path)
            if not coll.collection:
                raise AdminError(f"{path} is not a collection")
            return {
                "collection": describe(coll),
                "items": [describe(r, True) for r in store.children(coll.path) if not r.collection],
            }
    raise DavError(404, f"no admin endpoint GET /_admin/{op}; GET /_admin/ lists them")


def _post(server: ReplServer, op: str, args: dict[str, Any]) -> Any:
    store = server.store
    if op == "settings":
        if "page_cap" in args:
            cap = args["page_cap"]
            if cap is not None and (not isinstance(cap, int) or cap < 0):
                raise AdminError("page_cap must be a number of rows (0 or null: no cap)")
            server.settings.page_cap = cap or None
        if "transform" in args:
            if args["transform"] not in ("off", "crlf"):
                raise AdminError("transform must be 'off' or 'crlf'")
            server.settings.transform = args["transform"]
        return server.settings.to_dict()
    if op == "create":
        path = _path(args)
        if path.endswith("/"):
            r = store.mkcol(path, parents=bool(args.get("parents")))
        else:
            content = _content(args)
            ctype = str(args.get("content_type") or guess_type(path))
            with store.lock:
                if args.get("parents"):
                    store._ensure_parents(path)
                r = store.create_item(path, content or b"", ctype, _props(args))
        return {"created": describe(r)}
    if op == "modify":
        path = _path(args)
        remove = args.get("remove_props") or []
        if not isinstance(remove, list):
            raise AdminError("'remove_props' must be a list of names")
        content = _content(args)
        if content is None and not args.get("props") and not remove:
            raise AdminError("nothing to modify: give content, subject, props or remove_props")
        r = store.update(
            path,
            content=content,
            content_type=args.get("content_type"),
            set_props=_props(args),
            remove_props=[clark(str(n)) for n in remove],
        )
        return {"modified": describe(r)}
    if op == "delete":
        path = _path(args)
        uid = store.require(path).uid
        store.delete(path)
        return {"deleted": {"path": path, "uid": uid}}
    if op in ("move", "copy"):
        path, dest = _path(args), _path(args, "destination")
        fn = store.move if op == "move" else store.copy
        r, existed = fn(path, dest, overwrite=bool(args.get("overwrite", True)))
        return {"moved" if op == "move" else "copied": describe(r), "overwritten": existed}
    if op == "recreate":
        keep = args.get("keep", True)
        if not (
            isinstance(keep, bool)
            or (isinstance(keep, list) and all(isinstance(k, str) for k in keep))
        ):
            raise AdminError("'keep' must be true, false or a list of item names")
        r = store.recreate(_path(args), keep)
        kept = [describe(c) for c in store.children(r.path)]
        return {"recreated": describe(r), "kept": kept}
    raise DavError(404, f"no admin endpoint POST /_admin/{op}; GET /_admin/ lists them")


# ------------------------------------------------------------------------------ client side


class AdminClient:
    """Calls a running server's admin API (used by ``repltap admin``, the demo and the tests)."""

    def __init__(self, url: str, timeout: float = 10) -> None:
        base = url.rstrip("/")
        if base.endswith("/_admin"):
            base = base[: -len("/_admin")]
        self.base = base
        self.timeout = timeout
        # Never through an environment proxy: admin calls must not show up in a recording.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, op: str, args: dict[str, Any] | None = None) -> Any:
        """One call; raises AdminError with the server's reason on failure."""
        data = json.dumps(args).encode() if args is not None else None
        req = urllib.request.Request(
            f"{self.base}/_admin/{op}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read()).get("error", e.reason)
            except ValueError:
                reason = e.reason
            raise AdminError(f"{op}: {e.code} {reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise AdminError(f"cannot reach {self.base}: {getattr(e, 'reason', e)}") from None

    def get(self, op: str) -> Any:
        return self.call("GET", op)

    def post(self, op: str, **args: Any) -> Any:
        return self.call("POST", op, args)

    def export(self, path: str) -> dict[str, Any]:
        """The items of a collection, by name, content decoded to bytes."""
        from urllib.parse import quote

        doc = self.call("GET", f"export?path={quote(path)}")
        out = {}
        for item in doc["items"]:
            item["content"] = base64.b64decode(item.pop("content_base64"))
            out[item["name"]] = item
        return {"collection": doc["collection"], "items": out}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``repltap admin``."""
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8090")
    p.add_argument("--json", action="store_true", help="print the server's JSON answer")
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)

    show = ops.add_parser("show", help="list every resource, or the items of one collection")
    show.add_argument("path", nargs="?", help="a collection (default: the whole tree)")

    for name, help_text in (
        ("create", "create an item (or a collection: path ending in /)"),
        ("modify", "change an item's content or properties"),
    ):
        c = ops.add_parser(name, help=help_text)
        c.add_argument("path")
        src = c.add_mutually_exclusive_group()
        src.add_argument("--text", help="the content, as text")
        src.add_argument("--file", help="read the content from a file")
        src.add_argument("--subject", help="make a small message with this subject")
        c.add_argument("--body", default="", help="the message body with --subject")
        c.add_argument("--type", help="the content type (default: from the extension)")
        c.add_argument("--prop", action="append", default=[], metavar="NAME=VALUE")
        if name == "modify":
            c.add_argument("--remove-prop", action="append", default=[], metavar="NAME")
        else:
            c.add_argument("--parents", action="store_true", help="create missing collections")

    d = ops.add_parser("delete", help="delete an item or a collection")
    d.add_argument("path")
    for name in ("move", "copy"):
        m = ops.add_parser(name, help=f"{name} an item or a collection")
        m.add_argument("path")
        m.add_argument("destination")
        m.add_argument("--no-overwrite", action="store_true")
    r = ops.add_parser(
        "recreate",
        help="delete a collection and create it again (old collblobs get 475); "
        "items are restored with their repl-uids and tags unless --empty or --keep",
    )
    r.add_argument("path")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--empty", action="store_true", help="restore no item")
    g.add_argument("--keep", action="append", metavar="NAME", help="restore only these items")
    s = ops.add_parser("settings", help="show or change runtime settings")
    s.add_argument("--page-cap", type=int, metavar="N", help="manifest page cap (0: none)")
    s.add_argument("--transform", choices=("off", "crlf"))


def _request_args(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    if args.op == "show":
        if args.path:
            from urllib.parse import quote

            return "GET", f"export?path={quote(args.path)}", None
        return "GET", "tree", None
    if args.op == "settings":
        body: dict[str, Any] = {}
        if args.page_cap is not None:
            body["page_cap"] = args.page_cap
        if args.transform is not None:
            body["transform"] = args.transform
        return ("POST", "settings", body) if body else ("GET", "settings", None)
    body = {"path": args.path}
    if args.op in ("create", "modify"):
        if args.text is not None:
            body["content"] = args.text
        elif args.file is not None:
            with open(args.file, "rb") as f:
                body["content_base64"] = base64.b64encode(f.read()).decode()
        elif args.subject is not None:
            body.update(subject=args.subject, body=args.body)
        if args.type:
            body["content_type"] = args.type
        props = {}
        for p in args.prop:
            k, eq, v = p.partition("=")
            if not eq:
                raise AdminError(f"--prop {p!r}: expected NAME=VALUE")
            props[k] = v
        if props:
            body["props"] = props
        if args.op == "modify" and args.remove_prop:
            body["remove_props"] = args.remove_prop
        if args.op == "create" and args.parents:
            body["parents"] = True
    elif args.op in ("move", "copy"):
        body.update(destination=args.destination, overwrite=not args.no_overwrite)
    elif args.op == "recreate":
        body["keep"] = False if args.empty else (args.keep or True)
    return "POST", args.op, body


def _print(op: str, doc: Any) -> None:
    def line(d: dict[str, Any]) -> str:
        kind = "collection" if d["collection"] else f"{d.get('size', 0)} bytes"
        return f"{d['path']}  {d['uid']}  {d['tag']}  ({kind})"

    if op == "show" and "resources" in doc:
        for d in doc["resources"]:
            print(line(d))
    elif op == "show":
        print(line(doc["collection"]))
        for d in doc["items"]:
            print("  " + line(d))
    elif op == "settings":
        print(", ".join(f"{k}={v}" for k, v in doc.items()))
    else:
        for key, val in doc.items():
            if isinstance(val, dict) and "path" in val:
                print(f"{key}: {line(val) if 'tag' in val else val['path']}")
            elif isinstance(val, list):
                for d in val:
                    print(f"  {key}: {line(d)}")


def run(args: argparse.Namespace) -> int:
    """``repltap admin``."""
    try:
        method, op, body = _request_args(args)
        doc = AdminClient(args.url).call(method, op, body)
    except (AdminError, OSError) as e:
        print(f"repltap admin: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=1, ensure_ascii=False))
    else:
        _print(args.op, doc)
    return 0
