"""A lean local central FHIR endpoint for the push bench: `python -m bench.central [--port 0]`, run as its
OWN process (`CentralProcess`), so central's JSON parsing never shares an interpreter (GIL, event loop)
with the node it is measured against. On a 2-core machine: one core for the node, one for central.

tests/central/server.py is the real test central (fhir.resources validation of every resource, version
history with contents, faults); it costs milliseconds per resource and would measure itself, not the node.
This one does only what any FHIR server must do before it can answer a transaction:

- `POST {base}` (base `/fhir`): a `transaction` Bundle, parsed with json.loads. Every entry must be
  `PUT Type/id` with a resource of that type and id, and no (type, id) twice in one Bundle; otherwise 400
  with an OperationOutcome whose issues point at the entries (`Bundle.entry[i]`) and nothing is stored
  (all or nothing). Each resource is stored by (type, id) (the parsed JSON; versions counted), and the
  answer is a `transaction-response`: one entry per request entry, in order, `201 Created` for a new
  (type, id), `200 OK` for an update, `location` `Type/id/_history/N`, `etag` `W/"N"`.
- `GET /stats`: JSON counts (`resources` stored, `bundles`, `entries`, `created`, `updated`,
  `rejected` bundles, `bytes` received), `first_at` / `last_at` (time.time() when the first Bundle arrived
  and the last answer was ready) and `cpu_s` (central's own CPU seconds).
- `POST /stats/reset`: forget everything (counts and resources).

On start it prints ONE line on stdout: `{"port": N}` (listen on port 0 to get a free one), then serves until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web

BASE_PATH = "/fhir"
STATS_PATH = "/stats"
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
FHIR_JSON = "application/fhir+json"
ENTRY_URL = re.compile(r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})")
MAX_ISSUES = 100
REPO = Path(__file__).resolve().parents[1]


class Central:
    """The state: resources by (type, id), version counts, statistics."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        self.versions: dict[tuple[str, str], int] = {}
        self.bundles = self.entries = self.created = self.updated = self.rejected = self.bytes = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def stats(self) -> dict[str, Any]:
        return {"resources": len(self.resources), "bundles": self.bundles, "entries": self.entries,
                "created": self.created, "updated": self.updated, "rejected": self.rejected, "bytes": self.bytes,
                "first_at": self.first_at, "last_at": self.last_at, "cpu_s": time.process_time(),
                "pid": os.getpid()}

    def transaction(self, body: bytes) -> tuple[int, bytes]:
        """(status, JSON answer) for one POSTed Bundle."""
        if self.first_at is None:
            self.first_at = time.time()
        self.bytes += len(body)
        try:
            bundle = json.loads(body)
        except (ValueError, RecursionError):
            return self._reject([_issue("structure", "the body is not JSON")])
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            return self._reject([_issue("structure", "not a Bundle")])
        if bundle.get("type") != "transaction":
            return self._reject([_issue("value", "Bundle.type is not transaction", "Bundle.type")])
        entries = bundle.get("entry")
        if not isinstance(entries, list) or not entries:
            return self._reject([_issue("required", "Bundle.entry is empty", "Bundle.entry")])
        keys: list[tuple[str, str]] = []
        issues: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for index, entry in enumerate(entries):
            problem = _check_entry(entry)
            if isinstance(problem, str):
                issues.append(_issue("invalid", problem, f"Bundle.entry[{index}]"))
                continue
            if problem in seen:
                issues.append(_issue("duplicate", f"{problem[0]}/{problem[1]} twice in one transaction",
                                     f"Bundle.entry[{index}]"))
            seen.add(problem)
            keys.append(problem)
            if len(issues) >= MAX_ISSUES:
                break
        if issues:
            return self._reject(issues)
        answers = []
        resources, versions = self.resources, self.versions
        for entry, key in zip(entries, keys, strict=True):
            number = versions.get(key, 0) + 1
            versions[key] = number
            resources[key] = entry["resource"]
            if number == 1:
                self.created += 1
                status = "201 Created"
            else:
                self.updated += 1
                status = "200 OK"
            answers.append({"response": {"status": status, "location": f"{key[0]}/{key[1]}/_history/{number}",
                                         "etag": f'W/"{number}"'}})
        self.bundles += 1
        self.entries += len(keys)
        answer = json.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": answers},
                            separators=(",", ":")).encode()
        self.last_at = time.time()
        return 200, answer

    def _reject(self, issues: list[dict[str, Any]]) -> tuple[int, bytes]:
        self.rejected += 1
        self.last_at = time.time()
        return 400, json.dumps({"resourceType": "OperationOutcome", "issue": issues}).encode()


def _issue(code: str, diagnostics: str, expression: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression is not None:
        issue["expression"] = [expression]
    return issue


def _check_entry(entry: object) -> tuple[str, str] | str:
    """(type, id) of a valid `PUT Type/id` entry, else the problem."""
    if not isinstance(entry, dict):
        return "entry is not an object"
    request = entry.get("request")
    if not isinstance(request, dict) or request.get("method") != "PUT":
        return "request.method is not PUT"
    url = request.get("url")
    match = ENTRY_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        return "request.url is not Type/id"
    resource = entry.get("resource")
    if not isinstance(resource, dict):
        return "no resource"
    if resource.get("resourceType") != match["type"] or resource.get("id") != match["id"]:
        return "resource type or id differs from request.url"
    return match["type"], match["id"]


def make_app(central: Central) -> web.Application:
    async def transaction(request: web.Request) -> web.Response:
        body = await request.read()
        status, answer = central.transaction(body)
        return web.Response(status=status, body=answer, content_type=FHIR_JSON)

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(central.stats())

    async def reset(_request: web.Request) -> web.Response:
        central.reset()
        return web.json_response(central.stats())

    app = web.Application(client_max_size=MAX_BUNDLE_BYTES)
    app.router.add_post(BASE_PATH, transaction)
    app.router.add_post(BASE_PATH + "/", transaction)
    app.router.add_get(STATS_PATH, stats)
    app.router.add_post(STATS_PATH + "/reset", reset)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(make_app(Central()), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=128)
    await site.start()
    sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
    bound = sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"port": bound}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.central")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


# -- the bench's handle on it ----------------------------------------------------------------------------

class CentralProcess:
    """`python -m bench.central` as a subprocess (stderr to `log`): started in the constructor, ready when it
    returns.

    `base_url` is the FHIR base for `[central] url`; `stats()` polls GET /stats; `stop()` ends it.
    """

    def __init__(self, log: Path, host: str = "127.0.0.1", *, ready_timeout: float = 20.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = log
        with log.open("w", encoding="utf-8") as stderr:
            self.proc = subprocess.Popen([sys.executable, "-m", "bench.central", "--host", host, "--port", "0"],
                                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(ready_timeout)
        if not line or not line[0].strip():
            self.stop()
            raise RuntimeError(f"bench central did not start: {self.tail()}")
        self.port = int(json.loads(line[0])["port"])
        self.host = host
        self.root = f"http://{host}:{self.port}"
        self.base_url = self.root + BASE_PATH

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.root + STATS_PATH, timeout=10) as response:
            return json.loads(response.read())

    def reset(self) -> dict[str, Any]:
        request = urllib.request.Request(self.root + STATS_PATH + "/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def tail(self, chars: int = 500) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace").strip()[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> CentralProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
