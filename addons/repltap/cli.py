"""The ``repltap`` command: one entry point, one sub-command per job.

Sub-commands are listed in ``COMMANDS`` as (module, help) pairs, each module offering
``add_arguments(parser)`` and ``run(args) -> int``. Modules should import heavy dependencies
(mitmproxy) inside ``run`` so that building the command line stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "report": (".report", "summarise an event log or recording: terminal summary, --html page"),
    "serve": (".sim.server", "run the reference Exchange WebDAV replication server"),
    "sync": (".sim.client", "run one replication round of the reference client"),
    "admin": (".sim.admin", "change a running reference server's data (create, move, ...)"),
    "replay-client": (".replayclient", "re-drive a recorded client against a live server"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``repltap`` command line; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="repltap", description="WebDAV replication made visible, checkable and testable."
    )
    parser.add_argument("--version", action="version", version=f"repltap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module, __package__)
        mod.add_arguments(p)
        modules[name] = mod
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
