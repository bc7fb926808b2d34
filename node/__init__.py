"""edge-node: a per-site HL7 v2 / FHIR R4 data-integration node."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-node")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
