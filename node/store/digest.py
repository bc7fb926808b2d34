"""The fingerprint of a stored outbound body: equal contents, equal fingerprint (node.push.batcher uses it
to let unchanged repeats of a resource go in any order)."""

from __future__ import annotations

import hashlib


def fingerprint(body: str | bytes | None) -> str:
    """A digest of a stored body (blake2b, 16 bytes, hex)."""
    data = body.encode("utf-8") if isinstance(body, str) else (body or b"")
    return hashlib.blake2b(data, digest_size=16).hexdigest()
