"""The Suite: repltap's addons behind one entry of mitmproxy's chain, through a real addon
manager (taddons), and the things the parts must keep of being addons of their own."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from mitmproxy import command, ctx, exceptions
from mitmproxy.proxy.layers.http import HttpResponseHook
from mitmproxy.test import taddons, tflow

from repltap.mitm.decode import Decode
from repltap.mitm.suite import Suite, may_wait
from repltap.mitm.track import Track


class Part:
    def __init__(self, name: str, seen: list[str], fail: str = "") -> None:
        self.name, self.seen, self.fail = name, seen, fail

    def load(self, loader: Any) -> None:
        loader.add_option(f"{self.name}_opt", int, 1, "an option of a part")

    def configure(self, updated: set[str]) -> None:
        if f"{self.name}_opt" in updated:
            if ctx.options.__getattr__(f"{self.name}_opt") < 0:
                raise exceptions.OptionsError(f"{self.name}_opt must not be negative")
            self.seen.append(f"{self.name}.configure")

    def request(self, flow: Any) -> None:
        self.seen.append(f"{self.name}.request")
        if self.fail == "request":
            raise RuntimeError("a bug in request")

    async def response(self, flow: Any) -> None:
        self.seen.append(f"{self.name}.response")
        if self.fail == "response":
            raise RuntimeError("a bug in response")

    def done(self) -> None:
        self.seen.append(f"{self.name}.done")
        if self.fail == "done":
            raise RuntimeError("a bug in done")

    @command.command("part.hello")
    def hello(self) -> str:
        return f"hello from {self.name}"


async def test_parts_see_each_event_in_order_and_a_failing_part_stops_no_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    a, b = Part("a", seen, fail="request"), Part("b", seen, fail="response")
    c = Part("c", seen, fail="done")
    suite = Suite(a, b, c)
    caplog.set_level(logging.ERROR)
    with taddons.context(suite) as tctx:
        seen.clear()
        f = tflow.tflow(resp=True)
        await tctx.cycle(suite, f)
        requests = ["a.request", "b.request", "c.request"]
        assert seen == [*requests, "a.response", "b.response", "c.response"]
        failed = [r.getMessage() for r in caplog.records]
        assert failed == [
            "repltap: Part.request failed; the other parts go on",
            "repltap: Part.response failed; the other parts go on",
        ]
        seen.clear()
        tctx.master.addons.remove(suite)  # unloaded: each part's done, c's failure logged
    assert seen == ["a.done", "b.done", "c.done"]
    assert "repltap: Part.done failed; the other parts go on" in caplog.messages


async def test_options_commands_and_names_of_the_parts() -> None:
    seen: list[str] = []
    a = Part("a", seen)
    suite = Suite(a, Track())
    with taddons.context(suite) as tctx:
        assert tctx.master.addons.get("a") is a
        assert tctx.master.addons.get("track") is suite.parts[1]
        assert tctx.master.addons.get("repltap") is suite
        assert tctx.master.commands.call("part.hello") == "hello from a"
        assert tctx.master.commands.call("repl.anomalies") == "no anomalies"
        seen.clear()
        tctx.options.a_opt = 5
        assert seen == ["a.configure"]
        with pytest.raises(exceptions.OptionsError, match="a_opt must not be negative"):
            tctx.options.a_opt = -1
        assert tctx.options.a_opt == 5  # refused, as an addon of its own would have it

        # Once the suite is removed (a script reloaded), its names are free again; a name taken
        # already is refused, as mitmproxy refuses it for an addon of its own.
        tctx.master.addons.remove(suite)
        assert tctx.master.addons.get("a") is None and tctx.master.addons.get("track") is None
        again = Part("a", [])
        tctx.master.addons.add(Suite(again))
        assert tctx.master.addons.get("a") is again
        tctx.master.addons.remove(tctx.master.addons.get("repltap"))
        tctx.master.addons.add(Part("b", []))
        with pytest.raises(exceptions.AddonManagerError, match="'b' already exists"):
            tctx.master.addons.add(Suite(Part("a", []), Part("b", [])))
        assert tctx.master.addons.get("a") is None  # nothing of the refused suite stays


async def test_the_suite_decodes_as_its_parts_do() -> None:
    decode, track = Decode(), Track()
    suite = Suite(decode, track)
    with taddons.context(suite) as tctx:
        f = tflow.tflow(resp=True)
        f.request.method = "PUT"
        f.request.headers["If"] = "(<rt:1>)"
        f.response.headers["ResourceTag"] = "<rt:2>"
        await tctx.cycle(suite, f)
    s = f.metadata["repl"]
    assert s["kind"] == "upload" and s["response"]["tag"] == "rt:2"
    assert s["tag_events"] == 1  # the tracker saw it: the tag event went to the sinks


class Refuses:
    name = "refuses"

    def load(self, loader: Any) -> None:
        raise exceptions.OptionsError("this part cannot be loaded")


async def test_a_part_that_fails_to_load_leaves_no_name_behind() -> None:
    with taddons.context() as tctx:
        with pytest.raises(exceptions.OptionsError):
            tctx.master.addons.add(Suite(Part("a", []), Refuses()))
        assert tctx.master.addons.get("a") is None  # a suite loaded again is not refused
        again = Part("a", [])
        tctx.master.addons.add(Suite(again))
        assert tctx.master.addons.get("a") is again


def test_the_suite_passes_flow_hooks_on_whatever_was_imported_first() -> None:
    import subprocess
    import sys

    code = (
        "from repltap.mitm.suite import Suite\n"
        "class P:\n"
        "    def request(self, f): pass\n"
        "    def response(self, f): pass\n"
        "s = Suite(P())\n"
        "print(callable(getattr(s, 'request', None)), callable(getattr(s, 'response', None)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


class Waiting:
    """A part whose hook hands back a coroutine only when it has something to wait for, as
    repltap's Decode, Cache and Faults do."""

    def __init__(self, name: str, seen: list[str], wait: bool, fail: bool = False) -> None:
        self.name, self.seen, self.wait, self.fail = name, seen, wait, fail

    @may_wait
    def response(self, flow: Any) -> Any:
        if not self.wait:
            self.seen.append(f"{self.name} at once")
            return None
        return self._later()

    async def _later(self) -> None:
        await asyncio.sleep(0.01)  # other tasks run meanwhile; the next parts must wait
        self.seen.append(f"{self.name} after waiting")
        if self.fail:
            raise RuntimeError("a bug after waiting")


async def test_a_part_that_waits_holds_the_parts_after_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    parts = [
        Waiting("a", seen, wait=False),
        Waiting("b", seen, wait=True),
        Waiting("c", seen, wait=False),
        Waiting("d", seen, wait=True, fail=True),
        Waiting("e", seen, wait=True),
        Waiting("f", seen, wait=False),
    ]
    suite = Suite(*parts)
    caplog.set_level(logging.ERROR)
    with taddons.context(suite) as tctx:
        f = tflow.tflow(resp=True)
        await tctx.cycle(suite, f)
        assert seen == [
            "a at once",
            "b after waiting",
            "c at once",
            "d after waiting",
            "e after waiting",
            "f at once",
        ]
        assert caplog.messages == ["repltap: Waiting.response failed; the other parts go on"]
        # Nobody waits: the Suite's hook waits for nothing either (no coroutine for mitmproxy).
        for p in parts:
            p.wait = False
        seen.clear()
        assert suite.response(f) is None  # type: ignore[attr-defined]
        assert seen == [f"{p.name} at once" for p in parts]
        # Where mitmproxy cannot wait (a flow event sent synchronously, as script.run does), it
        # refuses the hook loudly, as it refuses any async hook, rather than call it and drop
        # the parts after a waiting one.
        with pytest.raises(exceptions.AddonManagerError, match="cannot be called from sync"):
            tctx.master.addons.invoke_addon_sync(suite, HttpResponseHook(f))


def test_a_part_whose_done_waits_is_refused() -> None:
    """mitmproxy unloads a script (on a reload) by calling done() without waiting: a part that
    waited there would never finish, and the parts after it would not be called."""

    class Closer:
        async def done(self) -> None:
            pass

    class LateCloser:
        @may_wait
        def done(self) -> None:
            pass

    with pytest.raises(TypeError, match=r"Closer\.done, LateCloser\.done: done\(\) must not wait"):
        Suite(Part("a", []), Closer(), LateCloser())
    Suite(Part("a", []))  # a plain done() is fine
