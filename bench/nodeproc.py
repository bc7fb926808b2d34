"""A real `edge-node run` subprocess for the bench (the parsing logic of tests/node_process.py, copied:
bench/ imports nothing from tests/)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

READY = re.compile(r"edge-node ready: (?P<status>.*)$")
ADDRESS = re.compile(r"(?P<name>[\w-]+)=(?:(?P<scheme>[a-z]+)://)?(?P<host>[\w.:\[\]-]+):(?P<port>\d+)")

REPO = Path(__file__).resolve().parents[1]

FEED = "mllp"


def mllp_config(store: str = "node.db") -> str:
    """One MLLP feed on 127.0.0.1, port 0; metrics disabled.

    The harmonizer workers are disabled too: the intake section measures MLLP -> store -> ACK, and on 2
    cores two worker processes converting every staged message would take the CPU the intake figures
    are about (the harmonize section measures them on their own).
    """
    return (
        '[node]\nsite_id = "bench-site"\nshutdown_timeout_s = 10\n'
        f'[store]\npath = "{store}"\nmin_free_bytes = 0\n'
        "[metrics]\nenabled = false\nport = 0\n"
        "[harmonize]\nenabled = false\n"
        f'[[feeds]]\nname = "{FEED}"\ntype = "mllp"\nhost = "127.0.0.1"\nport = 0\n'
    )


class NodeProcess:
    """`python -m node run --config <workdir>/config.toml` with cwd `workdir`; stderr kept in `log_lines`."""

    def __init__(self, workdir: Path, config_text: str, *, ready_timeout: float = 30.0) -> None:
        self.workdir = workdir
        self.config = workdir / "config.toml"
        self.config.write_text(config_text, encoding="utf-8")
        self.log_lines: list[str] = []
        self.ports: dict[str, int] = {}
        self._ready = threading.Event()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_NODE_")}
        env["PYTHONPATH"] = str(REPO)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node", "run", "--config", str(self.config)],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._ready.wait(ready_timeout):
            self.kill()
            raise RuntimeError("edge-node did not become ready:\n" + self.tail())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log_lines.append(line.rstrip("\n"))
            match = READY.search(line)
            if match:
                for address in ADDRESS.finditer(match.group("status")):
                    self.ports[address.group("name")] = int(address.group("port"))
                self._ready.set()

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log_lines[-n:])

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()
        self._reader.join(5)
        return code

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(30)
        self._reader.join(5)
        return code
