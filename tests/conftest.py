"""Fixtures and helpers shared by the whole suite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus"


def corpus_dir(*parts: str) -> Path:
    """A folder of ../shared/corpus, or skip the test (with a message) on a clone without it."""
    path = CORPUS.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"corpus not available at {path} (clone without ../shared)")
    return path


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    """Poll `predicate` until it returns a truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


# Hypothesis: no per-example deadline (CI machines are shared and slow at times); a fixed number of
# examples keeps the suite's run time predictable.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("edge-node", deadline=None, max_examples=200)
_hypothesis_settings.load_profile("edge-node")


async def eventually(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> object:
    """The asyncio twin of `wait_until` (which would block an in-process node's loop): poll `predicate`
    without blocking the loop until truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate}")
        await asyncio.sleep(interval)
