"""Output profiles: `base` (plain FHIR R4) and `mii` (Medical Informatics Initiative core data set).

`apply(resources, profile)` runs on one message's resources after mapping and before validation:

* `base` leaves them exactly as the segment mappers and trigger events made them (no `meta.profile`).
* `mii` tags them with the MII core data set profiles and adjusts codings and identifiers the profiles
  require where the message says enough (node.harmonize.mii; its docstring has the rules and the table of
  what the profile cannot fill from HL7 v2).
"""

from __future__ import annotations

from collections.abc import Callable

from node.harmonize import mii
from node.harmonize.context import Profile, Resource

PROFILES: dict[str, Callable[[list[Resource]], None]] = {
    "base": lambda resources: None,
    "mii": mii.apply,
}
"""Profile name → function shaping one message's resources in place."""

PROFILE_URLS: dict[str, dict[str, str]] = {
    "base": {},
    "mii": dict(mii.PROFILE_URLS),
}
"""Profile name → resourceType → the canonical URL put into meta.profile (for documentation and tests)."""


def apply(resources: list[Resource], profile: Profile) -> None:
    """Shape `resources` for `profile`, in place. :raises ValueError: unknown profile (a settings bug)."""
    try:
        shape = PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown output profile {profile!r}") from None
    shape(resources)
