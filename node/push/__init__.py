"""The push stage's transport: sinks that deliver transaction Bundles (central's FHIR endpoint or a
directory), the classification of what came back, credentials, and when to retry.

    sink = make_sink(settings.central)           # FHIRClient or FileSink; ConfigError on bad files
    outcome = await sink.post_transaction(bundle_bytes, batch_id="b-000123")
    outcome.kind  # ok | rejected | too_large | throttled | transient | auth | misconfigured

The batching/push worker sits on top: it builds the bundles, consults a CircuitBreaker before each
attempt and decides what each outcome means for its rows.
"""

from node.push.auth import AuthError, AuthProvider, BearerTokenFile, OAuth2ClientCredentials, make_auth
from node.push.backoff import Backoff, BreakerSnapshot, BreakerState, CircuitBreaker, full_jitter
from node.push.client import FHIRClient, build_ssl_context
from node.push.file_sink import FileSink, directory_from_url, make_sink
from node.push.outcome import (
    EntryResult,
    OutcomeKind,
    PushOutcome,
    Sink,
    classify_exception,
    classify_response,
    parse_retry_after,
)

__all__ = [
    "AuthError",
    "AuthProvider",
    "Backoff",
    "BearerTokenFile",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "EntryResult",
    "FHIRClient",
    "FileSink",
    "OAuth2ClientCredentials",
    "OutcomeKind",
    "PushOutcome",
    "Sink",
    "build_ssl_context",
    "classify_exception",
    "classify_response",
    "directory_from_url",
    "full_jitter",
    "make_auth",
    "make_sink",
    "parse_retry_after",
]
