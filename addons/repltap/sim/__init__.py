"""The reference Exchange WebDAV replication server and sync client, and the demo.

The server (``server``, ``store``, ``sql``, ``collblob``, ``render``, ``seed``, ``admin``) and the
client (``client``) are independent implementations of ../shared/spec/exchange-repl.md so each can
catch the other's mistakes: the client imports nothing from the server's modules (a test checks
it); both may use ``repltap.protocol``. This file imports nothing on purpose.
"""
