"""Stable FHIR resource ids from business identifiers.

An id is a hash of the site id, the resource type and the business identifiers that make the resource
what it is (patient id + assigning authority, visit number, order number + OBX set id + observation
id, ...). So an A08 overwrites what the A01 created, a resend changes nothing, and two sites never
collide. Ids never contain the identifier itself: sha256 is one-way, and the site id salts it.
(Keyed pseudonymization of what leaves the site is a separate step; these ids are stable within the
network only because the site id is part of them.)

FHIR ids are at most 64 characters of [A-Za-z0-9-.]; ours are 40 lower-case hex characters (160 bits).
"""

from __future__ import annotations

import hashlib

ID_LENGTH = 40
_SEPARATOR = "\x1f"  # unit separator: cannot occur in HL7 text, so ("a", "bc") != ("ab", "c")


def stable_id(site_id: str, resource_type: str, *parts: str) -> str:
    """The id of the `resource_type` resource identified by `parts` at `site_id`.

    :raises ValueError: when every part is empty (an id made of nothing would merge unrelated resources).
    """
    if not any(parts):
        raise ValueError(f"no business identifier for a {resource_type} id")
    text = _SEPARATOR.join((site_id, resource_type, *parts))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]
