"""Push: how fast a real `edge-node run` drains its outbound backlog to central, and how many MLLP messages
per second make it all the way to central, against the capacity of the same local central measured in
the same run.

Central is bench.central: a lean FHIR transaction endpoint in its OWN process (json.loads, PUT Type/id
checks, an in-memory store, a proper transaction-response). Scenarios:

- central ceiling (reference): a trivial aiohttp client, CEILING_CONCURRENCY requests at once, posting
  pre-built 100-entry transaction Bundles (the node's own batcher made them from the backlog's real
  harmonized resources) for BENCH_SECONDS: resources/s that central accepts when nothing else costs.
- drain backlog: a store holding >= BENCH_PUSH_BACKLOG (default 100,000) pending outbound resources, made
  the real way (the corpus mix, new patients per pass, staged through GroupCommitWriter and harmonized by
  a real HarmonizerPool). Then a real `edge-node run` on it (harmonize off, default [central] batching and
  concurrency) pushes them: resources (outbound rows, collapsed versions included) / seconds from the
  first batch sent to the last confirmed (the node's own audit rows in `batches`).
- end to end MLLP -> central: a real `edge-node run` (one MLLP feed, default harmonizer workers, push to
  central); after priming it (one pass of the mix through the whole way, so worker imports and caches are
  warm), E2E_SENDERS stop-and-wait senders in a separate process (`python -m bench.push`) send the mix
  with new patients for BENCH_E2E_SECONDS (default max(10, BENCH_SECONDS)) after BENCH_WARMUP. Rate:
  messages that COMPLETED the whole way inside the measured window (all their outbound rows pushed;
  messages the harmonizer failed or skipped complete when recorded) / window; latency ACK -> central
  confirmed. The notes give the intake rate, the share that carried resources to central and the
  backlog at the window's start and end (a growing backlog means the rate is not sustainable).

Targets (the issue): drain >= 5,000 resources/s; end to end >= 1,000 msg/s sustained. CPU use of node
(with its worker processes), central, senders and the rest of the machine is in the notes: on 2 cores all
of them share the machine.

The e2e figures are computed after the run from the node's store with read-only queries (inbound
received/harmonized times, outbound pushed times); nothing here writes to the store except through
node.store (GroupCommitWriter, HarmonizerPool). Building the backlog starts HarmonizerPool worker
processes ("spawn"): the program running `run()` needs the usual `if __name__ == "__main__":` guard.

Environment: BENCH_SECONDS (ceiling, default 3), BENCH_WARMUP (default 0.5; at least 1 s for end to end),
BENCH_PUSH_BACKLOG (default 100000), BENCH_E2E_SECONDS (default max(10, BENCH_SECONDS)), BENCH_ONLY
(comma-separated substrings of scenario names). The section takes about 60-75 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.central import CentralProcess
from bench.env import seconds, warmup
from bench.env import slug as _slug
from bench.env import wanted as _wanted
from bench.load import machine_busy_seconds
from bench.nodeproc import REPO, NodeProcess
from bench.table import Row

TITLE = "push (outbound -> central)"

DRAIN_TARGET = 5000.0
E2E_TARGET = 1000.0
CEILING_CONCURRENCY = 2
CEILING_ENTRIES = 100
CEILING_BUNDLES = 30
E2E_SENDERS = 8
FEED = "mllp"
START, END = b"\x0b", b"\x1c\r"
ACK_LIMIT_S = 30.0
perf = time.perf_counter






def backlog_size() -> int:
    return int(os.environ.get("BENCH_PUSH_BACKLOG", "100000"))


def e2e_seconds() -> float:
    value = os.environ.get("BENCH_E2E_SECONDS")
    return float(value) if value else max(10.0, seconds())






def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def _ms(ordered: list[float], q: float) -> float | None:
    value = _percentile(ordered, q)
    return None if value is None else value * 1e3


# -- CPU accounting ---------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads); 0 when it is gone."""
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and every live descendant (the node's harmonizer workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += cpu_seconds(current)
        todo.extend(parents.get(current, ()))
    return total


@dataclass(slots=True)
class CpuSample:
    at: float
    node: float
    """The node's process and its descendants (harmonizer workers)."""
    node_main: float
    """The node's own process: MLLP, store writer, push worker."""
    central: float
    senders: float
    bench: float
    machine: float


def cpu_sample(node_pid: int, central_pid: int, sender_pid: int = 0) -> CpuSample:
    return CpuSample(time.time(), tree_cpu(node_pid) if node_pid else 0.0,
                     cpu_seconds(node_pid) if node_pid else 0.0, cpu_seconds(central_pid),
                     cpu_seconds(sender_pid) if sender_pid else 0.0, time.process_time(), machine_busy_seconds())


def cpu_note(first: CpuSample, last: CpuSample) -> tuple[str, float]:
    """'CPU (100 % = one core): ...' between two samples, and the other processes' share."""
    wall = max(1e-9, last.at - first.at)
    node = (last.node - first.node) / wall
    main = (last.node_main - first.node_main) / wall
    central = (last.central - first.central) / wall
    senders = (last.senders - first.senders) / wall
    bench = (last.bench - first.bench) / wall
    machine = (last.machine - first.machine) / wall
    other = max(0.0, machine - node - central - senders - bench)
    workers = f", harmonizer workers {node - main:.0%}" if node - main > 0.005 else ""
    parts = [f"node {node:.0%} (main process {main:.0%}{workers})", f"central {central:.0%}"]
    if last.senders:
        parts.append(f"senders {senders:.0%}")
    parts += [f"bench {bench:.0%}", f"other processes {other:.0%}",
              f"machine {machine:.0%} of {len(os.sched_getaffinity(0)) * 100}%"]
    return "CPU (100 % = one core): " + ", ".join(parts), other


class CpuSampler:
    """Samples every `interval` s in a thread (for windows another process defines)."""

    def __init__(self, node_pid: int, central_pid: int, interval: float = 0.2) -> None:
        self.node_pid, self.central_pid, self.sender_pid = node_pid, central_pid, 0
        self.samples: list[CpuSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.samples.append(cpu_sample(self.node_pid, self.central_pid, self.sender_pid))
            self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def nearest(self, at: float) -> CpuSample | None:
        usable = [s for s in self.samples if s.senders or not self.sender_pid]
        return min(usable, key=lambda s: abs(s.at - at)) if usable else None


# -- configs and the corpus --------------------------------------------------------------------------------

def node_config(central_url: str, *, harmonize: bool) -> str:
    """One MLLP feed on port 0, metrics on port 0, the store at node.db (no free-space floor), default
    [central] batching and concurrency."""
    return (
        '[node]\nsite_id = "bench-push"\nshutdown_timeout_s = 10\n'
        '[store]\npath = "node.db"\nmin_free_bytes = 0\n'
        '[metrics]\nenabled = true\nhost = "127.0.0.1"\nport = 0\n'
        f"[harmonize]\nenabled = {'true' if harmonize else 'false'}\n"
        f'[central]\nurl = "{central_url}"\n'
        f'[[feeds]]\nname = "{FEED}"\ntype = "mllp"\nhost = "127.0.0.1"\nport = 0\n'
    )


def mix_payloads(generations: Iterator[int]) -> Iterator[bytes]:
    """The corpus mix, pass after pass, each pass with the next generation's new patients."""
    from bench.harmonize import corpus_mix, new_patients

    mix = [raw for raw, _charset in corpus_mix()]
    for generation in generations:
        for raw in mix:
            yield new_patients(raw, generation)


# -- the backlog -------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Backlog:
    rows: int
    messages: int
    harmonized: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def build_backlog(db: Path, target_rows: int, *, timeout_s: float = 600.0) -> Backlog:
    """At least `target_rows` pending outbound rows in a fresh store at `db`: stage the corpus mix (new
    patients per pass) through GroupCommitWriter and let a real HarmonizerPool (default workers) convert
    it; top up until the target is met."""
    from connectors.hl7_intake import inspect, stage_request
    from node.harmonize.pool import HarmonizerPool
    from node.settings import MLLPFeed, NodeSettings
    from node.store.reader import StoreReader
    from node.store.writer import GroupCommitWriter

    feed = MLLPFeed(name=FEED, type="mllp")
    payloads = mix_payloads(iter(range(1, 1 << 30)))
    started = perf()
    writer = GroupCommitWriter(db)
    writer.start()
    settings = NodeSettings(store={"path": db, "min_free_bytes": 0}, metrics={"enabled": False},
                            feeds=[{"name": FEED, "type": "mllp", "port": 0}])
    pool = HarmonizerPool(settings)
    reader = StoreReader(db)
    messages = 0
    want = math.ceil(target_rows / 8.5)  # the mix gives ~9 resources per message, failures included
    try:
        pool.start()
        while True:
            futures = []
            for payload in (next(payloads) for _ in range(want)):
                request = stage_request(FEED, payload, inspect(payload, feed), received_at=time.time())
                futures.append(writer.submit(request))
            for future in futures:
                future.result()
            messages += want
            while (stats := reader.harmonize_stats()).staged:
                if perf() - started > timeout_s:
                    raise TimeoutError(f"{stats.staged} messages still staged after {timeout_s:.0f} s")
                time.sleep(0.1)
            pending = stats.outbound["pending"]
            if pending >= target_rows:
                break
            per_message = max(1.0, pending / messages)
            want = math.ceil((target_rows - pending) / per_message * 1.03) + 5
        counts = reader.counts()
    finally:
        pool.stop()
        writer.stop()
        reader.close()
    harmonized = sum(n for (_feed, state), n in counts.items() if state == "harmonized")
    states = ", ".join(f"{n:,} {state}" for (_feed, state), n in sorted(counts.items()))
    return Backlog(pending, messages, harmonized, perf() - started,
                   [f"backlog: {pending:,} pending resources from {messages:,} messages ({states}): the corpus mix "
                    f"with new patients per pass, staged by GroupCommitWriter and harmonized by a real "
                    f"HarmonizerPool in {perf() - started:.1f} s"])


# -- central ceiling ---------------------------------------------------------------------------------------

def ceiling_bundles(db: Path, count: int = CEILING_BUNDLES) -> list[tuple[bytes, int]]:
    """(Bundle bytes, entries) of up to `count` full 100-entry transaction Bundles the node's own batcher
    makes of the store's first pending rows (bodies as stored: real harmonized resources)."""
    from node.push.batcher import assemble, bundle_bytes
    from node.settings import CentralSection
    from node.store.push import PushReader

    section = CentralSection()
    reader = PushReader(db)
    try:
        found = reader.candidates(now=time.time(), limit=count * CEILING_ENTRIES * 4)
        batches = assemble(found.rows, max_entries=CEILING_ENTRIES, max_bytes=section.batch_max_bytes,
                           max_batches=count)
        bodies = reader.bodies(entry.row.id for batch in batches for entry in batch.entries)
    finally:
        reader.close()
    return [(bundle_bytes(batch, bodies), len(batch.entries)) for batch in batches if batch.full]


async def _post_loop(url: str, bundles: list[tuple[bytes, int]], concurrency: int, warm: float,
                     duration: float) -> dict[str, Any]:
    import aiohttp

    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
               "Prefer": "return=minimal"}
    latencies: list[float] = []
    counted = {"entries": 0, "bundles": 0, "errors": 0}
    problems: list[str] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = perf()
        warm_end, end = start + warm, start + warm + duration

        async def worker(index: int) -> None:
            k = index
            while perf() < end:
                body, entries = bundles[k % len(bundles)]
                k += concurrency
                sent = perf()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
                done = perf()
                if status != 200:
                    counted["errors"] += 1
                    if len(problems) < 3:
                        problems.append(f"HTTP {status}")
                    continue
                if warm_end <= done < end:
                    counted["entries"] += entries
                    counted["bundles"] += 1
                    latencies.append(done - sent)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {**counted, "latencies": latencies, "problems": problems}


def _ceiling(central: CentralProcess, bundles: list[tuple[bytes, int]], row: Row) -> None:
    if not bundles:
        raise RuntimeError("no full 100-entry bundle could be made of the backlog")
    central.reset()
    before = cpu_sample(0, central.pid)
    result = asyncio.run(_post_loop(central.base_url, bundles, CEILING_CONCURRENCY, warmup(), seconds()))
    after = cpu_sample(0, central.pid)
    if result["errors"]:
        raise RuntimeError(f"central answered {result['errors']} bundles with an error: {result['problems']}")
    ordered = sorted(result["latencies"])
    row.rate = result["entries"] / seconds()
    row.p50_ms, row.p99_ms = _ms(ordered, 50), _ms(ordered, 99)
    row.max_ms = ordered[-1] * 1e3 if ordered else None
    stats = central.stats()
    note, row.other_cpu = cpu_note(before, after)
    size = sum(len(body) for body, _ in bundles) / len(bundles)
    row.reference = "central's capacity"
    row.notes += [
        f"resources/s: {result['bundles']:,} Bundles x {CEILING_ENTRIES} entries accepted in {seconds():.0f} s "
        f"by {CEILING_CONCURRENCY} concurrent POSTs, cycling {len(bundles)} pre-built Bundles "
        f"(avg {size / 1024:.0f} KiB); latency per Bundle; central holds {stats['resources']:,} resources",
        note]


# -- drain -------------------------------------------------------------------------------------------------

def _drain(directory: Path, central: CentralProcess, backlog: Backlog, row: Row) -> float:
    """Run a node on the backlog until nothing is pending; fills `row`; returns entries/s at central."""
    from node.store.push import PushReader
    from node.store.reader import StoreReader

    db = directory / "node.db"
    central.reset()
    deadline = perf() + max(120.0, backlog.rows / 500)
    node = NodeProcess(directory, node_config(central.base_url, harmonize=False))
    reader = None
    try:
        first = cpu_sample(node.pid, central.pid)
        reader = PushReader(db)
        while reader.stats().pending:  # the times come from the audit rows: polling needs no precision
            if perf() > deadline or node.proc.poll() is not None:
                raise RuntimeError(f"{reader.stats().pending:,} resources still pending; node log:\n{node.tail()}")
            time.sleep(0.25)
        last = cpu_sample(node.pid, central.pid)
    finally:
        if reader is not None:
            reader.close()
        code = node.stop()
    if code != 0:
        raise RuntimeError(f"edge-node exited with status {code}:\n{node.tail()}")
    reader = PushReader(db)
    try:
        records, after = [], 0
        while batch := reader.batches(after_id=after, limit=1000):
            records += batch
            after = batch[-1].id
    finally:
        reader.close()
    with StoreReader(db) as store:
        outbound = store.harmonize_stats().outbound
    stats = central.stats()
    outcomes = Counter(record.outcome for record in records)
    ok = [record for record in records if record.outcome == "ok"]
    if outbound["pending"] or outbound["dead"] or outbound["pushed"] != backlog.rows:
        raise RuntimeError(f"after the drain: {outbound} (backlog was {backlog.rows:,})")
    began = min(record.sent_at or record.created_at for record in ok)
    ended = max(record.finished_at or 0.0 for record in ok)
    wall = ended - began
    entries = sum(record.entries for record in ok)
    if stats["entries"] != entries:
        raise RuntimeError(f"the node recorded {entries:,} entries confirmed, central received {stats['entries']:,}")
    row.rate = backlog.rows / wall
    trips = sorted((record.finished_at or 0.0) - (record.sent_at or record.created_at) for record in ok)
    row.p50_ms, row.p99_ms, row.max_ms = _ms(trips, 50), _ms(trips, 99), trips[-1] * 1e3
    note, row.other_cpu = cpu_note(first, last)
    sizes = sorted(record.entries for record in ok)
    row.notes += [
        *backlog.notes,
        f"resources/s: {backlog.rows:,} outbound rows pushed in {wall:.2f} s (first batch sent -> last confirmed, "
        f"from the node's audit rows) in {len(ok):,} Bundles (outcomes {dict(outcomes)}); central received "
        f"{entries:,} entries = {entries / wall:,.0f}/s ({backlog.rows - entries:,} rows were older versions "
        f"collapsed into a newer one of the same Bundle); entries per Bundle p50 {_percentile(sizes, 50):.0f}, "
        f"max {sizes[-1]}; p50/p99/max ms: per Bundle, begin_batch to central's answer",
        note + " (node ready -> drained)"]
    return entries / wall


# -- end to end --------------------------------------------------------------------------------------------

def _send_blocking(port: int, payloads: list[bytes]) -> Counter[str]:
    """One connection, stop-and-wait; MSA-1 codes of the answers."""
    codes: Counter[str] = Counter()
    with socket.create_connection(("127.0.0.1", port), timeout=ACK_LIMIT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for payload in payloads:
            sock.sendall(START + payload + END)
            buffer = b""
            while (end := buffer.find(END)) < 0:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed by the node")
                buffer += chunk
            codes[_ack_code(buffer[:end])] += 1
    return codes


def _ack_code(frame: bytes) -> str:
    at = frame.find(b"MSA|")
    return "no MSA" if at < 0 else frame[at + 4 : at + 6].decode("ascii", "replace")


def _wait_idle(db: Path, node: NodeProcess, timeout_s: float) -> None:
    """Until nothing is staged and nothing is pending."""
    from node.store.reader import StoreReader

    deadline = perf() + timeout_s
    with StoreReader(db) as reader:
        while True:
            stats = reader.harmonize_stats()
            if not stats.staged and not stats.outbound["pending"]:
                return
            if perf() > deadline or node.proc.poll() is not None:
                raise RuntimeError(f"priming did not finish in {timeout_s:.0f} s: {stats.staged} staged, "
                                   f"{stats.outbound['pending']} pending; node log:\n{node.tail()}")
            time.sleep(0.1)


_COMPLETION = """
SELECT i.id, i.received_at, i.state, i.harmonized_at, count(o.id), coalesce(sum(o.state = 'pushed'), 0),
       coalesce(sum(o.state = 'dead'), 0), max(o.pushed_at)
FROM inbound i LEFT JOIN outbound o ON o.inbound_id = i.id
GROUP BY i.id
"""


@dataclass(slots=True)
class _Message:
    id: int
    received_at: float
    harmonized_at: float | None
    """When it left `staged` (None: still staged)."""
    completed_at: float | None
    """When its last outbound row was confirmed, or it was recorded without resources (None: not yet)."""
    resources: int


def _messages(db: Path) -> tuple[list[_Message], list[tuple[int, float, float | None]]]:
    """Read-only: each message's times, and (inbound_id, created_at, pushed_at) of every outbound row."""
    messages = []
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as conn:
        for id_, received, state, harmonized, rows, pushed, dead, pushed_at in conn.execute(_COMPLETION):
            left = None if state == "staged" else (harmonized if harmonized is not None else received)
            if state == "staged":
                done = None
            elif rows == 0:
                done = left
            elif pushed + dead == rows:
                done = pushed_at if pushed_at is not None else left
            else:
                done = None
            messages.append(_Message(id_, received, left, done, rows))
        outbound = conn.execute("SELECT inbound_id, created_at, pushed_at FROM outbound").fetchall()
    return messages, outbound


def _e2e(directory: Path, central: CentralProcess, row: Row) -> None:
    db = directory / "node.db"
    central.reset()
    duration, warm = e2e_seconds(), max(1.0, warmup())
    node = NodeProcess(directory, node_config(central.base_url, harmonize=True))
    sampler = CpuSampler(node.pid, central.pid)
    sender_output = ""
    try:
        port = node.ports[FEED]
        primed = perf()
        codes = _send_blocking(port, list(mix_payloads(iter([1]))))
        _wait_idle(db, node, 120.0)
        primed = perf() - primed
        command = [sys.executable, "-m", "bench.push", "--port", str(port), "--senders", str(E2E_SENDERS),
                   "--warmup", str(warm), "--seconds", str(duration), "--generation", "1000"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        sender = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        sampler.sender_pid = sender.pid
        try:
            sender_output, sender_err = sender.communicate(timeout=warm + duration + ACK_LIMIT_S + 60)
        except subprocess.TimeoutExpired:
            sender.kill()
            sender_output, sender_err = sender.communicate()
    finally:
        sampler.stop()
        code = node.stop()
    try:
        load = json.loads(sender_output)
    except json.JSONDecodeError:
        raise RuntimeError(f"senders failed (exit {sender.returncode}): {sender_err.strip()[-500:]}") from None
    if load["errors"]:
        raise RuntimeError("senders: " + "; ".join(load["errors"]))
    if code != 0:
        raise RuntimeError(f"edge-node exited with status {code}:\n{node.tail()}")
    start, end = load["warm_end"], load["end"]
    window = end - start
    messages, outbound = _messages(db)
    done = [m for m in messages if m.completed_at is not None and start <= m.completed_at < end]
    delivered = [m for m in done if m.resources]
    latencies = sorted(m.completed_at - m.received_at for m in done)  # type: ignore[operator]
    row.rate = len(done) / window
    row.p50_ms, row.p99_ms = _ms(latencies, 50), _ms(latencies, 99)
    row.max_ms = latencies[-1] * 1e3 if latencies else None
    intake = load["in_window"] / window
    row.reference = f"intake {intake:,.0f}/s"
    row.ratio = row.rate / intake if intake else None

    def backlog(at: float) -> tuple[int, int, int, int]:
        """(messages not yet at central, of them not yet harmonized, resources pending, of them eligible:
        below the watermark, i.e. the push could send them) at time `at`."""
        received = [m for m in messages if m.received_at <= at]
        staged = [m.id for m in received if m.harmonized_at is None or m.harmonized_at > at]
        unpushed = sum(1 for m in received if m.completed_at is None or m.completed_at > at)
        watermark = min(staged, default=1 << 62)
        pending = [inbound for inbound, created, pushed in outbound
                   if created <= at and (pushed is None or pushed > at)]
        return unpushed, len(staged), len(pending), sum(1 for inbound in pending if inbound < watermark)

    def describe(counts: tuple[int, int, int, int]) -> str:
        return (f"{counts[0]:,} messages not yet at central ({counts[1]:,} of them not yet harmonized), "
                f"{counts[2]:,} resources pending ({counts[3]:,} of them below the watermark: the push could "
                "send them)")

    before, after = backlog(start), backlog(end)
    growth = [(b - a) / window for a, b in zip(before, after, strict=True)]

    first, last = sampler.nearest(start), sampler.nearest(end)
    note, row.other_cpu = cpu_note(first, last) if first and last else ("CPU: no samples", None)
    harmonized = sum(1 for m in messages if m.harmonized_at is not None and start <= m.harmonized_at < end)
    if first and last and done and harmonized and load["in_window"]:
        workers = (last.node - last.node_main) - (first.node - first.node_main)
        main = last.node_main - first.node_main
        total = (last.node - first.node) + (last.central - first.central) + (last.senders - first.senders)
        cores = len(os.sched_getaffinity(0))
        note += (f"; CPU per message: harmonizer workers {workers / harmonized * 1e3:.2f} ms, node main process "
                 f"(MLLP, store writer, push) {main / load['in_window'] * 1e3:.2f} ms, everything (node, central, "
                 f"senders) {total / len(done) * 1e3:.2f} ms per completed message: {cores} cores allow at most "
                 f"~{cores / (total / len(done)):,.0f} msg/s at this cost")
    stats = central.stats()
    row.notes += [
        f"msg/s: messages that completed the whole way in the {window:.1f} s window (all their resources "
        f"confirmed by central, or harmonize failed/skipped them); {len(delivered) / window:,.0f}/s of them "
        f"carried resources to central ({len(delivered):,} of {len(done):,}; the mix's other messages fail "
        "harmonization or have no resources); latency: ACK (received_at) -> last resource confirmed",
        f"intake: {E2E_SENDERS} stop-and-wait MLLP senders, {load['in_window']:,} ACKs in the window = "
        f"{intake:,.0f}/s (ACK p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms; codes {load['codes']}); "
        f"primed first with one pass of the mix ({sum(codes.values())} messages, {primed:.1f} s incl. "
        f"worker start)",
        f"backlog at window start: {describe(before)}",
        f"backlog at window end: {describe(after)}; change over the window: messages not at central "
        f"{growth[0]:+,.0f}/s, not harmonized {growth[1]:+,.0f}/s, resources the push could send {growth[3]:+,.0f}/s "
        "(a stage whose backlog grows is not keeping up: over a longer run the rate would fall to what it sustains)",
        f"central received {stats['entries']:,} entries in {stats['bundles']:,} Bundles in total",
        note]


# -- the senders (python -m bench.push) --------------------------------------------------------------------

@dataclass(slots=True)
class _Load:
    warm_end: float = 0.0
    end: float = 0.0
    sent: int = 0
    acked: int = 0
    in_window: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class _Sender(asyncio.Protocol):
    """One stop-and-wait MLLP connection sending its own stream of messages."""

    def __init__(self, load: _Load, payloads: Iterator[bytes], finished: asyncio.Future[None]) -> None:
        self.load, self.payloads, self.finished = load, payloads, finished
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_next(self) -> None:
        now = time.time()
        if now >= self.load.end:
            if not self.finished.done():
                self.finished.set_result(None)
            return
        self.sent_at = now
        self.load.sent += 1
        assert self.transport is not None
        self.transport.write(START + next(self.payloads) + END)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        end = buffer.find(END)
        if end < 0:
            self.buffer = buffer
            return
        self.buffer = buffer[end + 2 :]
        done = time.time()
        load = self.load
        load.acked += 1
        load.codes[_ack_code(buffer[:end])] += 1
        if load.warm_end <= done < load.end:
            load.in_window += 1
            load.latencies.append(done - self.sent_at)
        self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            if len(self.load.errors) < 10:
                self.load.errors.append(f"connection lost: {exc or 'closed by the node'}")
            self.finished.set_result(None)


async def _senders(port: int, senders: int, warm: float, duration: float, generation: int) -> _Load:
    from bench.harmonize import corpus_mix, new_patients

    mix = [raw for raw, _ in corpus_mix()]

    def stream(index: int) -> Iterator[bytes]:
        base = generation + index * 100_000
        for n in range(1 << 30):
            for raw in mix:
                yield new_patients(raw, base + n)

    loop = asyncio.get_running_loop()
    load = _Load()
    protocols: list[_Sender] = []
    for index in range(senders):
        finished: asyncio.Future[None] = loop.create_future()
        payloads = stream(index)
        _, protocol = await loop.create_connection(
            lambda p=payloads, f=finished: _Sender(load, p, f), "127.0.0.1", port)
        protocols.append(protocol)
    load.warm_end = time.time() + warm
    load.end = load.warm_end + duration
    for protocol in protocols:
        protocol.send_next()
    try:
        await asyncio.wait_for(asyncio.gather(*(p.finished for p in protocols)), warm + duration + ACK_LIMIT_S)
    except TimeoutError:
        load.errors.append(f"no ACK within {ACK_LIMIT_S:.0f} s after the end")
    for protocol in protocols:
        if protocol.transport is not None:
            protocol.transport.close()
    return load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.push",
                                     description="MLLP senders of the corpus mix (new patients per pass)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--senders", type=int, default=E2E_SENDERS)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--generation", type=int, default=1000, help="first new-patient generation")
    args = parser.parse_args(argv)
    load = asyncio.run(_senders(args.port, args.senders, args.warmup, args.seconds, args.generation))
    if not load.errors and load.sent != load.acked:
        load.errors.append(f"{load.sent - load.acked} messages without ACK")
    ordered = sorted(load.latencies)
    json.dump({"warm_end": load.warm_end, "end": load.end, "sent": load.sent, "acked": load.acked,
               "in_window": load.in_window, "codes": dict(load.codes), "errors": load.errors,
               "p50_ms": (_percentile(ordered, 50) or 0.0) * 1e3, "p99_ms": (_percentile(ordered, 99) or 0.0) * 1e3,
               "cpu_s": time.process_time()}, sys.stdout)
    sys.stdout.write("\n")
    return 1 if load.errors else 0


# -- the section -------------------------------------------------------------------------------------------

def _scenario(rows: dict[str, Row], name: str, work: Callable[[Row], Any]) -> Any:
    print(f"  running {name} ...", file=sys.stderr, flush=True)
    row = rows[name] = Row(name)
    try:
        return work(row)
    except Exception as exc:
        row.error = f"{type(exc).__name__}: {exc}"
        return None


def run(workdir: Path) -> list[Row]:
    """central ceiling, then the drain of the backlog (neighbours: their ratio is the fairest), then end to
    end; rows in that order."""
    rows: dict[str, Row] = {}
    ceiling_name, drain_name = "central ceiling", f"drain {backlog_size():,} backlog"
    e2e_name = "end to end MLLP -> central"
    want_ceiling, want_drain, want_e2e = _wanted(ceiling_name), _wanted(drain_name), _wanted(e2e_name)
    central = CentralProcess(workdir / "central.log")
    try:
        backlog = None
        drain_dir = workdir / _slug(drain_name)
        if want_ceiling or want_drain:
            drain_dir.mkdir(parents=True)
            size = backlog_size() if want_drain else 3 * CEILING_BUNDLES * CEILING_ENTRIES
            print(f"  building a backlog of {size:,} resources ...", file=sys.stderr, flush=True)
            try:
                backlog = build_backlog(drain_dir / "node.db", size)
            except Exception as exc:
                for name in (ceiling_name, drain_name):
                    rows[name] = Row(name, error=f"building the backlog: {type(exc).__name__}: {exc}")
        if want_ceiling and backlog is not None:
            bundles = ceiling_bundles(drain_dir / "node.db")
            _scenario(rows, ceiling_name, lambda row: _ceiling(central, bundles, row))
        entries_rate = None
        if want_drain and backlog is not None:
            entries_rate = _scenario(rows, drain_name, lambda row: _drain(drain_dir, central, backlog, row))
        shutil.rmtree(drain_dir, ignore_errors=True)
        if want_e2e:
            e2e_dir = workdir / _slug(e2e_name)
            e2e_dir.mkdir(parents=True)
            _scenario(rows, e2e_name, lambda row: _e2e(e2e_dir, central, row))
            shutil.rmtree(e2e_dir, ignore_errors=True)
    finally:
        central.stop()
    _judge(rows, ceiling_name, drain_name, e2e_name, entries_rate)
    return [rows[name] for name in (ceiling_name, drain_name, e2e_name) if name in rows]


def _judge(rows: dict[str, Row], ceiling_name: str, drain_name: str, e2e_name: str,
           entries_rate: float | None) -> None:
    ceiling, drain, e2e = rows.get(ceiling_name), rows.get(drain_name), rows.get(e2e_name)
    if drain is not None:
        drain.target = f">= {DRAIN_TARGET:,.0f}/s"
        if ceiling is not None and ceiling.rate:
            drain.reference = f"ceiling {ceiling.rate:,.0f}/s"
            if drain.rate is not None:
                drain.ratio = drain.rate / ceiling.rate
                if entries_rate is not None:
                    drain.notes.append(f"ratio: resources drained / central's ceiling; entries central received "
                                       f"/ ceiling = {entries_rate / ceiling.rate:.2f}")
        if drain.error is None and drain.rate is not None:
            drain.passed = drain.rate >= DRAIN_TARGET
    if e2e is not None:
        e2e.target = f">= {E2E_TARGET:,.0f} msg/s"
        if e2e.error is None and e2e.rate is not None:
            e2e.passed = e2e.rate >= E2E_TARGET


if __name__ == "__main__":
    sys.exit(main())
