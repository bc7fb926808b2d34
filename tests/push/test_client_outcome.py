"""The pure classification of answers and exceptions (node.push.outcome): the corners the server tests
do not reach."""

from __future__ import annotations

import json
import socket
import ssl
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from node.push.outcome import (
    OutcomeKind,
    check_batch_id,
    classify_exception,
    classify_response,
    entry_indexes,
    parse_retry_after,
    summarize_outcome,
)


def oo(*issues: dict[str, Any]) -> bytes:
    return json.dumps({"resourceType": "OperationOutcome", "issue": list(issues)}).encode()


def response_bundle(*entries: object, kind: str = "transaction-response") -> bytes:
    return json.dumps({"resourceType": "Bundle", "type": kind, "entry": list(entries)}).encode()


NO_HEADERS: CIMultiDict[str] = CIMultiDict()


def test_an_empty_transaction_response_is_ok() -> None:
    assert classify_response(200, NO_HEADERS, response_bundle()).kind is OutcomeKind.OK


def test_a_batch_response_is_read_like_a_transaction_response() -> None:
    body = response_bundle({"response": {"status": "201"}}, {"response": {"status": "400 Bad Request"}},
                           kind="batch-response")
    outcome = classify_response(200, NO_HEADERS, body)
    assert outcome.kind is OutcomeKind.REJECTED and outcome.rejected_entries == (1,)


def test_an_entry_without_a_status_is_a_protocol_problem_not_a_rejection() -> None:
    outcome = classify_response(200, NO_HEADERS, response_bundle({"response": {"status": "200 OK"}}, {}))
    assert outcome.kind is OutcomeKind.MISCONFIGURED and "entry[1]" in outcome.reason


def test_a_404_pointing_at_an_entry_is_a_rejection() -> None:
    body = oo({"severity": "error", "code": "not-found", "location": ["Bundle.entry[2].request.url"]})
    outcome = classify_response(404, NO_HEADERS, body)
    assert outcome.kind is OutcomeKind.REJECTED and outcome.rejected_entries == (2,)


def test_a_404_without_entry_pointers_is_misconfigured() -> None:
    body = oo({"severity": "error", "code": "not-found", "diagnostics": "Unknown resource type 'fhirr4'"})
    assert classify_response(404, NO_HEADERS, body).kind is OutcomeKind.MISCONFIGURED


def test_409_and_412_are_rejections_without_entry_indexes_when_none_are_given() -> None:
    for status in (409, 412):
        outcome = classify_response(status, NO_HEADERS, oo({"severity": "error", "code": "conflict"}))
        assert outcome.kind is OutcomeKind.REJECTED and outcome.rejected_entries == ()


def test_a_4xx_without_an_operation_outcome_is_no_verdict_on_the_data() -> None:
    outcome = classify_response(400, NO_HEADERS, b"<html>400 Request Header Or Cookie Too Large</html>")
    assert outcome.kind is OutcomeKind.MISCONFIGURED and "proxy" in outcome.reason


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308, 405, 406, 410, 415, 501])
def test_statuses_a_retry_cannot_fix_without_an_operator_are_misconfigured(status: int) -> None:
    assert classify_response(status, NO_HEADERS, b"").kind is OutcomeKind.MISCONFIGURED


def test_proxy_authentication_required_is_auth() -> None:
    assert classify_response(407, NO_HEADERS, b"").kind is OutcomeKind.AUTH


def test_entry_indexes_come_from_expression_and_location_only() -> None:
    outcome = {"issue": [
        {"expression": ["Bundle.entry[3].resource.birthDate", "Bundle.entry[3]"]},
        {"location": ["Bundle.entry[0]"]},
        {"diagnostics": "Bundle.entry[7] looks odd"},
        "garbage",
    ]}
    assert entry_indexes(outcome) == (0, 3)


def test_the_summary_names_codes_never_diagnostics() -> None:
    outcome = {"issue": [{"severity": "error", "code": "invalid", "diagnostics": "Leakcheck born 1980"},
                         {"severity": "warning", "code": "<script>"}]}
    text = summarize_outcome(outcome, (1,))
    assert text == "OperationOutcome: 2 issues (error/invalid, warning/?), entries [1]"


@pytest.mark.parametrize(("header", "expected"), [
    ("120", 120.0), ("  5 ", 5.0), ("0", 0.0), ("-3", 0.0), ("1.5", 1.5), ("soon", None), ("", None), ("nan", None)])
def test_retry_after_seconds(header: str, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_retry_after_http_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now=now) == 90.0
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None


def test_retry_after_on_other_statuses_is_kept() -> None:
    outcome = classify_response(500, CIMultiDict({"Retry-After": "12"}), b"")
    assert outcome.kind is OutcomeKind.TRANSIENT and outcome.retry_after_s == 12.0


# -- exceptions ---------------------------------------------------------------------------------------------


def connection_key() -> Any:
    return aiohttp.client_reqrep.ConnectionKey("central.example", 443, True, True, None, None, None)


def test_certificate_errors_are_misconfigured() -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "certificate has expired"
    wrapped = aiohttp.ClientConnectorCertificateError(connection_key(), error)
    outcome = classify_exception(wrapped)
    assert outcome.kind is OutcomeKind.MISCONFIGURED and "certificate has expired" in outcome.reason


@pytest.mark.parametrize(("reason", "kind"), [
    ("TLSV1_ALERT_UNKNOWN_CA", OutcomeKind.MISCONFIGURED),
    ("SSLV3_ALERT_BAD_CERTIFICATE", OutcomeKind.MISCONFIGURED),
    ("WRONG_VERSION_NUMBER", OutcomeKind.MISCONFIGURED),
    ("DECRYPTION_FAILED_OR_BAD_RECORD_MAC", OutcomeKind.TRANSIENT),
])
def test_tls_errors_are_misconfigured_only_when_about_certificates_or_versions(reason: str,
                                                                               kind: OutcomeKind) -> None:
    error = ssl.SSLError(1, reason)
    error.reason = reason
    wrapped = aiohttp.ClientConnectorSSLError(connection_key(), error)
    assert classify_exception(wrapped).kind is kind


def test_network_failures_are_transient() -> None:
    dns = aiohttp.ClientConnectorError(connection_key(), socket.gaierror(-2, "Name or service not known"))
    refused = aiohttp.ClientConnectorError(connection_key(), ConnectionRefusedError(111, "Connection refused"))
    for exc in (dns, refused, aiohttp.ServerDisconnectedError(), TimeoutError(), ConnectionResetError(104, "reset"),
                aiohttp.ClientPayloadError("Response payload is not completed"), ssl.SSLEOFError(8, "EOF")):
        assert classify_exception(exc).kind is OutcomeKind.TRANSIENT, exc
    assert "DNS" in classify_exception(dns).reason


def test_proxy_refusals_by_status() -> None:
    info = aiohttp.RequestInfo(URL("https://central.example/fhir"), "CONNECT", CIMultiDict(),
                               URL("https://central.example/fhir"))
    for status, kind in ((407, OutcomeKind.AUTH), (502, OutcomeKind.TRANSIENT), (403, OutcomeKind.MISCONFIGURED)):
        assert classify_exception(aiohttp.ClientHttpProxyError(info, (), status=status)).kind is kind


def test_an_invalid_url_is_misconfigured() -> None:
    assert classify_exception(aiohttp.InvalidURL("http://[::1")).kind is OutcomeKind.MISCONFIGURED


@pytest.mark.parametrize("batch_id", ["b1", "batch-000001", "2024-01-01T00.00_x", "A" * 128])
def test_valid_batch_ids(batch_id: str) -> None:
    assert check_batch_id(batch_id) == batch_id
