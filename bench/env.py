"""The bench's environment knobs, shared by every section.

BENCH_SECONDS (measured seconds per scenario, default 3), BENCH_WARMUP (default 0.5), BENCH_ONLY
(comma-separated substrings of scenario names to run).
"""

from __future__ import annotations

import os
import re


def seconds() -> float:
    return float(os.environ.get("BENCH_SECONDS", "3"))


def warmup() -> float:
    return float(os.environ.get("BENCH_WARMUP", "0.5"))


def wanted(name: str) -> bool:
    """BENCH_ONLY='mllp 16,drain': run only scenarios whose name contains one of the parts."""
    only = os.environ.get("BENCH_ONLY", "")
    return not only or any(part.strip() and part.strip() in name for part in only.split(","))


def slug(name: str) -> str:
    """A scenario name as a directory name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
