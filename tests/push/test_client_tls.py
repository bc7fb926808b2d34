"""FHIRClient over TLS and mutual TLS with real certificates (trustme, through the central test
server), loaded from files the way the settings name them."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from node.errors import ConfigError
from node.push.client import FHIRClient, build_ssl_context
from node.push.outcome import OutcomeKind
from node.settings import CREDENTIALS_ENV
from tests.central.server import CentralFHIRServer, ClientFiles
from tests.push.conftest import bundle_bytes, section

MakeClient = Callable[..., FHIRClient]


@pytest.fixture(scope="module")
def tls_central() -> Iterator[CentralFHIRServer]:
    with CentralFHIRServer(tls=True, shutdown_timeout=0.5) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_central() -> Iterator[CentralFHIRServer]:
    with CentralFHIRServer(require_client_cert=True, shutdown_timeout=0.5) as server:
        yield server


def files(server: CentralFHIRServer, directory: Path) -> ClientFiles:
    return server.write_client_files(directory)


async def test_the_ca_bundle_verifies_central(tls_central: CentralFHIRServer, make_client: MakeClient,
                                              tmp_path: Path) -> None:
    client = make_client(tls_central.base_url, ca_bundle=files(tls_central, tmp_path).ca_bundle)
    outcome = await client.post_transaction(bundle_bytes(), batch_id="b1")
    assert outcome.ok


async def test_a_certificate_from_an_unknown_ca_is_misconfigured(tls_central: CentralFHIRServer,
                                                                 make_client: MakeClient, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))

    outcome = await make_client(tls_central.base_url, ca_bundle=other).post_transaction(bundle_bytes(), batch_id="b1")

    assert outcome.kind is OutcomeKind.MISCONFIGURED
    assert "certificate verification failed" in outcome.reason


async def test_without_a_ca_bundle_the_system_store_does_not_trust_a_private_ca(
        tls_central: CentralFHIRServer, make_client: MakeClient) -> None:
    outcome = await make_client(tls_central.base_url).post_transaction(bundle_bytes(), batch_id="b1")
    assert outcome.kind is OutcomeKind.MISCONFIGURED


async def test_a_host_name_mismatch_is_misconfigured(make_client: MakeClient, stub: Callable[..., Any],
                                                     tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("central.example").configure_cert(server_context)  # not 127.0.0.1
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))

    async def never(_request: web.Request) -> web.Response:
        raise AssertionError("no request may pass a failed host name check")

    server = await stub(never, server_context)
    outcome = await make_client(server.url, ca_bundle=tmp_path / "ca.pem").post_transaction(
        bundle_bytes(), batch_id="b1")

    assert outcome.kind is OutcomeKind.MISCONFIGURED and "certificate" in outcome.reason


async def test_mutual_tls_with_the_client_certificate(mtls_central: CentralFHIRServer, make_client: MakeClient,
                                                      tmp_path: Path) -> None:
    pki = files(mtls_central, tmp_path)
    client = make_client(mtls_central.base_url, ca_bundle=pki.ca_bundle, client_cert=pki.client_cert,
                         client_key=pki.client_key)

    outcome = await client.post_transaction(bundle_bytes(), batch_id="b1")

    assert outcome.ok


async def test_mutual_tls_without_a_client_certificate_is_refused_not_raised(
        mtls_central: CentralFHIRServer, make_client: MakeClient, tmp_path: Path) -> None:
    client = make_client(mtls_central.base_url, ca_bundle=files(mtls_central, tmp_path).ca_bundle)

    outcome = await client.post_transaction(bundle_bytes(), batch_id="b1")

    # TLS 1.3: the server refuses the (missing) certificate after the client's handshake is done, and
    # aiohttp reports a plain disconnect: indistinguishable from a flaky network, so `transient`.
    assert outcome.kind in (OutcomeKind.TRANSIENT, OutcomeKind.MISCONFIGURED)


async def test_relative_key_files_are_read_from_the_credentials_directory(
        mtls_central: CentralFHIRServer, make_client: MakeClient, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    files(mtls_central, tmp_path)
    monkeypatch.setenv(CREDENTIALS_ENV, str(tmp_path))
    client = make_client(mtls_central.base_url, ca_bundle=Path("ca.pem"), client_cert=Path("client.pem"),
                         client_key=Path("client.key"))

    assert (await client.post_transaction(bundle_bytes(), batch_id="b1")).ok


def test_the_context_wants_tls_1_2_at_least_and_checks_host_names(tmp_path: Path) -> None:
    context = build_ssl_context(section("https://central.example/fhir"))
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.check_hostname and context.verify_mode is ssl.CERT_REQUIRED


@pytest.mark.parametrize("broken", ["missing", "garbage"])
def test_unreadable_certificate_files_are_config_errors_at_start(tmp_path: Path, broken: str) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    if broken == "garbage":
        cert.write_text("not a certificate")
        key.write_text("not a key")
    with pytest.raises(ConfigError, match=r"\[central\]"):
        FHIRClient(section("https://central.example/fhir", client_cert=cert, client_key=key))
    with pytest.raises(ConfigError):
        FHIRClient(section("https://central.example/fhir", ca_bundle=cert))


async def test_https_to_a_plain_http_port_is_misconfigured(central: CentralFHIRServer,
                                                           make_client: MakeClient) -> None:
    url = central.base_url.replace("http://", "https://")
    outcome = await make_client(url).post_transaction(bundle_bytes(), batch_id="b1")
    assert outcome.kind is OutcomeKind.MISCONFIGURED and "TLS" in outcome.reason


async def test_a_handshake_cut_off_by_the_peer_is_transient(make_client: MakeClient) -> None:
    async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()  # accepts TCP, then drops it in the middle of the TLS handshake

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        outcome = await make_client(f"https://127.0.0.1:{port}/fhir").post_transaction(bundle_bytes(), batch_id="b1")
    assert outcome.kind is OutcomeKind.TRANSIENT
