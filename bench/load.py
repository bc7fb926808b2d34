"""The MLLP load generator: `python -m bench.load --port P --senders N [--rate R]`, run as its OWN process.

It prints one JSON object on stdout (see `_summary`) and exits 0, or 1 when any ACK was missing, late
beyond the time limit, or not `MSA|AA|<our MSH-10>`.

Why one separate process, and why this shape, on a 2-core machine:

- The senders must not share an interpreter (GIL, event loop) with the node: then every microsecond the
  client spends would be charged to the server. So the node is one process, the load another.
- ONE load process, not one per core: the node needs a core for itself (its event loop; its writer
  thread mostly waits in fsync, which releases the GIL). A second load process would only fight the node
  for the second core, and a stop-and-wait client never needs more than one core to keep up with a
  server that answers each message in tens of microseconds.
- Closed loop (`--rate 0`): N `asyncio.Protocol` senders on one event loop. Protocols (not streams, not
  threads) cost the least per message: a write, one `data_received`, a `find` — a third or less of what
  the node spends per message, so the client is not the bottleneck (its CPU share is reported, to check).
  Each sender is stop-and-wait: send one frame, wait for the whole ACK frame, check it, send the next.
- Open loop (`--rate R`): C blocking-socket threads, each with its own fixed schedule (period C/R,
  offset i/R, so the connections interleave). `time.sleep` wakes within ~0.1 ms, while an asyncio timer
  may fire up to 1 ms late (epoll's millisecond timeout), which would be charged to the node's latency.
  Latency is measured from the SCHEDULED send time: a late ACK delays the next send and that delay
  counts (no coordinated omission). At 1,000 msg/s the GIL hand-offs between 4 threads cost nothing.

Warm-up: messages ACKed (closed loop) or scheduled (open loop) during the first `--warmup` seconds are
not counted. Every message has a unique MSH-10, so the node stores one row per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

START, END = b"\x0b", b"\x1c\r"
ACK_LIMIT_S = 10.0
"""An ACK later than this is an error (the node is stuck): the scenario fails."""

perf = time.perf_counter


# -- the message ---------------------------------------------------------------------------------------

def _adt_a01_parts() -> tuple[bytes, bytes]:
    """A realistic ~1 KB ADT^A01 (v2.5, UTF-8 with umlauts, as German feeds send them), split around
    MSH-10 so each message costs only a concatenation."""
    segments = [
        "MSH|^~\\&|KIS|KLINIKUM^1.2.276.0.76.3.1.1^ISO|EDGE|DIZ|20240315103000+0100||ADT^A01^ADT_A01|"
        "\0|P|2.5||||||UNICODE UTF-8",
        "EVN|A01|20240315103000|||USR123^Pförtner^Karl^^^Dr.|20240315102500",
        "PID|1||4711^^^KLINIKUM^PI~V123456789^^^AOK^NII||Müller^Hans^Jürgen^^Dr.^^L||19650412|M|||"
        "Hauptstraße 5^^Gießen^^35392^DE^H||0641 1234^PRN^PH~0170 9876543^PRN^CP|0641 5678^WPN^PH|DE|M|"
        "ROK|||||||N||DE",
        "NK1|1|Müller^Erika^^^^^L|SPO^Spouse^HL70063|Hauptstraße 5^^Gießen^^35392^DE^H|0641 1234^PRN^PH",
        "PV1|1|I|STAT1^101^1^KLINIKUM^^^^N||||1234^Schäfer^Jürgen^^^Dr.|5678^Weiß^Anna^^^Dr.||INN|||||"
        "|||1234^Schäfer^Jürgen^^^Dr.|IN|F0001234^^^KLINIKUM^VN|||||||||||||||||||KLINIKUM||||"
        "|20240315103000",
        "PV2|||^Thoraxschmerz unklarer Genese||||||20240320|5",
        "DG1|1||I20.0^Instabile Angina pectoris^I10-2024||20240315103000|AD",
        "AL1|1|DA|^Penicillin|SV|Exanthem",
        "IN1|1|AOK^AOK Hessen|108310400^^^^NII|AOK Hessen|Basler Straße 2^^Bad Homburg^^61352^DE||||||"
        "|||||Müller^Hans^Jürgen|SEL|19650412",
        "OBX|1|NM|8302-2^Körpergröße^LN||182|cm^cm^UCUM|||||F|||20240315103000",
        "OBX|2|NM|29463-7^Körpergewicht^LN||84.5|kg^kg^UCUM|||||F|||20240315103000",
    ]
    text = "\r".join(segments) + "\r"
    head, tail = text.encode("utf-8").split(b"\0")
    return head, tail


HEAD, TAIL = _adt_a01_parts()
MESSAGE_BYTES = len(HEAD) + len(TAIL) + 20
"""Payload size with a 20-character MSH-10 (the ids below)."""


RUN_ID = os.urandom(3).hex().upper().encode()
"""Makes MSH-10 unique across runs too (a resend of an old id would be answered as a duplicate)."""


def _control_id(connection: int, seq: int) -> bytes:
    """A unique 20-character MSH-10 (the most an ST of v2.5 holds)."""
    return b"B%s%02d%011d" % (RUN_ID, connection % 100, seq)


def _check_ack(ack: bytes, control_id: bytes) -> str | None:
    """None if `ack` (a frame payload) is `MSA|AA|<control_id>`, else the problem."""
    at = ack.find(b"\rMSA|")
    if at < 0:
        return "ACK without MSA"
    stop = ack.find(b"\r", at + 5)
    msa = ack[at + 5 : stop if stop >= 0 else len(ack)].split(b"|")
    if msa[0] != b"AA":
        return f"MSA-1 is {msa[0]!r}, not AA"
    if len(msa) < 2 or msa[1] != control_id:
        return "MSA-2 does not echo MSH-10"
    return None


# -- results ---------------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Run:
    warm_end: float = 0.0
    end: float = 0.0
    latencies: list[float] = field(default_factory=list)
    completed_in_window: int = 0
    sent: int = 0
    acked: int = 0
    errors: list[str] = field(default_factory=list)
    node_cpu: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    machine_cpu: list[float] = field(default_factory=list)

    def error(self, text: str) -> None:
        if len(self.errors) < 10:
            self.errors.append(text)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat", "rb") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def _sample_cpu(run: _Run, node_pid: int) -> None:
    run.node_cpu.append(_cpu_seconds(node_pid) if node_pid else 0.0)
    run.client_cpu.append(time.process_time())
    run.machine_cpu.append(machine_busy_seconds())


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def _summary(run: _Run, seconds: float) -> dict[str, object]:
    ordered = sorted(run.latencies)
    window = run.end - run.warm_end
    cpu = {}
    if len(run.node_cpu) == 2:
        cpu = {"node_cpu": (run.node_cpu[1] - run.node_cpu[0]) / window,
               "client_cpu": (run.client_cpu[1] - run.client_cpu[0]) / window,
               "machine_cpu": (run.machine_cpu[1] - run.machine_cpu[0]) / window}
    return {
        "rate": run.completed_in_window / seconds,
        "measured": len(ordered),
        "p50_ms": _percentile(ordered, 50) * 1e3 if ordered else None,
        "p90_ms": _percentile(ordered, 90) * 1e3 if ordered else None,
        "p99_ms": _percentile(ordered, 99) * 1e3 if ordered else None,
        "p999_ms": _percentile(ordered, 99.9) * 1e3 if ordered else None,
        "max_ms": ordered[-1] * 1e3 if ordered else None,
        "sent": run.sent,
        "acked": run.acked,
        "message_bytes": MESSAGE_BYTES,
        "errors": run.errors,
        **cpu,
    }


# -- closed loop: asyncio protocols ---------------------------------------------------------------------

class _Sender(asyncio.Protocol):
    """One stop-and-wait connection."""

    def __init__(self, run: _Run, index: int, finished: asyncio.Future[None]) -> None:
        self.run = run
        self.index = index
        self.finished = finished
        self.transport: asyncio.Transport | None = None
        self.seq = 0
        self.control_id = b""
        self.sent_at = 0.0
        self.buffer = b""
        self.waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_next(self) -> None:
        now = perf()
        if now >= self.run.end:
            if not self.finished.done():
                self.finished.set_result(None)
            return
        self.seq += 1
        self.control_id = _control_id(self.index, self.seq)
        self.sent_at = now
        self.waiting = True
        self.run.sent += 1
        assert self.transport is not None
        self.transport.write(START + HEAD + self.control_id + TAIL + END)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        end = buffer.find(END)
        if end < 0:
            self.buffer = buffer
            return
        self.buffer = buffer[end + 2 :]
        done = perf()
        run = self.run
        if not self.waiting:
            run.error("ACK without a message")
            return
        self.waiting = False
        run.acked += 1
        problem = _check_ack(buffer[buffer.find(START) + 1 : end], self.control_id)
        if problem is not None:
            run.error(problem)
        elif run.warm_end <= done < run.end:
            run.completed_in_window += 1
            run.latencies.append(done - self.sent_at)
        self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.run.error(f"connection lost: {exc or 'closed by the node'}")
            self.finished.set_result(None)


async def _closed_loop(host: str, port: int, senders: int, warmup: float, seconds: float,
                       node_pid: int) -> _Run:
    loop = asyncio.get_running_loop()
    run = _Run()
    protocols: list[_Sender] = []
    for index in range(senders):
        finished: asyncio.Future[None] = loop.create_future()
        _, protocol = await loop.create_connection(
            lambda index=index, finished=finished: _Sender(run, index, finished), host, port)
        protocols.append(protocol)
    start = perf()
    run.warm_end = start + warmup
    run.end = run.warm_end + seconds
    for protocol in protocols:
        protocol.send_next()
    await asyncio.sleep(max(0.0, run.warm_end - perf()))
    _sample_cpu(run, node_pid)
    await asyncio.sleep(max(0.0, run.end - perf()))
    _sample_cpu(run, node_pid)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.finished for p in protocols)), ACK_LIMIT_S)
    except TimeoutError:
        run.error(f"no ACK within {ACK_LIMIT_S} s")
    for protocol in protocols:
        if protocol.transport is not None:
            protocol.transport.close()
    return run


# -- open loop: paced threads ---------------------------------------------------------------------------

def _paced(host: str, port: int, connections: int, rate: float, warmup: float, seconds: float,
           node_pid: int) -> _Run:
    run = _Run()
    lock = threading.Lock()
    socks = []
    for _ in range(connections):
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(ACK_LIMIT_S)
        socks.append(sock)
    start = perf() + 0.01
    run.warm_end = start + warmup
    run.end = run.warm_end + seconds
    period = connections / rate

    def sender(index: int, sock: socket.socket) -> None:
        due = start + index / rate
        seq = 0
        latencies: list[float] = []
        completed = sent = acked = 0
        try:
            while due < run.end:
                delay = due - perf()
                if delay > 0:
                    time.sleep(delay)
                seq += 1
                control_id = _control_id(index, seq)
                sock.sendall(START + HEAD + control_id + TAIL + END)
                sent += 1
                buffer = b""
                while (end := buffer.find(END)) < 0:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed by the node")
                    buffer += chunk
                done = perf()
                acked += 1
                problem = _check_ack(buffer[buffer.find(START) + 1 : end], control_id)
                if problem is not None:
                    with lock:
                        run.error(problem)
                    break
                if due >= run.warm_end:
                    latencies.append(done - due)  # from the SCHEDULED time: no coordinated omission
                if run.warm_end <= done < run.end:
                    completed += 1
                due += period
        except (OSError, ConnectionError) as exc:
            with lock:
                run.error(f"connection {index}: {exc}")
        with lock:
            run.latencies += latencies
            run.completed_in_window += completed
            run.sent += sent
            run.acked += acked

    threads = [threading.Thread(target=sender, args=(i, sock)) for i, sock in enumerate(socks)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, run.warm_end - perf()))
    _sample_cpu(run, node_pid)
    time.sleep(max(0.0, run.end - perf()))
    _sample_cpu(run, node_pid)
    for thread in threads:
        thread.join()
    for sock in socks:
        sock.close()
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--senders", type=int, default=1, help="connections")
    parser.add_argument("--rate", type=float, default=0.0, help="offered msg/s in total; 0: closed loop")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--node-pid", type=int, default=0, help="to report the node's CPU use")
    args = parser.parse_args(argv)
    if args.rate > 0:
        run = _paced(args.host, args.port, args.senders, args.rate, args.warmup, args.seconds, args.node_pid)
    else:
        run = asyncio.run(_closed_loop(args.host, args.port, args.senders, args.warmup, args.seconds,
                                       args.node_pid))
    if not run.errors and run.sent != run.acked:
        run.error(f"{run.sent - run.acked} messages without ACK")
    json.dump(_summary(run, args.seconds), sys.stdout)
    sys.stdout.write("\n")
    return 1 if run.errors else 0


if __name__ == "__main__":
    sys.exit(main())
