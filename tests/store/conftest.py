"""Fixtures of the store tests: real SQLite files under tmp_path, requests built from fake payloads."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.model import MessageState, StageRequest
from node.store.store import Store
from node.store.writer import GroupCommitWriter

MakeRequest = Callable[..., StageRequest]

_counter = itertools.count(1)


def build_request(
    control_id: str | None = None,
    *,
    feed: str = "adt",
    raw: bytes | None = None,
    ack: bytes | None = b"MSH|^~\\&|EDGE|SITE\rMSA|AA|",
    state: MessageState = MessageState.STAGED,
    error: str | None = None,
    sending_app: str = "LAB",
    sending_facility: str = "WARD",
    source: str | None = "127.0.0.1:40000",
) -> StageRequest:
    """A StageRequest with a synthetic payload (no real patient data) and its true sha256."""
    control_id = control_id if control_id is not None else f"CTRL{next(_counter)}"
    if raw is None:
        raw = f"MSH|^~\\&|{sending_app}|{sending_facility}|||20240101||ADT^A01|{control_id}|P|2.5\r".encode()
    return StageRequest(
        feed=feed,
        raw=raw,
        sha256=hashlib.sha256(raw).digest(),
        received_at=1_700_000_000.5,
        control_id=control_id,
        sending_app=sending_app,
        sending_facility=sending_facility,
        message_type="ADT^A01",
        version="2.5",
        charset="ASCII",
        state=state,
        error=error,
        ack=ack,
        source=source,
    )


@pytest.fixture
def make_request() -> MakeRequest:
    return build_request


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "store.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    opened = Store.open(db_path)
    yield opened
    opened.close()


@pytest.fixture
def writer(db_path: Path) -> Iterator[GroupCommitWriter]:
    started = GroupCommitWriter(db_path)
    started.start()
    yield started
    started.stop()
