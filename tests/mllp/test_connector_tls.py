"""MLLP over TLS and mutual TLS with real certificates (trustme) written to files: the node loads them
through the feed settings, `edge-node send` runs as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from connectors.mllp.ack import AckCode
from connectors.mllp.framing import Frame, MLLPFramer, frame
from tests.conftest import REPO
from tests.mllp.conftest import StartNode, eventually, hl7_message

CLIENT_ERRORS = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1, a client certificate from the same CA, and one from a
    CA the node does not know."""
    base = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("sender.klinikum.example")
    stranger = other_ca.issue_cert("sender.klinikum.example")
    paths = Pki(*(base / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key",
                                           "stranger.pem", "stranger.key")))
    ca.cert_pem.write_to_path(str(paths.ca))
    for leaf, cert, key in ((server, paths.server_cert, paths.server_key),
                            (client, paths.client_cert, paths.client_key),
                            (stranger, paths.stranger_cert, paths.stranger_key)):
        for blob in leaf.cert_chain_pems:
            blob.write_to_path(str(cert), append=True)
        leaf.private_key_pem.write_to_path(str(key))
    return paths


async def edge_node_send(*args: str | Path) -> tuple[int, str, str]:
    """`python -m node send ARGS` as a subprocess (without blocking the in-process node's loop)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_NODE_")} | {"PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node", "send", *map(str, args), cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_edge_node_send_over_tls_gets_aa_from_a_tls_feed(running_node: StartNode, pki: Pki,
                                                               tmp_path: Path) -> None:
    node = await running_node(tls_cert=pki.server_cert, tls_key=pki.server_key)
    message = tmp_path / "tls.hl7"
    message.write_bytes(hl7_message("TLS-1"))

    code, out, err = await edge_node_send("--tls", "--ca", pki.ca, "--port", node.port, message)

    assert code == 0, out + err
    assert out.split() == [f"{message}:1", "#1", "TLS-1", "AA"]
    [row] = node.rows()
    assert row.raw == hl7_message("TLS-1")


async def test_plain_tcp_to_a_tls_port_gets_no_ack_and_stores_nothing(running_node: StartNode, pki: Pki) -> None:
    node = await running_node(tls_cert=pki.server_cert, tls_key=pki.server_key)
    connection = await node.raw()

    await connection.send(frame(hl7_message("PLAIN-1")))
    received = await connection.read_eof()

    assert not [e for e in MLLPFramer(1 << 20).feed(received) if isinstance(e, Frame)]
    assert node.counts() == {}


async def test_mtls_feed_accepts_a_client_certificate_from_its_ca(running_node: StartNode, pki: Pki) -> None:
    node = await running_node(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    client = await node.client(tls=True, ca=pki.ca, cert=pki.client_cert, key=pki.client_key)

    [ack] = await client.exchange(hl7_message("MTLS-1"))

    assert (ack.code, ack.control_id) == (AckCode.AA, "MTLS-1")
    assert node.counts() == {"staged": 1}


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("certificate", ["none", "other CA"])
async def test_mtls_feed_rejects_a_client_without_a_certificate_from_its_ca(
        running_node: StartNode, pki: Pki, certificate: str, version: ssl.TLSVersion) -> None:
    node = await running_node(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.minimum_version = context.maximum_version = version
    if certificate == "other CA":
        context.load_cert_chain(pki.stranger_cert, pki.stranger_key)

    if version == ssl.TLSVersion.TLSv1_2:
        # The server's verdict is part of the handshake (it drops the connection: a reset or an alert).
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.open_connection("127.0.0.1", node.port, ssl=context, server_hostname="127.0.0.1")
    else:
        # TLS 1.3: the client finishes its side of the handshake before the server checks the client
        # certificate; the server's rejection shows at the first read as an alert or a close.
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port, ssl=context,
                                                       server_hostname="127.0.0.1")
        try:
            writer.write(frame(hl7_message("MTLS-NO")))
            await writer.drain()
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data == b"", f"a client without an accepted certificate got an answer: {data!r}"
        except CLIENT_ERRORS:
            pass
        finally:
            writer.close()

    # Rejected by TLS, before the MLLP layer saw a message; the refusal is counted (and logged) as such.
    assert node.metric("edge_node_messages_received_total") == 0
    assert not any(node.metric("edge_node_mllp_connections_refused_total", reason=reason)
                   for reason in ("address not allowed", "too many connections"))
    await eventually(lambda: node.metric("edge_node_mllp_connections_refused_total",
                                         reason="tls handshake failed") == 1)
    assert node.counts() == {}
    client = await node.client(tls=True, ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    assert [a.code for a in await client.exchange(hl7_message("MTLS-2"))] == [AckCode.AA]
