"""The result row every bench section returns, and the one table printer they share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class Row:
    """One scenario. `rate` is messages (or rows) per second; latencies in milliseconds.

    `error` set means the scenario did not run to the end (the bench then exits non-zero); `passed` is
    None where the issue sets no target.
    """

    scenario: str
    rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    reference: str = ""
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    """Extra lines printed under the table (CPU use, counts), prefixed with the scenario name."""
    other_cpu: float | None = None
    """CPU (1.0 = one core) that processes other than the bench's used while the scenario ran."""


DISTURBED = 0.25
"""Other processes using more than this share of a core make a scenario's figures doubtful."""


COLUMNS = ("scenario", "msg/s", "p50 ms", "p99 ms", "max ms", "reference", "ratio", "target", "pass")
_RIGHT = {"msg/s", "p50 ms", "p99 ms", "max ms", "ratio"}


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _cells(row: Row) -> tuple[str, ...]:
    if row.error is not None:
        return (row.scenario, "FAILED", "-", "-", "-", row.reference, "-", row.target, "ERROR")
    passed = "-" if row.passed is None else ("yes" if row.passed else "NO")
    return (
        row.scenario,
        _num(row.rate, 0),
        _num(row.p50_ms, 2),
        _num(row.p99_ms, 2),
        _num(row.max_ms, 2),
        row.reference,
        "-" if row.ratio is None else f"{row.ratio:.2f}",
        row.target,
        passed,
    )


def render(title: str, rows: Sequence[Row], facts: Sequence[str] = ()) -> str:
    """The section's table, then its facts, notes and errors, as one string."""
    cells = [COLUMNS, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]

    def line(values: Sequence[str]) -> str:
        return " | ".join(
            value.rjust(width) if COLUMNS[i] in _RIGHT else value.ljust(width)
            for i, (value, width) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    out = [f"== {title} ==", line(COLUMNS), "-+-".join("-" * width for width in widths)]
    out += [line(values) for values in cells[1:]]
    out += list(facts)
    for row in rows:
        out += [f"  {row.scenario}: {note}" for note in row.notes]
        if row.error is not None:
            out.append(f"  {row.scenario}: ERROR: {row.error}")
    disturbed = [row.scenario for row in rows if row.other_cpu is not None and row.other_cpu > DISTURBED]
    if disturbed:
        out.append(f"WARNING: other processes used over {DISTURBED:.0%} of a core during: {', '.join(disturbed)}; "
                   "on a shared machine those figures are low and noisy: rerun when it is quiet.")
    return "\n".join(out)
