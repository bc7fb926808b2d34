"""`edge-node convert`: HL7 v2 files → FHIR R4 transaction Bundles, offline (no store, no network).

Each file is split into messages (node.hl7v2.batch: one or many messages, batch envelopes, any line
ends); each message is decoded with the charset the node would choose (connectors.hl7_intake.inspect:
MSH-18 checked against the bytes, then the feed's fallbacks) and converted exactly as the harmonizer
worker does it (skip list, optional strict structure check, `convert()`), into one transaction Bundle
with a PUT entry per resource:

* with `out_dir`: `<out_dir>/<file stem>-<message index>.json`, pretty-printed (written atomically);
* else: NDJSON on stdout, one compact Bundle per line, in file and message order.

stderr gets one line per problem, `FILE:LINE: message #N: <reason>` (reasons name segments, fields and
kinds of problems, never data), `FILE:LINE: <reason>` for bytes of a file that are no message, and
`FILE: <reason>` for a file that cannot be read. Every message is tried even after failures. At the end
stderr gets a summary of what could not be mapped (segments per segment id, local codes without a
terminology mapping per coding system) — always, since nothing may be dropped silently — and, with
`verbose` or after failures, the totals. stdout carries Bundles only.

Exit status: 0 when every message of every file was converted (or skipped by the feed's
`skip_message_types`), else 1.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from connectors.hl7_intake import inspect
from node.errors import ConfigError
from node.harmonize.context import HarmonizeError, Profile
from node.harmonize.convert import ConversionResult, convert
from node.harmonize.worker import FeedOptions, FeedRuntime, WorkerSettings, is_skipped, load_feed_runtimes
from node.hl7v2.batch import split_messages
from node.settings import HL7FeedBase, NodeSettings

DEFAULT_SITE_ID = "local-dev"
"""The site id without --site-id or a config (NodeSection's default): ids are stable per site id."""
SITE_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_TIMEZONE = "Europe/Berlin"
_LINE_PREFIX = re.compile(r"^line \d+: ")


@dataclass(frozen=True, slots=True)
class ConvertJob:
    """What `run` needs: how to read (charset choice), convert and where to write."""

    runtime: FeedRuntime
    """The ConvertOptions (site id, profile, terminology, Z-segments, zone), skip list, strict validator."""
    feed: HL7FeedBase
    """Encoding settings for the charset choice (`encoding`, `fallback_encodings`)."""
    out_dir: Path | None = None
    verbose: bool = False


def build_job(*, settings: NodeSettings | None, feed_name: str | None, profile: Profile | None,
              site_id: str | None, out_dir: Path | None, verbose: bool = False) -> ConvertJob:
    """The job for the given options: the named feed of `settings` (its profile, terminology maps,
    Z-segment handling, encodings, strict validation and skip list), else defaults; `profile` and
    `site_id` override. :raises ConfigError: unknown feed, bad site id, unloadable terminology map."""
    feed: HL7FeedBase
    if feed_name is not None:
        if settings is None:
            raise ConfigError("--feed needs a configuration")
        feeds = [f for f in settings.feeds if isinstance(f, HL7FeedBase)]
        match = next((f for f in feeds if f.name == feed_name), None)
        if match is None:
            names = ", ".join(f.name for f in feeds) or "none"
            raise ConfigError(f"no HL7 v2 feed named {feed_name!r} in the configuration (feeds: {names})")
        feed = match
    else:
        feed = HL7FeedBase(name="convert")
    site = site_id or (settings.node.site_id if settings is not None else DEFAULT_SITE_ID)
    if not SITE_ID_PATTERN.match(site):
        raise ConfigError(f"site id {site!r} must be lower case letters, digits, '-' or '_' (at most 63)")
    options = FeedOptions(name=feed.name, profile=profile or feed.profile,
                          terminology=tuple(os.path.abspath(path) for path in feed.terminology),
                          z_segments=feed.z_segments, validation=feed.validation,
                          skip_message_types=tuple(feed.skip_message_types))
    zone = settings.harmonize.timezone if settings is not None else DEFAULT_TIMEZONE
    runtimes = load_feed_runtimes(WorkerSettings(site_id=site, feeds=(options,), timezone=zone))
    return ConvertJob(runtime=runtimes[feed.name], feed=feed, out_dir=out_dir, verbose=verbose)


# -- one message --------------------------------------------------------------------------------------

@dataclass(slots=True)
class Outcome:
    """What became of one message: a result, a skip, or a failure reason (never data)."""

    result: ConversionResult | None = None
    reason: str = ""
    skipped: str = ""
    """The message type, when the feed's skip list names it."""


def convert_message(payload: bytes, job: ConvertJob) -> Outcome:
    """Convert one message as the harmonizer worker would. Never raises."""
    try:
        inspected = inspect(payload, job.feed)
        if inspected.error is not None:
            return Outcome(reason=inspected.error.reason)
        message_type = inspected.header.message_type if inspected.header is not None else ""
        if is_skipped(message_type, job.runtime.skip):
            return Outcome(skipped=message_type)
        if job.runtime.validate is not None:
            report = job.runtime.validate(payload, inspected.charset)
            if not report.ok:
                return Outcome(reason=report.reason or "structure violation")
        return Outcome(result=convert(payload, inspected.charset, job.runtime.options))
    except HarmonizeError as exc:
        return Outcome(reason=exc.reason)
    except Exception as exc:  # a bug; its text may quote data: only the type is reported
        return Outcome(reason=f"internal error: {type(exc).__name__}")


# -- files ----------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Totals:
    files: int = 0
    messages: int = 0
    converted: int = 0
    skipped: int = 0
    failed: int = 0
    problems: int = 0
    """File-level problems: unreadable files, bytes outside messages, batch count mismatches."""
    unmapped_segments: Counter[str] = field(default_factory=Counter)
    unmapped_codes: Counter[str] = field(default_factory=Counter)


def run(files: Sequence[Path], job: ConvertJob, stdout: IO[bytes], stderr: IO[str]) -> int:
    """Convert every message of `files`; return the exit status (0 all converted, else 1)."""
    totals = Totals()
    stems: dict[str, Path] = {}
    if job.out_dir is not None:
        try:
            job.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"{job.out_dir}: cannot create the output directory: {exc.strerror}", file=stderr)
            return 1
    try:
        for path in files:
            totals.files += 1
            if job.out_dir is not None:
                first = stems.setdefault(path.stem, path)
                if first != path and os.path.abspath(first) != os.path.abspath(path):
                    print(f"{path}: output names would collide with those of {first} (same file name stem); "
                          "not converted", file=stderr)
                    totals.problems += 1
                    continue
            _convert_file(path, job, stdout, stderr, totals)
        stdout.flush()
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly
        _silence(stdout)
        return 1
    except KeyboardInterrupt:
        print("edge-node convert: interrupted", file=stderr)
        return 130
    _summary(job, totals, stderr)
    return 0 if totals.failed == 0 and totals.problems == 0 else 1


def _convert_file(path: Path, job: ConvertJob, stdout: IO[bytes], stderr: IO[str], totals: Totals) -> None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or type(exc).__name__}", file=stderr)
        totals.problems += 1
        return
    split = split_messages(data)
    for problem in split.problems:
        print(f"{path}:{problem.line}: {_LINE_PREFIX.sub('', problem.reason)}", file=stderr)
        totals.problems += 1
    if not split.messages and not split.problems:
        print(f"{path}: no HL7 v2 message (no MSH segment) in the file", file=stderr)
        totals.problems += 1
    for message in split.messages:
        totals.messages += 1
        where = f"{path}:{message.line}: message #{message.index}"
        outcome = convert_message(message.payload, job)
        if outcome.skipped:
            totals.skipped += 1
            if job.verbose:
                print(f"{where}: skipped ({_safe_type(outcome.skipped)} is in the feed's skip_message_types)",
                      file=stderr)
            continue
        if outcome.result is None:
            totals.failed += 1
            print(f"{where}: {outcome.reason}", file=stderr)
            continue
        result = outcome.result
        try:
            _write(result.bundle(), path, message.index, job, stdout)
        except BrokenPipeError:
            raise
        except OSError as exc:
            totals.failed += 1
            print(f"{where}: cannot write the bundle: {exc.strerror or type(exc).__name__}", file=stderr)
            continue
        totals.converted += 1
        totals.unmapped_segments.update(result.unmapped_segments)
        totals.unmapped_codes.update(result.unmapped_codes)
        if job.verbose:
            print(f"{where}: {result.event}: {len(result.resources)} resource(s)", file=stderr)


def _silence(stream: IO[bytes]) -> None:
    """Point a closed pipe's descriptor at /dev/null, so the interpreter's final flush does not fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _safe_type(message_type: str) -> str:
    """MSH-9 as the skip list matched it (letters, digits, ^ and _ only: nothing else from the wire)."""
    return re.sub(r"[^A-Za-z0-9^_]", "", message_type)[:24]


def _write(bundle: dict[str, Any], source: Path, index: int, job: ConvertJob, stdout: IO[bytes]) -> None:
    if job.out_dir is None:
        line = json.dumps(bundle, ensure_ascii=False, separators=(",", ":"))
        stdout.write(line.encode("utf-8") + b"\n")
        return
    target = job.out_dir / f"{source.stem}-{index}.json"
    text = json.dumps(bundle, ensure_ascii=False, indent=2) + "\n"
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=job.out_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _summary(job: ConvertJob, totals: Totals, stderr: IO[str]) -> None:
    if totals.unmapped_segments:
        print("edge-node convert: unmapped segments (per segment id): " + _counts(totals.unmapped_segments),
              file=stderr)
    if totals.unmapped_codes:
        print("edge-node convert: local codes without a terminology mapping (per coding system): "
              + _counts(totals.unmapped_codes), file=stderr)
    if job.verbose or totals.failed or totals.problems:
        where = f" to {job.out_dir}" if job.out_dir is not None else ""
        print(f"edge-node convert: {totals.messages} message(s) in {totals.files} file(s): "
              f"{totals.converted} converted{where}, {totals.failed} failed, {totals.skipped} skipped"
              + (f", {totals.problems} file problem(s)" if totals.problems else ""), file=stderr)


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")


def _counts(counter: Counter[str]) -> str:
    """`name n, …` by count. Names come from the wire (segment ids, CWE-3 coding system names): one that
    is not a plain token (a sender's misplaced text, e.g. with spaces) is counted as `(other)`."""
    plain: Counter[str] = Counter()
    for name, n in counter.items():
        plain[name if _PLAIN_NAME.match(name) else "(other)"] += n
    return ", ".join(f"{name} {n}" for name, n in sorted(plain.items(), key=lambda item: (-item[1], item[0])))
