"""Fixtures for the central FHIR test server's own tests: a started server per test and a tiny
synchronous HTTP client (urllib) that returns error answers instead of raising."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

import pytest

from tests.central.server import FHIR_JSON, CentralFHIRServer


@dataclass
class Reply:
    status: int
    headers: Message
    body: Any


def request(method: str, url: str, payload: object = None, *, headers: Mapping[str, str] | None = None,
            timeout: float = 5.0, context: ssl.SSLContext | None = None) -> Reply:
    """One HTTP request (a fresh connection each time); JSON bodies in and out."""
    data = payload if isinstance(payload, bytes) or payload is None else json.dumps(payload).encode()
    all_headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON} if data is not None else {}
    req = urllib.request.Request(url, data=data, headers={**all_headers, **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as response:
            return Reply(response.status, response.headers, json.loads(response.read() or b"null"))
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, json.loads(error.read() or b"null"))


def post(url: str, payload: object, **kwargs: Any) -> Reply:
    return request("POST", url, payload, **kwargs)


def get(url: str, **kwargs: Any) -> Reply:
    return request("GET", url, **kwargs)


def patient(pid: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "identifier": [{"system": "urn:site:mrn", "value": pid}],
            "name": [{"family": "Doe", "given": ["John"]}], "gender": "male", "birthDate": "1970-01-01", **fields}


def observation(oid: str, pid: str, value: float = 7.2) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "valueQuantity": {"value": value, "unit": "mmol/L"}}


@pytest.fixture
def central() -> Iterator[CentralFHIRServer]:
    """A plain-HTTP central without authentication."""
    with CentralFHIRServer() as server:
        yield server
