"""Helpers of the harmonizer tests (no tests here): synthetic ADT messages and staging them in a real store."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from node.model import StageRequest
from node.store.store import Store


def adt(control_id: str, *, trigger: str = "A01", mrn: str = "", name: str = "Doe^John", extra: str = "",
        app: str = "KIS", facility: str = "SITE") -> bytes:
    """A synthetic ADT with MSH, EVN and PID (no real patient data); `extra` segments appended."""
    segments = [f"MSH|^~\\&|{app}|{facility}|EDGE|NODE|20240102030405||ADT^{trigger}^ADT_A01|{control_id}|P|2.5",
                f"EVN|{trigger}|20240102030405", f"PID|1||{mrn or control_id}^^^SITE^PI||{name}||19700101|M"]
    if extra:
        segments.append(extra)
    return ("\r".join(segments) + "\r").encode("ascii")


def stage_request(raw: bytes, *, feed: str = "adt", charset: str = "ascii") -> StageRequest:
    """A StageRequest for `raw` with the header columns the intake would store."""
    fields = raw.split(b"\r", 1)[0].decode("latin-1").split("|")
    fields += [""] * 12  # fields[n] is MSH-(n+1)
    return StageRequest(feed=feed, raw=raw, sha256=hashlib.sha256(raw).digest(), received_at=time.time(),
                        control_id=fields[9], sending_app=fields[2], sending_facility=fields[3],
                        message_type=fields[8], version=fields[11], charset=charset)


def stage(db: Path, messages: Iterable[bytes | StageRequest], *, feed: str = "adt") -> list[int]:
    """Stage `messages` in the store at `db` (created and migrated if missing); their row ids in order."""
    requests = [m if isinstance(m, StageRequest) else stage_request(m, feed=feed) for m in messages]
    store = Store.open(db)
    try:
        return [outcome.message_id for outcome in store.stage_batch(requests)]
    finally:
        store.close()


def query(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one read query on its own connection (sees everything committed)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def states(db: Path) -> dict[int, str]:
    return dict(query(db, "SELECT id, state FROM inbound"))


def counts(db: Path) -> dict[str, int]:
    return dict(query(db, "SELECT state, count(*) FROM inbound GROUP BY state"))


def outbound_keys(db: Path) -> list[tuple[int, str, str]]:
    """(inbound_id, resource_type, resource_id) of every outbound row, in id order."""
    return [tuple(row) for row in query(db, "SELECT inbound_id, resource_type, resource_id FROM outbound ORDER BY id")]
