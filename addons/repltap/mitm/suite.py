"""repltap's addons as one entry in mitmproxy's addon chain.

mitmproxy sends every event to every addon in its chain: four events a flow (request headers,
request, response headers, response), each followed by an ``update``. For each addon and event it
enters an error guard, makes a coroutine and walks a generator, whether or not the addon has the
hook; sub-addons (an ``addons`` attribute) are walked on every event too. With repltap's seven
addons in the chain, that walk cost a plain GET about as much as all of their own work on it
(``python -m bench.dispatch`` measures it). The Suite is one addon: mitmproxy calls it once an
event, and it calls the parts that have the hook, in order.

What the parts keep of being addons of their own:
- options, commands and ``ctx.master.addons.get(name)`` (the Suite loads them, collects their
  commands and names them when it is loaded; a name taken already is refused as mitmproxy does);
- ``configure`` in order, its errors left to mitmproxy (a refused option stays refused);
- every other hook guarded on its own: a part that raises is logged, and the parts after it
  still see the event. This is a change: under ``mitmdump -s``, the parts were sub-addons of
  mitmproxy's script loader, guarded as one, and a part that raised ended the event for the
  parts after it (a flow then not tracked, logged or recorded).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, exceptions, hooks

# hooks.all_hooks fills as the modules that define hooks are imported; the HTTP ones live in the
# proxy layers, which mitmdump has imported by the time it loads a script, but a program that
# builds a Suite first must not get one that passes no flow hook on.
from mitmproxy.proxy import layers, server_hooks  # noqa: F401

logger = logging.getLogger(__name__)

Call = tuple[str, Callable[..., Any], bool]  # "Part.hook", the bound hook, whether it may wait


def may_wait[F: Callable[..., Any]](hook: F) -> F:
    """Mark a part's hook that is a plain function but may hand back a coroutine (when it has
    something to wait for): to mitmproxy and the Suite it is then a coroutine function, which
    mitmproxy awaits the result of, if any, and never calls where it cannot wait."""
    return inspect.markcoroutinefunction(hook)


class Suite:
    """The parts, in order, behind one addon of mitmproxy's chain."""

    name = "repltap"

    def __init__(self, *parts: object) -> None:
        self.parts = list(parts)
        self.names: list[str] = []  # what the Suite added to mitmproxy's addon names
        self._parts_done: Callable[[], Any] = lambda: None
        for hook in hooks.all_hooks:
            calls = [
                (f"{type(p).__name__}.{hook}", fn, inspect.iscoroutinefunction(fn))
                for p in parts
                if callable(fn := getattr(p, hook, None))
            ]
            if not calls or hook in ("load", "configure"):
                continue
            if hook == "done":
                # mitmproxy calls done() without waiting when it unloads a script (a reload):
                # a part that waits there would be cut short, and the parts after it skipped.
                waiting = [where for where, _, waits in calls if waits]
                if waiting:
                    raise TypeError(f"{', '.join(waiting)}: done() must not wait")
                self._parts_done = _dispatch(calls)  # done() frees the names after them
            else:
                # An instance attribute is a hook to mitmproxy as a method is: it looks hooks
                # up with getattr() on each event.
                setattr(self, hook, _dispatch(calls))

    def load(self, loader: Any) -> None:
        addons = loader.master.addons
        names = [getattr(part, "name", type(part).__name__.lower()) for part in self.parts]
        for name in names:  # all checked first: a refused suite leaves no name behind
            if name in addons.lookup or names.count(name) > 1:
                raise exceptions.AddonManagerError(f"An addon called '{name}' already exists.")
        for part in self.parts:  # a part that fails to load leaves no name behind either
            if callable(getattr(part, "load", None)):
                part.load(loader)  # type: ignore[attr-defined]
        for name, part in zip(names, self.parts, strict=True):
            addons.lookup[name] = part
            self.names.append(name)
            loader.master.commands.collect_commands(part)

    def configure(self, updated: set[str]) -> None:
        for part in self.parts:
            if callable(getattr(part, "configure", None)):
                part.configure(updated)  # type: ignore[attr-defined]

    def done(self) -> None:
        self._parts_done()
        # Unloaded (the script reloaded, say): the names go, so that the new suite can take them.
        try:
            lookup = ctx.master.addons.lookup
        except AttributeError:  # no master: a bare unit test
            lookup = {}
        for name in self.names:
            if lookup.get(name) in self.parts:
                del lookup[name]
        self.names = []


def _dispatch(calls: list[Call]) -> Callable[..., Any]:
    """One hook of the Suite: each part's in turn, each under its own guard.

    It makes no coroutine unless a part hands one back: most events need no waiting, and a
    coroutine made and awaited for each part and event (three events a flow have async parts)
    was a measurable part of repltap's cost on a plain GET. A part's hook may be an ``async
    def``, or a plain function marked with :func:`may_wait` that hands back a coroutine only
    when it has something to wait for; the Suite then returns a coroutine that awaits it and
    calls the parts after it, which mitmproxy awaits in turn. The parts run in order either
    way.
    """
    parts = [(where, fn) for where, fn, _ in calls]

    def call_from(start: int, args: tuple[Any, ...]) -> tuple[int, Any] | None:
        """Call the parts from ``start`` on, each guarded, up to the first that hands back an
        awaitable: (its index, the awaitable), or None when all were called."""
        for i in range(start, len(parts)):
            where, fn = parts[i]
            try:
                res = fn(*args)
            except Exception:
                logger.exception("repltap: %s failed; the other parts go on", where)
                continue
            if res is not None and inspect.isawaitable(res):
                return i, res
        return None

    def run(*args: Any) -> Any:
        waiting = call_from(0, args)
        return None if waiting is None else _rest(waiting, args)

    async def _rest(waiting: tuple[int, Any] | None, args: tuple[Any, ...]) -> None:
        while waiting is not None:
            i, pending = waiting
            try:
                await pending
            except Exception:
                logger.exception("repltap: %s failed; the other parts go on", parts[i][0])
            waiting = call_from(i + 1, args)

    if any(may_wait for _, _, may_wait in calls):
        # Said to be a coroutine function, as the parts' hooks it calls are: mitmproxy awaits
        # what it returns, if anything, and refuses to call it where it cannot wait (a flow
        # event sent synchronously, as ``script.run`` does), loudly, instead of the parts after
        # a waiting one silently never seeing the event.
        inspect.markcoroutinefunction(run)
    return run
