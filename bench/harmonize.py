"""Harmonize: messages/s through the whole HL7 v2 -> FHIR harmonization (parse + map + validate +
serialize) on the corpus mix, next to hl7apy's parse rate of the same messages, measured in one run.

The mix is every message of ../shared/corpus/hl7v2 (the project's own fixtures without it), failures
included (they cost time too). Each pass over the mix is a new set of patients: PID-3 and PV1-19 get a
pass number appended, so Patient, Encounter, Observation... are new resources every time, while the
Practitioners, Locations and Organizations stay what they are in a real feed (the same wards and
doctors), exactly the load the per-process validation cache is built for. "cold" rows switch the cache
off.

Scenarios:
- hl7apy parse (reference): hl7apy.parser.parse_message of each message, one process.
- pipeline 1 worker / cold: convert() + JSON in one process.
- pipeline default workers: the same in `[harmonize] workers` (default 2) processes at once, summed.
- node 1 worker / default workers: real HarmonizerPool worker processes on a real store, from
  `staged` to `harmonized`/`failed` (claims and commits included), with the WAL checkpointer the node
  runs beside them (node.store.checkpoint): rows / wall time.

Target (the issue): >= 2,000 msg/s with the default workers, i.e. >= 12x hl7apy's parse alone.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
import time
from pathlib import Path

from bench.env import seconds
from bench.table import Row

TITLE = "harmonize (HL7 v2 -> validated FHIR R4)"
TARGET_RATE = 2000.0
TARGET_RATIO = 12.0
REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "hl7v2"




def _default_workers() -> int:
    from node.settings import HarmonizeSection

    return HarmonizeSection().workers


def corpus_mix() -> list[tuple[bytes, str]]:
    """(raw, charset) of every corpus message, or of the repo's fixtures without the corpus."""
    from connectors.hl7_intake import inspect
    from node.settings import MLLPFeed

    feed = MLLPFeed(name="bench", type="mllp")
    files = sorted(CORPUS.glob("*/*.hl7")) or sorted((REPO / "tests" / "fixtures" / "hl7").glob("*.hl7"))
    return [(raw, inspect(raw, feed).charset) for raw in (path.read_bytes() for path in files)]


def new_patients(raw: bytes, generation: int) -> bytes:
    """The message with PID-3 / PV1-19 first components (and MSH-10) suffixed by `generation`."""
    if generation == 0:
        return raw
    suffix = f"G{generation}".encode()
    lines = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    for index, line in enumerate(lines):
        targets = {b"MSH": 10, b"PID": 3, b"PV1": 19}
        segment = line[:3]
        if segment not in targets or len(line) < 4:
            continue
        separator = line[3:4]
        fields = line.split(separator)
        number = targets[segment] if segment != b"MSH" else targets[segment] - 1
        if len(fields) > number and fields[number]:
            head, caret, rest = fields[number].partition(b"^")
            fields[number] = head + suffix + caret + rest
            lines[index] = separator.join(fields)
    return b"\r".join(lines)


def _pipeline(mix: list[tuple[bytes, str]], duration: float, cache: bool, offset: int,
              result: multiprocessing.Queue | None = None) -> tuple[int, float]:
    from node.harmonize.context import ConvertOptions, HarmonizeError
    from node.harmonize.convert import convert

    options = ConvertOptions(site_id="bench", validation_cache=cache)
    for raw, charset in mix[:20]:  # warm imports and model caches, not the validation cache
        try:
            convert(raw, charset, ConvertOptions(site_id="warm", validation_cache=False))
        except HarmonizeError:
            pass
    done, generation, started = 0, offset, time.perf_counter()
    while time.perf_counter() - started < duration:
        generation += 1
        for raw, charset in mix:
            try:
                convert(new_patients(raw, generation), charset, options)
            except HarmonizeError:
                pass
            done += 1
    outcome = (done, time.perf_counter() - started)
    if result is not None:
        result.put(outcome)
    return outcome


def _hl7apy_rate(mix: list[tuple[bytes, str]], duration: float) -> float:
    from hl7apy.parser import parse_message

    texts = [raw.decode(charset, "replace").replace("\n", "\r") for raw, charset in mix]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration:
        for text in texts:
            try:
                parse_message(text, find_groups=False)
            except Exception:  # hl7apy raises many things on real data; count the attempt
                pass
            done += 1
    return done / (time.perf_counter() - started)


def _parallel(mix: list[tuple[bytes, str]], workers: int, duration: float) -> float:
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    processes = [context.Process(target=_pipeline, args=(mix, duration, True, 1000 * i, queue))
                 for i in range(workers)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=duration + 120) for _ in processes]
    for process in processes:
        process.join(30)
    return sum(done / wall for done, wall in results)


def _stage(db: Path, mix: list[tuple[bytes, str]], total: int) -> int:
    """Stage `total` messages (the mix, new patients per pass) through the real store writer."""
    from connectors.hl7_intake import inspect, stage_request
    from node.settings import MLLPFeed
    from node.store.writer import GroupCommitWriter

    feed = MLLPFeed(name="bench", type="mllp")
    writer = GroupCommitWriter(db)
    writer.start()
    futures = []
    generation = 0
    while len(futures) < total:
        generation += 1
        for raw, _charset in mix:
            payload = new_patients(raw, generation)
            futures.append(writer.submit(stage_request("bench", payload, inspect(payload, feed),
                                                       received_at=time.time())))
            if len(futures) >= total:
                break
    for future in futures:
        future.result()
    writer.stop()
    return len(futures)


def _node_rate(workdir: Path, mix: list[tuple[bytes, str]], workers: int) -> tuple[float, int]:
    from node.harmonize.pool import HarmonizerPool
    from node.settings import NodeSettings
    from node.store.checkpoint import Checkpointer

    db = workdir / f"node-{workers}.db"
    total = max(2000, int(900 * seconds() * workers))
    _stage(db, mix, total)
    settings = NodeSettings(
        store={"path": db, "min_free_bytes": 0}, harmonize={"workers": workers},
        feeds=[{"name": "bench", "type": "mllp", "port": 0}], metrics={"enabled": False})
    connection = sqlite3.connect(db)
    pool = HarmonizerPool(settings)
    checkpointer = Checkpointer(db)  # as in the node: the workers' commits never checkpoint themselves
    checkpointer.start()
    samples: list[tuple[float, int]] = []
    started = time.perf_counter()
    pool.start()
    try:
        while True:
            left = connection.execute("SELECT count(*) FROM inbound WHERE state = 'staged'").fetchone()[0]
            samples.append((time.perf_counter(), total - left))
            if left == 0:
                break
            if time.perf_counter() - started > 600:
                raise TimeoutError(f"{left} messages still staged after 600 s")
            time.sleep(0.05)
    finally:
        pool.stop()
        checkpointer.stop()
        connection.close()
    # Rate between 10 % and 90 % done: worker start-up (spawn + imports) is not harmonization.
    low = next(s for s in samples if s[1] >= total * 0.1)
    high = next(s for s in samples if s[1] >= total * 0.9)
    if high[0] <= low[0]:
        raise RuntimeError("too few samples to measure; raise BENCH_SECONDS")
    return (high[1] - low[1]) / (high[0] - low[0]), total


def run(workdir: Path) -> list[Row]:
    mix = corpus_mix()
    duration = seconds()
    workers = _default_workers()
    digest = hashlib.sha256(b"".join(raw for raw, _ in mix)).hexdigest()[:12]
    rows: list[Row] = []
    apy = _hl7apy_rate(mix, duration)
    rows.append(Row("hl7apy parse (reference)", rate=apy, reference="same messages",
                    notes=[f"mix: {len(mix)} messages (sha256 {digest}); hl7apy parses, nothing else"]))

    done, wall = _pipeline(mix, duration, cache=False, offset=0)
    rows.append(Row("pipeline 1 worker, cold", rate=done / wall, reference="hl7apy parse",
                    ratio=done / wall / apy))
    done, wall = _pipeline(mix, duration, cache=True, offset=0)
    rows.append(Row("pipeline 1 worker", rate=done / wall, reference="hl7apy parse", ratio=done / wall / apy))
    rate = _parallel(mix, workers, duration)
    rows.append(Row(f"pipeline {workers} workers", rate=rate, reference="hl7apy parse", ratio=rate / apy,
                    target=f">= {TARGET_RATE:,.0f}/s, >= {TARGET_RATIO:.0f}x",
                    passed=rate >= TARGET_RATE and rate / apy >= TARGET_RATIO))
    for count in sorted({1, workers}):
        name = f"node {count} worker{'s' if count > 1 else ''} (store to store)"
        try:
            rate, total = _node_rate(workdir, mix, count)
        except Exception as exc:  # reported as a failed scenario
            rows.append(Row(name, error=f"{type(exc).__name__}: {exc}"))
            continue
        row = Row(name, rate=rate, reference="hl7apy parse", ratio=rate / apy,
                  notes=[f"{total} staged messages harmonized by real worker processes"])
        if count == workers:
            row.target = f">= {TARGET_RATE:,.0f}/s, >= {TARGET_RATIO:.0f}x"
            row.passed = rate >= TARGET_RATE and rate / apy >= TARGET_RATIO
        rows.append(row)
    return rows
