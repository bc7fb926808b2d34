"""`python -m bench`: run every section and print its table.

All sections share one temporary directory (under $BENCH_TMPDIR, else $TMPDIR, else /tmp), so the
node's stores, the SQLite ceilings and the fsync probe all live on the same disk. The machine facts and
the disk's fsync latency are measured once, first.

Environment: BENCH_SECONDS (measured seconds per scenario, default 3), BENCH_WARMUP (default 0.5),
BENCH_ONLY (comma-separated substrings of scenario names to run), BENCH_SECTIONS (e.g. "intake").

Exit status: 0 when every scenario ran (missed targets only show as NO in the pass column), 1 when a
scenario or a section failed to run.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import machine
from bench.table import render

SECTIONS = ("intake", "harmonize", "push")
"""Modules under bench/, in the order they run."""


def main() -> int:
    wanted = [s.strip() for s in os.environ.get("BENCH_SECTIONS", "").split(",") if s.strip()]
    sections = [name for name in SECTIONS if not wanted or name in wanted]
    root = os.environ.get("BENCH_TMPDIR") or None
    failed = False
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-node-bench-", dir=root) as tmp:
        workdir = Path(tmp)
        facts = machine.facts(workdir)
        sync = machine.fsync_latency(workdir)
        facts.append(
            f"disk sync, 4 KiB write + fsync x{machine.FSYNC_SAMPLES}: p50 {sync['fsync_p50_us']:.0f} µs, "
            f"p99 {sync['fsync_p99_us']:.0f} µs (fdatasync p50 {sync['fdatasync_p50_us']:.0f} µs, "
            f"p99 {sync['fdatasync_p99_us']:.0f} µs)")
        print("\n".join(facts), flush=True)
        for name in sections:
            print(f"[{name}]", file=sys.stderr, flush=True)
            try:
                module = importlib.import_module(f"bench.{name}")
                section_dir = workdir / name
                section_dir.mkdir()
                rows = module.run(section_dir)
            except Exception:
                failed = True
                print(f"\n== {name} ==\nsection failed to run:\n{traceback.format_exc()}", flush=True)
                continue
            failed = failed or any(row.error is not None for row in rows)
            print("\n" + render(module.TITLE, rows), flush=True)
    print(f"\n(bench took {time.monotonic() - started:.0f} s{'; SOME SCENARIOS FAILED' if failed else ''})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
