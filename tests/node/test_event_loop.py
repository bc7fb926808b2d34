"""`edge-node run` runs on uvloop where it is installed (a dependency on Linux) and on asyncio's own loop
otherwise; the whole e2e suite exercises the node on the loop chosen here."""

from __future__ import annotations

import asyncio
import builtins
import importlib.util

import pytest

from node import cli


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed here")
def test_the_node_runs_on_uvloop_when_it_is_installed() -> None:
    import uvloop

    factory = cli._loop_factory()
    assert factory is uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)


def test_without_uvloop_asyncio_chooses_its_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: object, **kwargs: object) -> object:
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert cli._loop_factory() is None
