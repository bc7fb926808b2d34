"""What one push attempt came to: a pure classification of an HTTP answer (or of the exception that took
its place) into a `PushOutcome`, and the `Sink` contract every push transport keeps.

Kinds and what the push worker does with them:

- `ok`: central committed the transaction (2xx and a transaction-response whose entries all carry a 2xx
  status); `entries` holds each entry's status and location, in the order sent.
- `rejected`: central refused the contents (400/409/412/422 with an OperationOutcome, a 404 whose
  OperationOutcome points at entries, or a non-2xx entry inside a 2xx answer). `rejected_entries`
  names the entries blamed, when the OperationOutcome says so; the worker bisects otherwise. Only
  this kind may ever lead to `dead` rows.
- `too_large`: 413: send smaller batches.
- `throttled`: 429, or 503 with Retry-After: central is alive and asks us to wait `retry_after_s`.
- `transient`: other 5xx, 408, timeouts, resets, refused connections, DNS errors, TLS failures that are
  not about certificates. Retried with backoff; counts towards the circuit breaker.
- `auth`: 401/403 (or 407 from the proxy, or no token from the token endpoint). Never data loss:
  retried slowly, and alerted.
- `misconfigured`: certificate problems, redirects, a 404 without entry pointers (wrong base URL?),
  a 400/409/412/422 without an OperationOutcome (an HTML page from a proxy is no verdict on the data),
  other 4xx (405, 415, ...), 2xx without a transaction-response. Retried slowly, and alerted.

`reason` texts are for logs and never contain resource contents: they name the status, issue codes,
entry indexes and exception types. An OperationOutcome may echo patient data in its diagnostics; it is
carried (for the `dead` row) in `operation_outcome`, which is left out of repr().
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

FHIR_JSON = "application/fhir+json"
"""Content-Type and Accept of every request and of the bundles the file sink writes."""

REJECTED_STATUSES = frozenset({400, 409, 412, 422})
"""Transaction-level statuses that mean "central looked at the contents and refused them"."""
AUTH_STATUSES = frozenset({401, 403, 407})
TRANSIENT_STATUSES = frozenset({408})
TRANSACTION_RESPONSE_TYPES = frozenset({"transaction-response", "batch-response"})

_ENTRY_POINTER = re.compile(r"\bBundle\.entry\[(\d+)\]")
_BATCH_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_MAX_REASON = 300


class OutcomeKind(StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    TOO_LARGE = "too_large"
    THROTTLED = "throttled"
    TRANSIENT = "transient"
    AUTH = "auth"
    MISCONFIGURED = "misconfigured"


RETRY_LATER = frozenset({OutcomeKind.THROTTLED, OutcomeKind.TRANSIENT, OutcomeKind.AUTH, OutcomeKind.MISCONFIGURED})
"""Kinds after which the same batch is sent again later: nothing is wrong with its contents."""


@dataclass(frozen=True, slots=True)
class EntryResult:
    """One entry of a transaction-response: `status` as sent ("201 Created"), its code, and where the
    resource now lives ("Patient/abc/_history/2"). `outcome` is the entry's OperationOutcome, if any."""

    index: int
    status: str
    code: int | None
    location: str | None = None
    etag: str | None = None
    outcome: dict[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """The result of one push attempt. See the module docstring for the kinds."""

    kind: OutcomeKind
    reason: str
    status: int | None = None
    """HTTP status of the transaction, when there was an HTTP answer."""
    retry_after_s: float | None = None
    """Seconds central asked us to wait (Retry-After), when it said so."""
    entries: tuple[EntryResult, ...] = ()
    """Per-entry results of a transaction-response (empty for the file sink and for failures)."""
    rejected_entries: tuple[int, ...] = ()
    """0-based indexes of the entries the answer blames (only for `rejected`)."""
    operation_outcome: dict[str, Any] | None = field(default=None, repr=False)
    """The OperationOutcome central sent (transaction level, or of the first failing entry)."""

    @property
    def ok(self) -> bool:
        return self.kind is OutcomeKind.OK

    @property
    def retry_later(self) -> bool:
        """The same batch should be sent again later (throttled, transient, auth, misconfigured)."""
        return self.kind in RETRY_LATER


class Sink(Protocol):
    """Where transaction Bundles go: central's FHIR endpoint (FHIRClient) or a directory (FileSink)."""

    async def post_transaction(self, bundle_bytes: bytes, *, batch_id: str) -> PushOutcome:
        """Deliver one transaction Bundle. Never raises for network, server or disk problems: they
        become outcomes. :raises ValueError: `batch_id` is not a valid batch id (a programming error)."""
        ...

    async def close(self) -> None:
        """Release connections and threads. Idempotent."""
        ...


def check_batch_id(batch_id: str) -> str:
    """A batch id goes into an HTTP header and a file name: 1-128 of [A-Za-z0-9._-], not starting with
    a dot. :raises ValueError: otherwise."""
    if not _BATCH_ID.match(batch_id):
        raise ValueError("batch_id must be 1-128 characters of [A-Za-z0-9._-], not starting with '.'")
    return batch_id


# -- HTTP answers ----------------------------------------------------------------------------------------


def classify_response(status: int, headers: Mapping[str, str], body: bytes, *,
                      now: float | None = None) -> PushOutcome:
    """Classify central's answer to a transaction POST.

    :param headers: response headers (case-insensitive mapping, e.g. aiohttp's CIMultiDictProxy).
    :param now: the current epoch time, for an HTTP-date Retry-After (default: time.time()).
    """
    retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
    if 200 <= status < 300:
        return _classify_success(status, body)
    if status == 429 or (status == 503 and retry_after is not None):
        return PushOutcome(OutcomeKind.THROTTLED, _reason(f"HTTP {status}", retry_after), status, retry_after)
    if (status >= 500 and status != 501) or status in TRANSIENT_STATUSES:
        return PushOutcome(OutcomeKind.TRANSIENT, _reason(f"HTTP {status}", retry_after), status, retry_after)
    if status in AUTH_STATUSES:
        return PushOutcome(OutcomeKind.AUTH, f"HTTP {status}: central refused the credentials", status)
    if status == 413:
        return PushOutcome(OutcomeKind.TOO_LARGE, "HTTP 413: the bundle is too large for central", status)
    if 300 <= status < 400:
        where = "elsewhere" if "Location" not in headers else "to another URL"
        return PushOutcome(OutcomeKind.MISCONFIGURED, f"HTTP {status}: central redirects {where}; fix the url",
                           status)
    outcome = _operation_outcome(body)
    indexes = entry_indexes(outcome) if outcome is not None else ()
    if (status in REJECTED_STATUSES and outcome is not None) or (status == 404 and indexes):
        return PushOutcome(OutcomeKind.REJECTED, f"HTTP {status}: {summarize_outcome(outcome, indexes)}", status,
                           rejected_entries=indexes, operation_outcome=outcome)
    hint = (": wrong base URL?" if status == 404
            else ": not from a FHIR server (a proxy?)" if status in REJECTED_STATUSES else "")
    return PushOutcome(OutcomeKind.MISCONFIGURED, f"HTTP {status}{hint} ({summarize_outcome(outcome, indexes)})",
                       status, operation_outcome=outcome)


def _classify_success(status: int, body: bytes) -> PushOutcome:
    bundle = _json_object(body)
    if bundle is None or bundle.get("resourceType") != "Bundle" or bundle.get("type") not in TRANSACTION_RESPONSE_TYPES:
        return PushOutcome(OutcomeKind.MISCONFIGURED,
                           f"HTTP {status} without a transaction-response Bundle: is the url a FHIR base?", status)
    raw_entries = bundle.get("entry") or []
    if not isinstance(raw_entries, list):
        return PushOutcome(OutcomeKind.MISCONFIGURED, f"HTTP {status}: Bundle.entry is not a list", status)
    entries: list[EntryResult] = []
    for index, raw in enumerate(raw_entries):
        response = raw.get("response") if isinstance(raw, dict) else None
        entry = _entry_result(index, response) if isinstance(response, dict) else None
        if entry is None:
            return PushOutcome(OutcomeKind.MISCONFIGURED,
                               f"HTTP {status}: transaction-response entry[{index}] has no response.status", status)
        entries.append(entry)
    failed = [entry for entry in entries if not (entry.code is not None and 200 <= entry.code < 300)]
    if failed:
        codes = ", ".join(f"entry[{entry.index}] {entry.code}" for entry in failed[:10])
        return PushOutcome(OutcomeKind.REJECTED, _cut(f"HTTP {status} with failed entries: {codes}"), status,
                           entries=tuple(entries), rejected_entries=tuple(entry.index for entry in failed),
                           operation_outcome=next((entry.outcome for entry in failed if entry.outcome), None))
    return PushOutcome(OutcomeKind.OK, f"HTTP {status}: {len(entries)} entries", status, entries=tuple(entries))


def _entry_result(index: int, response: dict[str, Any]) -> EntryResult | None:
    status = response.get("status")
    if not isinstance(status, str) or not status.strip():
        return None
    first = status.strip().split(maxsplit=1)[0]
    code = int(first) if first.isdigit() else None
    location = response.get("location")
    etag = response.get("etag")
    outcome = response.get("outcome")
    return EntryResult(index, status.strip(), code,
                       location if isinstance(location, str) else None,
                       etag if isinstance(etag, str) else None,
                       outcome if isinstance(outcome, dict) else None)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _operation_outcome(body: bytes) -> dict[str, Any] | None:
    value = _json_object(body)
    return value if value is not None and value.get("resourceType") == "OperationOutcome" else None


def entry_indexes(outcome: Mapping[str, Any]) -> tuple[int, ...]:
    """0-based entry indexes an OperationOutcome's issues point at through `expression` or `location`
    ("Bundle.entry[3]", "Bundle.entry[3].resource.birthDate"), sorted and without duplicates.
    Diagnostics texts are not searched: a wrong guess would send the wrong resource to `dead`."""
    found: set[int] = set()
    issues = outcome.get("issue")
    for issue in issues if isinstance(issues, list) else ():
        if not isinstance(issue, dict):
            continue
        for key in ("expression", "location"):
            paths = issue.get(key)
            for path in paths if isinstance(paths, list) else ():
                if isinstance(path, str):
                    found.update(int(match) for match in _ENTRY_POINTER.findall(path))
    return tuple(sorted(found))


def summarize_outcome(outcome: Mapping[str, Any] | None, indexes: tuple[int, ...] = ()) -> str:
    """"OperationOutcome: 2 issues (error/processing, error/value), entries [3]": severities, codes and
    indexes only, never diagnostics (they may echo resource contents)."""
    if outcome is None:
        return "no OperationOutcome"
    issues = outcome.get("issue")
    issues = [issue for issue in issues if isinstance(issue, dict)] if isinstance(issues, list) else []
    codes = ", ".join(f"{_token(issue.get('severity'))}/{_token(issue.get('code'))}" for issue in issues[:5])
    text = f"OperationOutcome: {len(issues)} issue{'s' if len(issues) != 1 else ''}"
    text += f" ({codes})" if codes else ""
    if indexes:
        text += f", entries {list(indexes[:20])}"
    return _cut(text)


def _token(value: object) -> str:
    """An issue's severity/code: a FHIR code (short, [a-z-]), anything else is shown as '?'."""
    return value if isinstance(value, str) and re.fullmatch(r"[a-z-]{1,32}", value) else "?"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds ("120") or an HTTP-date; a date in the past gives
    0.0; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _reason(base: str, retry_after: float | None) -> str:
    if retry_after is None:
        return base
    return f"{base}, Retry-After {retry_after:.1f}".rstrip("0").rstrip(".") + " s"


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


# -- exceptions instead of answers -----------------------------------------------------------------------

_CERTIFICATE_SSL_REASONS = ("CERTIFICATE", "UNKNOWN_CA", "WRONG_VERSION_NUMBER", "PROTOCOL_VERSION",
                            "UNSUPPORTED_PROTOCOL", "NO_SHARED_CIPHER", "NO_PROTOCOLS_AVAILABLE", "ACCESS_DENIED")
"""OpenSSL reasons that a retry cannot fix: certificate problems on either side (ours rejected, theirs not
trusted, expired, required), and talking TLS to a plain port or with no common protocol version."""


def classify_exception(exc: BaseException) -> PushOutcome:
    """Classify an exception raised instead of an HTTP answer (aiohttp, ssl, OS, timeouts).

    Works on the exception chain, so it understands aiohttp's wrappers without depending on which
    aiohttp version added which subclass."""
    chain = _chain(exc)
    for item in reversed(chain):  # innermost first: aiohttp's wrapper is itself an ssl.CertificateError
        if isinstance(item, ssl.SSLCertVerificationError):
            detail = getattr(item, "verify_message", None) or getattr(item, "reason", None) or _first_line(item)
            return PushOutcome(OutcomeKind.MISCONFIGURED, _cut(f"certificate verification failed: {detail}"))
        if isinstance(item, ssl.SSLError) and not isinstance(item, ssl.SSLEOFError):
            reason = str(item.reason or "")
            kind = (OutcomeKind.MISCONFIGURED if any(marker in reason for marker in _CERTIFICATE_SSL_REASONS)
                    else OutcomeKind.TRANSIENT)
            return PushOutcome(kind, _cut(f"TLS error {reason or type(item).__name__}"))
    name = type(exc).__name__
    status = getattr(exc, "status", None)
    if "Proxy" in name and isinstance(status, int) and status > 0:
        kind = (OutcomeKind.AUTH if status == 407 else OutcomeKind.TRANSIENT if status >= 500
                else OutcomeKind.MISCONFIGURED)
        return PushOutcome(kind, f"proxy answered HTTP {status} to CONNECT", status)
    if any(type(item).__name__ == "gaierror" for item in chain):
        return PushOutcome(OutcomeKind.TRANSIENT, _cut(f"DNS lookup failed ({name}): {_first_line(exc)}"))
    if any(isinstance(item, TimeoutError) for item in chain):
        return PushOutcome(OutcomeKind.TRANSIENT, f"timeout ({name})")
    if isinstance(exc, ValueError):  # aiohttp.InvalidURL and friends
        return PushOutcome(OutcomeKind.MISCONFIGURED, _cut(f"invalid URL ({name}): {_first_line(exc)}"))
    if "Redirect" in name:
        return PushOutcome(OutcomeKind.MISCONFIGURED, _cut(f"redirect ({name})"))
    return PushOutcome(OutcomeKind.TRANSIENT, _cut(f"{name}: {_first_line(exc) or 'connection failed'}"))


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    item: BaseException | None = exc
    while item is not None and item not in seen and len(seen) < 10:
        seen.append(item)
        os_error = getattr(item, "os_error", None)  # aiohttp.ClientConnectorError keeps the cause here
        item = os_error if isinstance(os_error, BaseException) and os_error not in seen else (
            item.__cause__ or item.__context__)
    return seen


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
