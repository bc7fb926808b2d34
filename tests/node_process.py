"""Run a real `edge-node run` subprocess for end-to-end tests.

`NodeProcess(tmp_path, config_text)` writes the config, starts `python -m node run --config ...` with
the working directory set to `tmp_path`, waits for the "edge-node ready:" log line and reads the bound
ports from it (configs use port 0). `stop()` sends SIGTERM and returns the exit status; `kill()` sends
SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

READY = re.compile(r"edge-node ready: (?P<status>.*)$")
ADDRESS = re.compile(r"(?P<name>[\w-]+)=(?:(?P<scheme>[a-z]+)://)?(?P<host>[\w.:\[\]-]+):(?P<port>\d+)")

REPO = Path(__file__).resolve().parents[1]


class NodeProcess:
    """A running `edge-node run`; stderr is collected in `.log_lines`."""

    def __init__(self, workdir: Path, config_text: str, *, env: dict[str, str] | None = None,
                 ready_timeout: float = 30.0) -> None:
        self.workdir = workdir
        self.config = workdir / "config.toml"
        self.config.write_text(config_text, encoding="utf-8")
        self.log_lines: list[str] = []
        self.ports: dict[str, int] = {}
        self._ready = threading.Event()
        base = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_NODE_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node", "run", "--config", str(self.config)],
            cwd=workdir, env={**base, "PYTHONPATH": str(REPO), **(env or {})},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._ready.wait(ready_timeout):
            self.kill()
            raise RuntimeError("edge-node did not become ready:\n" + "\n".join(self.log_lines[-30:]))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log_lines.append(line.rstrip("\n"))
            match = READY.search(line)
            if match:
                for address in ADDRESS.finditer(match.group("status")):
                    self.ports[address.group("name")] = int(address.group("port"))
                self._ready.set()

    @property
    def log(self) -> str:
        return "\n".join(self.log_lines)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close()
        return code

    def _close(self) -> None:
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(30)
        self._close()
        return code

    def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.proc.wait(max(0.0, deadline - time.monotonic()))


TEST_STORE_OPTIONS = "min_free_bytes = 0"
"""`[store]` lines of every test config: no free-space low-water mark (the default 512 MiB would refuse
every message on a CI machine with little free disk); tests about space set their own limits."""


def mllp_only_config(store: str = "node.db", *, metrics: bool = True, extra_feed: str = "",
                     harmonize: str = "enabled = false", store_options: str = TEST_STORE_OPTIONS) -> str:
    """A config with one MLLP feed named `mllp` on 127.0.0.1, port 0. The harmonizer is off unless
    `harmonize` (the body of the `[harmonize]` table) says otherwise: intake tests see rows `staged`.
    `store_options`: more lines of the `[store]` table (default: no free-space low-water mark)."""
    return (
        f'[node]\nsite_id = "test-site"\nshutdown_timeout_s = 10\n[store]\npath = "{store}"\n{store_options}\n'
        f'[metrics]\nenabled = {"true" if metrics else "false"}\nport = 0\n'
        f"[harmonize]\n{harmonize}\n"
        '[[feeds]]\nname = "mllp"\ntype = "mllp"\nhost = "127.0.0.1"\nport = 0\n' + extra_feed
    )
