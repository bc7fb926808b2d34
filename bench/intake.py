"""Intake: MLLP messages/s and ACK latency of a real `edge-node run`, against the SQLite ceiling of the
same disk, measured in the same run.

Scenarios (each MLLP one against a fresh node and a fresh store):

- mllp 1/4/16 senders: closed loop, stop-and-wait senders in a separate process (bench.load).
- mllp paced 1000/s: open loop, 4 connections each sending every 4 ms on a fixed schedule; latency from
  the scheduled send time.
- sqlite ceiling 1 producer / 16 producers: bare sqlite3, see bench.ceiling.

Targets (the issue): one sender >= 3,000 msg/s; 16 senders >= 60 % of the 16-producer ceiling; p99 ACK
<= 10 ms at 1,000 msg/s offered. A missed target shows as `NO` in the pass column; only a scenario that
fails to run (node not ready, ACK missing or not AA, rows missing from the store) makes the bench fail.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import ceiling
from bench.env import seconds, warmup
from bench.env import slug as _slug
from bench.env import wanted as _wanted
from bench.load import _percentile, machine_busy_seconds
from bench.nodeproc import FEED, REPO, NodeProcess, mllp_config
from bench.table import Row

TITLE = "intake (MLLP -> store, ACK after commit)"

ONE_SENDER_TARGET = 3000.0
SIXTEEN_SENDERS_SHARE = 0.60
PACED_RATE = 1000.0
PACED_CONNECTIONS = 4
PACED_P99_MS = 10.0
CEILING_PRODUCERS = 16










def _ms(ordered: list[float], q: float) -> float | None:
    return _percentile(ordered, q) * 1e3 if ordered else None


# -- ceiling ----------------------------------------------------------------------------------------------

def _ceiling(workdir: Path, name: str, measure: Callable[[Path], ceiling.Result]) -> Row:
    row = Row(name)
    directory = workdir / _slug(name)
    directory.mkdir(parents=True)
    cpu_before, machine_before, wall_before = time.process_time(), machine_busy_seconds(), time.perf_counter()
    try:
        result = measure(directory / "ceiling.db")
        wall = time.perf_counter() - wall_before
        own = (time.process_time() - cpu_before) / wall
        other = max(0.0, (machine_busy_seconds() - machine_before) / wall - own)
    except Exception as exc:
        row.error = f"{type(exc).__name__}: {exc}"
        return row
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    ordered = sorted(result.latencies)
    row.rate = result.rate
    row.p50_ms, row.p99_ms = _ms(ordered, 50), _ms(ordered, 99)
    row.max_ms = ordered[-1] * 1e3 if ordered else None
    row.other_cpu = other
    row.notes = [f"{result.rows:,} rows committed in {result.batches:,} transactions", *result.notes,
                 f"CPU (100 % = one core): bench {own:.0%}, other processes {other:.0%}"]
    return row


# -- MLLP -------------------------------------------------------------------------------------------------

def _mllp(workdir: Path, name: str, senders: int, rate: float = 0.0) -> Row:
    row = Row(name)
    directory = workdir / _slug(name)
    directory.mkdir(parents=True)
    try:
        _run_mllp(directory, row, senders, rate)
    except Exception as exc:
        row.error = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return row


def _run_mllp(directory: Path, row: Row, senders: int, rate: float) -> None:
    node = NodeProcess(directory, mllp_config("node.db"))
    try:
        port = node.ports[FEED]
        command = [sys.executable, "-m", "bench.load", "--port", str(port), "--senders", str(senders),
                   "--rate", str(rate), "--warmup", str(warmup()), "--seconds", str(seconds()),
                   "--node-pid", str(node.pid)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        load = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=warmup() + seconds() + 60)
    finally:
        exit_code = node.stop()
    try:
        result = json.loads(load.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"load generator failed (exit {load.returncode}): {load.stderr.strip()[-500:]}") from None
    if load.returncode != 0 or result["errors"]:
        raise RuntimeError("load generator: " + "; ".join(result["errors"] or [load.stderr.strip()[-300:]]))
    if exit_code != 0:
        raise RuntimeError(f"edge-node exited with status {exit_code}:\n{node.tail()}")
    with sqlite3.connect(f"{(directory / 'node.db').as_uri()}?mode=ro", uri=True) as conn:
        stored = conn.execute("SELECT count(*) FROM inbound").fetchone()[0]
    if stored != result["acked"]:
        raise RuntimeError(f"{result['acked']} messages ACKed but {stored} rows in the store")
    row.rate = result["rate"]
    row.p50_ms, row.p99_ms, row.max_ms = result["p50_ms"], result["p99_ms"], result["max_ms"]
    problems = [line for line in node.log_lines if " WARNING " in line or " ERROR " in line]
    row.other_cpu = max(0.0, result["machine_cpu"] - result["node_cpu"] - result["client_cpu"])
    row.notes.append(
        f"{result['measured']:,} ACKs measured, {result['acked']:,} rows stored, "
        f"{result['message_bytes']:,}-byte messages; CPU (100 % = one core): node {result['node_cpu']:.0%}, "
        f"senders {result['client_cpu']:.0%}, other processes {row.other_cpu:.0%}")
    row.notes += [f"node log: {line}" for line in problems[:3]]


# -- the section ------------------------------------------------------------------------------------------

def run(workdir: Path) -> list[Row]:
    """Every intake scenario, ceilings first (nothing else running then); rows in table order."""
    w, s = warmup(), seconds()
    rows: dict[str, Row] = {}

    def scenario(name: str, measure: Callable[[], Row]) -> None:
        if _wanted(name):
            print(f"  running {name} ...", file=sys.stderr, flush=True)
            rows[name] = measure()

    # Each MLLP figure runs right after the ceiling it is compared with: on a shared machine the disk
    # and the CPUs change from minute to minute, and a ratio of neighbours is the fairest one.
    c1, c16 = "sqlite ceiling 1 producer", f"sqlite ceiling {CEILING_PRODUCERS} producers"
    scenario(c1, lambda: _ceiling(workdir, c1, lambda p: ceiling.one_producer(p, w, s)))
    scenario("mllp 1 sender", lambda: _mllp(workdir, "mllp 1 sender", 1))
    scenario(c16, lambda: _ceiling(
        workdir, c16, lambda p: ceiling.waiting_producers(p, CEILING_PRODUCERS, w, s)))
    scenario("mllp 16 senders", lambda: _mllp(workdir, "mllp 16 senders", 16))
    scenario("mllp 4 senders", lambda: _mllp(workdir, "mllp 4 senders", 4))
    paced = f"mllp paced {PACED_RATE:.0f}/s"
    scenario(paced, lambda: _mllp(workdir, paced, PACED_CONNECTIONS, PACED_RATE))

    _judge(rows, c1, c16, paced)
    order = ["mllp 1 sender", "mllp 4 senders", "mllp 16 senders", paced, c1, c16]
    return [rows[name] for name in order if name in rows]


def _judge(rows: dict[str, Row], c1: str, c16: str, paced: str) -> None:
    """References, ratios, targets and pass marks."""
    one, sixteen, ceil1, ceil16 = (rows.get(n) for n in ("mllp 1 sender", "mllp 16 senders", c1, c16))
    if one is not None:
        one.target = f">= {ONE_SENDER_TARGET:,.0f} msg/s"
        if ceil1 is not None and ceil1.rate:
            one.reference = f"ceiling 1p {ceil1.rate:,.0f}"
            one.ratio = one.rate / ceil1.rate if one.rate is not None else None
        if one.error is None and one.rate is not None:
            one.passed = one.rate >= ONE_SENDER_TARGET
    if sixteen is not None:
        sixteen.target = f"ratio >= {SIXTEEN_SENDERS_SHARE:.2f}"
        if ceil16 is not None and ceil16.rate:
            sixteen.reference = f"ceiling 16p {ceil16.rate:,.0f}"
            if sixteen.rate is not None:
                sixteen.ratio = sixteen.rate / ceil16.rate
                sixteen.passed = sixteen.ratio >= SIXTEEN_SENDERS_SHARE
    row = rows.get(paced)
    if row is not None:
        row.reference = f"offered {PACED_RATE:,.0f}"
        row.target = f"p99 <= {PACED_P99_MS:.0f} ms"
        if row.rate is not None:
            row.ratio = row.rate / PACED_RATE
        if row.error is None and row.p99_ms is not None:
            row.passed = row.p99_ms <= PACED_P99_MS
