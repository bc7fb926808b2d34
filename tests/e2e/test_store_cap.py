"""Store-and-forward safety of a real node (build_node from real settings, real MLLP over TCP, real files):
intake is refused with AR / ERR 207 BEFORE the disk is full, nothing refused is stored, everything else
keeps writing, and intake resumes by itself once space is back.

- the cap ([store] max_bytes = 2 MiB): AA until database + WAL reach it, then AR; retention of pushed,
  aged rows shrinks the file below the cap and the same node answers AA again (a resend of a purged
  message is still a duplicate);
- the low-water mark ([store] min_free_bytes = 8 MiB) on a real 16 MiB tmpfs (skipped where mounting is
  not permitted): a filler file leaves less than 8 MiB free -> AR while the disk still has space; the
  filler deleted -> AA again, no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from connectors.mllp.ack import AckCode, ParsedAck
from node.app import build_node
from node.maintenance import RetentionJob
from node.settings import NodeSettings
from node.store.store import Store
from node.supervisor import Node
from tests.mllp.conftest import FEED, RawConnection, eventually, hl7_message
from tests.store.test_retention_support import DAY, connection, harmonized, inbound_rows, set_outbound, store_bytes

from .test_durability_support import mounted_tmpfs

MiB = 1024 * 1024
NOTE = "OBX|1|TX|NOTE||" + "Befund " * 2300  # ~16 KB per message
MAX_MESSAGES = 400


def settings(db: Path, **store: Any) -> NodeSettings:
    return NodeSettings(
        node={"site_id": "test-site", "shutdown_timeout_s": 10},
        store={"path": db, **store},
        central={"url": f"file://{db.parent / 'outbox'}"},
        metrics={"enabled": True, "port": 0},
        harmonize={"enabled": False},
        feeds=[{"name": FEED, "type": "mllp", "host": "127.0.0.1", "port": 0}],
    )


class Running:
    def __init__(self, node: Node, registry: CollectorRegistry, db: Path, connection: RawConnection) -> None:
        self.node = node
        self.registry = registry
        self.db = db
        self.connection = connection
        self.seq = 0
        self.acked: dict[str, bytes] = {}
        self.refused: dict[str, bytes] = {}

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    async def send(self, control_id: str, payload: bytes) -> ParsedAck:
        [ack] = await self.connection.exchange(payload)
        assert ack.control_id == control_id
        if ack.code == AckCode.AA:
            self.acked[control_id] = payload
            self.refused.pop(control_id, None)
        else:
            assert (ack.code, ack.error_code, ack.text) == (AckCode.AR, 207, "message store full"), ack
            assert control_id not in self.acked
            self.refused[control_id] = payload
        return ack

    async def send_new(self) -> ParsedAck:
        self.seq += 1
        control_id = f"CAP-{self.seq}"
        return await self.send(control_id, hl7_message(control_id, extra=NOTE))

    async def readyz(self) -> tuple[int, str]:
        assert self.node.endpoint is not None
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{self.node.endpoint.port}/readyz") as response:
            return response.status, await response.text()

    def stored(self) -> set[str]:
        with connection(self.db) as conn:
            return {row["control_id"] for row in inbound_rows(conn).values()}


@contextlib.asynccontextmanager
async def running(db: Path, **store: Any) -> AsyncIterator[Running]:
    registry = CollectorRegistry()
    node = build_node(settings(db, **store), registry)
    await node.startup()
    raw = None
    try:
        port = node.connectors[0].port  # type: ignore[attr-defined]
        raw = await RawConnection.open(port)
        yield Running(node, registry, db, raw)
    finally:
        if raw is not None:
            await raw.close()
        await node.shutdown()


async def outbound_write_while_refusing(node: Node) -> None:
    """What the push stage does while intake is refused: a state change through the same writer."""

    def push(store: Store) -> int:
        conn = store._connection()
        conn.execute("BEGIN IMMEDIATE")
        changed = conn.execute("UPDATE inbound SET updated_at = updated_at WHERE id = 1").rowcount
        conn.execute("COMMIT")
        return changed

    assert await asyncio.wrap_future(node.writer.call(push)) == 1


async def test_the_cap_refuses_with_ar_207_stores_nothing_and_retention_makes_room(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    async with running(db, max_bytes=2 * MiB, min_free_bytes=0) as node:
        assert node.metric("edge_node_store_cap_bytes") == 2 * MiB
        while (await node.send_new()).code == AckCode.AA:
            assert node.seq < MAX_MESSAGES, "the cap never refused"
        size_at_refusal = store_bytes(db)
        print(f"\n[cap] {len(node.acked)} messages AA, then AR at {size_at_refusal} bytes (cap {2 * MiB})")
        assert len(node.acked) >= 20
        assert 2 * MiB <= size_at_refusal < 2 * MiB + 512 * 1024  # overshoot: one measurement window at most

        for _ in range(3):  # more new messages and a resend: all refused, none stored
            assert (await node.send_new()).code == AckCode.AR
        first_refused = next(iter(node.refused))
        assert (await node.send(first_refused, node.refused[first_refused])).code == AckCode.AR
        assert not node.stored() & set(node.refused)
        assert node.stored() == set(node.acked)
        assert node.metric("edge_node_store_refusing", reason="cap") == 1
        assert node.metric("edge_node_store_refusing", reason="low_space") == 0
        assert (node.metric("edge_node_store_refused_total", reason="cap") or 0) >= 5
        assert node.metric("edge_node_store_commit_failures_total", reason="full") is None  # no failed commit
        status, body = await node.readyz()  # alive and draining: still ready, and says why it refuses
        assert status == 200 and body.startswith("ok: refusing new messages: store cap reached"), body
        await outbound_write_while_refusing(node.node)

        # Harmonized and pushed (what the harmonizer and the push stage write), then 30 days pass: the node's
        # retention job (its clock moved on) purges it all and gives the space back.
        now = time.time()
        with connection(db) as conn:
            for id_ in inbound_rows(conn):
                harmonized(conn, id_, ['{"resourceType":"Observation","id":"x"}'], at=now, feed=FEED)
            set_outbound(conn, "pushed", at=now)
        assert isinstance(node.node.maintenance, RetentionJob)
        job = RetentionJob(node.node.writer, retention_days=node.node.maintenance.retention_days,
                           interval_s=3600, space_guard=node.node.writer.space_guard,
                           clock=lambda: now + 30 * DAY)
        report = await asyncio.to_thread(job.run_once)
        print(f"[cap] retention purged {report.inbound_purged} messages: {report.bytes_before} -> "
              f"{report.bytes_after} bytes")
        assert report.inbound_purged == len(node.acked)
        assert store_bytes(db) < MiB

        # The same process accepts again: the refused messages, new ones, and a resend of a purged one.
        refused = dict(node.refused)
        for control_id, payload in refused.items():
            assert (await node.send(control_id, payload)).code == AckCode.AA
        assert (await node.send_new()).code == AckCode.AA
        purged_id = "CAP-1"
        assert (await node.send(purged_id, node.acked[purged_id])).code == AckCode.AA  # the stored ACK
        assert node.metric("edge_node_messages_duplicate_total", feed=FEED) == 1
        assert node.metric("edge_node_store_refusing", reason="cap") == 0
        assert (await node.readyz()) == (200, "ok\n")
        assert node.stored() == set(node.acked)


async def test_the_low_water_mark_refuses_before_the_disk_is_full_and_recovers_without_restart(
        tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "mnt", "16m") as mnt:
        if isinstance(mnt, str):
            pytest.skip(mnt)
        db = mnt / "node.db"
        filler = mnt / "filler"
        async with running(db, min_free_bytes=8 * MiB) as node:
            for _ in range(3):
                assert (await node.send_new()).code == AckCode.AA
            free = os.statvfs(mnt)
            leave = 6 * MiB  # below the mark, far from full
            with open(filler, "wb") as out:
                out.write(bytes(free.f_bavail * free.f_frsize - leave))
            while (await node.send_new()).code == AckCode.AA:  # the last measurement is at most 0.5 s old
                assert node.seq < 100
            free_when_refused = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
            print(f"\n[low water] AR with {free_when_refused} bytes still free (mark {8 * MiB})")
            assert free_when_refused > 4 * MiB  # refused long before the disk is full
            assert node.metric("edge_node_store_refusing", reason="low_space") == 1
            assert node.metric("edge_node_store_refusing", reason="cap") == 0
            assert (node.metric("edge_node_store_free_bytes") or 0) < 8 * MiB
            assert node.metric("edge_node_store_cap_bytes") is None  # no cap configured
            status, body = await node.readyz()
            assert status == 200 and "low disk space" in body, body
            await outbound_write_while_refusing(node.node)  # harmonize/push writes go on
            assert not node.stored() & set(node.refused)

            filler.unlink()  # space returns: the same process accepts again within a measurement window
            control_id, payload = next(iter(node.refused.items()))
            answers: list[str] = []

            async def accepted() -> bool:
                answers.append((await node.send(control_id, payload)).code.value)
                return answers[-1] == "AA"

            async def until_accepted() -> None:
                while not await accepted():
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(until_accepted(), timeout=5)
            assert (await node.send_new()).code == AckCode.AA
            await eventually(lambda: node.metric("edge_node_store_refusing", reason="low_space") == 0)
            assert node.stored() == set(node.acked)
