"""`edge-node`: run | check-config | status | send | convert.

Exit statuses: 0 success; 1 a command's own failure (e.g. a message not acknowledged AA/CA);
2 usage error (argparse); 74 the store failed with an I/O error; 78 configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node import __version__
from node.errors import EX_CONFIG, EX_IOERR, ConfigError, NodeError, StoreError
from node.settings import NodeSettings, load_settings, redacted_dump

log = logging.getLogger("edge_node")


def _add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML config file (default: $EDGE_NODE_CONFIG, else the embedded default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-node", description="Per-site HL7 v2 / FHIR integration node.")
    parser.add_argument("--version", action="version", version=f"edge-node {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the node in the foreground (systemd: Type=notify)")
    _add_config_arg(run)
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    check = commands.add_parser("check-config", help="validate the config and print it (secrets redacted)")
    _add_config_arg(check)

    status = commands.add_parser("status", help="message counts per feed and state")
    _add_config_arg(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    send = commands.add_parser("send", help="send the HL7 v2 messages in FILEs over MLLP, one by one")
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, default=2575)
    send.add_argument("--tls", action="store_true", help="connect with TLS")
    send.add_argument("--ca", type=Path, help="CA bundle to verify the server (implies --tls)")
    send.add_argument("--cert", type=Path, help="client certificate for mTLS (implies --tls)")
    send.add_argument("--key", type=Path, help="client private key for mTLS")
    send.add_argument("--server-name", help="TLS server name to verify (default: --host)")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each ACK")
    send.add_argument("files", nargs="+", type=Path, metavar="FILE")

    convert = commands.add_parser(
        "convert", help="convert the HL7 v2 messages in FILEs to FHIR R4 transaction Bundles (offline)",
        description="One transaction Bundle (PUT entries, stable ids) per message: NDJSON on stdout, or one "
                    "pretty JSON file per message with --out. Problems go to stderr as FILE:LINE: message #N: "
                    "reason. Exit 0 if every message was converted, else 1.")
    convert.add_argument("--profile", choices=["base", "mii"], default=None,
                         help="output profile (default: the feed's with --feed, else base)")
    convert.add_argument("--site-id", default=None, type=_site_id, metavar="ID",
                         help="site id seeding the stable resource ids (default: the config's, else local-dev)")
    convert.add_argument("--config", type=Path, default=None, metavar="FILE",
                         help="TOML config file to take the site id, time zone and --feed settings from")
    convert.add_argument("--feed", default=None, metavar="NAME",
                         help="use this config feed's profile, terminology maps, z_segments, encodings, "
                              "validation and skip_message_types")
    convert.add_argument("--out", type=Path, default=None, metavar="DIR",
                         help="write DIR/<file stem>-<message index>.json instead of NDJSON to stdout")
    convert.add_argument("-v", "--verbose", action="store_true", help="report every message and the totals")
    convert.add_argument("files", nargs="+", type=Path, metavar="FILE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "status":
            return _status(args)
        if args.command == "send":
            return _send(args)
        if args.command == "convert":
            return _convert(args)
    except ConfigError as exc:
        print(f"edge-node: configuration error:\n{exc}", file=sys.stderr)
        return EX_CONFIG
    except StoreError as exc:
        print(f"edge-node: store error: {exc}", file=sys.stderr)
        return EX_IOERR
    except NodeError as exc:
        print(f"edge-node: {exc}", file=sys.stderr)
        return 1
    return 2


def _check_config(args: argparse.Namespace) -> int:
    from node.toml_dump import dumps

    settings = load_settings(args.config)
    sys.stdout.write(dumps(redacted_dump(settings)))
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.config)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_run_node(settings))


SWITCH_INTERVAL_S = 0.0005
"""How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). The node's
threads hand work to each other all the time (event loop -> store writer -> event loop, push reads in
a thread): with 5 ms, an ACK whose commit is done can wait 5 ms for a thread busy building push rows."""


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (a dependency on Linux), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _run_node(settings: NodeSettings) -> int:
    from node.app import build_node

    node = build_node(settings)
    await node.startup()
    return await node.run()


def _status(args: argparse.Namespace) -> int:
    from node.store.reader import StoreReader

    settings = load_settings(args.config)
    if not settings.store.path.exists():
        print(f"edge-node: no store at {settings.store.path} (has the node run yet?)", file=sys.stderr)
        return 1
    reader = StoreReader(settings.store.path)
    try:
        counts = reader.counts()
        size = reader.database_bytes()
        try:
            outbound: dict[str, int] | None = reader.harmonize_stats().outbound
        except NodeError:  # a store not yet migrated by this version: no outbound table
            outbound = None
    finally:
        reader.close()
    push = _push_status(settings.store.path) if outbound is not None else None
    feeds = sorted({feed.name for feed in settings.feeds} | {feed for feed, _ in counts})
    table = {feed: {state: n for (f, state), n in sorted(counts.items()) if f == feed} for feed in feeds}
    if args.json:
        print(json.dumps({"store": str(settings.store.path), "store_bytes": size, "feeds": table,
                          "outbound": outbound, "push": push}))
        return 0
    from node.model import MessageState

    states = [state.value for state in MessageState]
    print(f"store {settings.store.path} ({size:,} bytes)")
    print(f"{'feed':<20}" + "".join(f"{state:>12}" for state in states))
    for feed in feeds:
        print(f"{feed:<20}" + "".join(f"{table[feed].get(state, 0):>12,}" for state in states))
    if outbound is not None:
        print(f"{'outbound':<20}" + ", ".join(f"{n:,} {state}" for state, n in outbound.items()))
    if push is not None:
        last = push["last_success"]
        batch = push["last_batch"]
        print(f"{'push':<20}last success {_when(last)}; oldest pending {push['oldest_pending_age_s']:,.0f} s; "
              f"{push['waiting_for_retry']:,} waiting for a retry")
        if batch is not None:
            status = f" HTTP {batch['http_status']}" if batch["http_status"] is not None else ""
            print(f"{'last batch':<20}#{batch['id']} {batch['outcome'] or 'in flight'}{status}, "
                  f"{batch['entries']:,} entries, {_when(batch['finished_at'] or batch['created_at'])}")
    return 0


def _push_status(path: Path) -> dict[str, Any] | None:
    """The push stage as the store records it: last confirmation, queue head age, retries, last batch
    (outcome and HTTP status, never contents). None for a store without the push tables."""
    from node.store.push import PushReader

    reader = PushReader(path)
    try:
        stats = reader.stats()
        last = reader.last_success()
        batch = reader.last_batch()
    except NodeError:
        return None
    finally:
        reader.close()
    return {"last_success": last, "oldest_pending_age_s": round(stats.oldest_pending_age_s, 3),
            "waiting_for_retry": stats.waiting_for_retry,
            "last_batch": None if batch is None else {
                "id": batch.id, "created_at": batch.created_at, "finished_at": batch.finished_at,
                "outcome": batch.outcome, "http_status": batch.http_status, "entries": batch.entries}}


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _send(args: argparse.Namespace) -> int:
    from connectors.mllp.client import SendOptions, send_files

    options = SendOptions(host=args.host, port=args.port, tls=bool(args.tls or args.ca or args.cert),
                          ca=args.ca, cert=args.cert, key=args.key, server_name=args.server_name,
                          timeout_s=args.timeout)
    return asyncio.run(send_files(options, args.files, out=sys.stdout, err=sys.stderr))


def _site_id(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", value):
        raise argparse.ArgumentTypeError("lower case letters, digits, '-' or '_' (at most 63), e.g. ukm")
    return value


def _convert(args: argparse.Namespace) -> int:
    from node.harmonize import offline

    settings = load_settings(args.config) if args.config is not None or args.feed is not None else None
    job = offline.build_job(settings=settings, feed_name=args.feed, profile=args.profile, site_id=args.site_id,
                            out_dir=args.out, verbose=args.verbose)
    return offline.run(args.files, job, sys.stdout.buffer, sys.stderr)
