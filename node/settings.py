"""The node's configuration: one pydantic model per TOML table, loaded once at start-up.

Sources, highest precedence first: `EDGE_NODE_*` environment variables (nested keys joined with `__`,
e.g. `EDGE_NODE_STORE__PATH`), the TOML file (`--config PATH` or `EDGE_NODE_CONFIG`), and, when no
file is named, the embedded default in `DEFAULT_CONFIG_TOML`. Secrets are never read from the TOML or the
environment: keys ending in `_file` name files (relative names are looked up in systemd's
`$CREDENTIALS_DIRECTORY`) whose contents become redacted values.

`load_settings()` is the only entry point; every problem raises `ConfigError` with a text that names the
file (or environment variable) and the key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from node.errors import ConfigError

ENV_PREFIX = "EDGE_NODE_"
ENV_CONFIG_PATH = "EDGE_NODE_CONFIG"
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"

DEFAULT_CONFIG_TOML = """\
# The embedded default: `edge-node run` with no config file. Everything lives under ./var/.
[node]
site_id = "local-dev"

[store]
path = "var/edge-node.db"

[metrics]
host = "127.0.0.1"
port = 9464

[[feeds]]
name = "mllp"
type = "mllp"
host = "127.0.0.1"
port = 2575

[[feeds]]
name = "inbox"
type = "filedrop"
path = "var/inbox"
archive = "var/archive"
error = "var/error"
"""

_NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class Section(BaseModel):
    """Base of every TOML table: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def credential_path(path: Path) -> Path:
    """Resolve a secret or key file: relative names are looked up in `$CREDENTIALS_DIRECTORY`
    (systemd `LoadCredential=`) when it is set, else relative to the working directory."""
    base = os.environ.get(CREDENTIALS_ENV)
    if base and not path.is_absolute():
        return Path(base) / path
    return path


def _read_secret(path: Path) -> SecretStr:
    resolved = credential_path(path)
    try:
        return SecretStr(resolved.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ValueError(f"cannot read secret file {resolved}: {exc.strerror}") from None


class NodeSection(Section):
    """`[node]`: who this node is."""

    site_id: str = Field(default="local-dev", pattern=_NAME_RE)
    """Short site identifier (lower case, digits, '-' or '_'); seeds stable resource ids later."""
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    """On SIGTERM: how long in-flight commits may take before the node exits anyway."""


class HarmonizeSection(Section):
    """`[harmonize]`: the worker processes that turn staged HL7 v2 into FHIR R4."""

    enabled: bool = True
    """Run the harmonizer workers in this node."""
    workers: int = Field(default=2, ge=1, le=64)
    """Worker processes (CPU-bound; one per core is a good start)."""
    chunk_size: int = Field(default=64, ge=1, le=10_000)
    """Messages a worker claims and commits per transaction."""
    timezone: str = "Europe/Berlin"
    """Zone of HL7 timestamps without an offset (FHIR needs one when a time is given)."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class CentralSection(Section):
    """`[central]`: where harmonized resources go — the network's central FHIR endpoint, or a directory.

    `url` is `https://...` (a FHIR base URL; transaction Bundles are POSTed to it) or `file:///dir` (each
    batch written as a Bundle file: write, fsync, rename). Without a url the node writes to
    `file://var/outbox` (the embedded default), so the whole way can be watched on one machine.
    """

    url: str = "file://var/outbox"
    """FHIR base URL (http/https) or a `file://` directory (relative paths allowed: file://var/outbox)."""
    batch_max_entries: int = Field(default=100, ge=1, le=10_000)
    """Most entries in one transaction Bundle."""
    batch_max_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    """Most bytes of one transaction Bundle (a single larger message still travels alone)."""
    batch_max_wait_s: float = Field(default=2.0, ge=0)
    """With little traffic, send a partial batch after this long."""
    concurrency: int = Field(default=2, ge=1, le=64)
    """Batches in flight at once (different patients only: one patient's resources stay in order)."""
    connect_timeout_s: float = Field(default=10.0, gt=0)
    """TCP/TLS connect timeout."""
    read_timeout_s: float = Field(default=120.0, gt=0)
    """Time to wait for central's answer to one batch."""
    backoff_initial_s: float = Field(default=1.0, gt=0)
    """First retry delay after a transient failure (exponential, full jitter)."""
    backoff_max_s: float = Field(default=300.0, gt=0)
    """Cap of the retry delay."""
    ca_bundle: Path | None = None
    """PEM CA bundle to verify central's certificate (default: the system's trust store)."""
    client_cert: Path | None = None
    """PEM client certificate for mTLS."""
    client_key: Path | None = None
    """PEM client private key for mTLS (relative names are read from $CREDENTIALS_DIRECTORY)."""
    bearer_token_file: Path | None = None
    """File with a static bearer token (relative names are read from $CREDENTIALS_DIRECTORY)."""
    oauth_token_url: str | None = None
    """OAuth2 client-credentials token endpoint; with oauth_client_id and oauth_client_secret_file."""
    oauth_client_id: str | None = None
    """OAuth2 client id."""
    oauth_client_secret_file: Path | None = None
    """File with the OAuth2 client secret."""
    oauth_scope: str | None = None
    """OAuth2 scope to request, if central wants one."""
    proxy: str | None = None
    """HTTP(S) proxy URL for the way to central (e.g. http://proxy.klinikum.example:3128)."""

    @model_validator(mode="after")
    def _consistent(self) -> CentralSection:
        if not self.url.startswith(("http://", "https://", "file://")):
            raise ValueError("url must start with https://, http:// or file://")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key must be set together")
        oauth = (self.oauth_token_url, self.oauth_client_id, self.oauth_client_secret_file)
        if any(oauth) and not all(oauth):
            raise ValueError("oauth_token_url, oauth_client_id and oauth_client_secret_file go together")
        if self.bearer_token_file is not None and self.oauth_token_url is not None:
            raise ValueError("use either bearer_token_file or OAuth2, not both")
        return self


class StoreSection(Section):
    """`[store]`: the SQLite file holding everything the node has accepted."""

    path: Path = Path("var/edge-node.db")
    """SQLite database file; its directory is created if missing. The WAL file lives beside it."""
    max_batch: int = Field(default=512, ge=1, le=10_000)
    """Group commit: at most this many messages share one transaction and one fsync."""
    max_bytes: int | None = Field(default=None, ge=1024 * 1024)
    """Disk cap for the store (database + WAL). Above it new messages are refused (HL7 AR, HTTP 507),
    never dropped; what was accepted still drains. None: no cap."""
    min_free_bytes: int = Field(default=512 * 1024 * 1024, ge=0)
    """Free-space low-water mark of the store's file system: below it new messages are refused."""
    retention_days: float = Field(default=7.0, gt=0)
    """Payloads of pushed resources and of their inbound messages are purged after this many days
    (audit rows stay); the freed space is given back to the file system (incremental vacuum)."""
    retention_interval_s: float = Field(default=3600.0, gt=0)
    """How often the retention job runs."""


class MetricsSection(Section):
    """`[metrics]`: the HTTP endpoint serving `/metrics` (Prometheus) and `/healthz`."""

    enabled: bool = True
    """Serve the endpoint at all."""
    host: str = "127.0.0.1"
    """Interface to listen on (loopback by default: put a reverse proxy or SSH tunnel in front)."""
    port: int = Field(default=9464, ge=0, le=65535)
    """TCP port; 0 picks a free one (tests)."""


class HL7FeedBase(Section):
    """Keys shared by the HL7 v2 feeds."""

    name: str = Field(pattern=_NAME_RE)
    """Feed name: appears in metrics labels, the store and the TUI. Unique per node."""
    encoding: str = "auto"
    """`auto`: decode per MSH-18; or a Python codec name (`iso-8859-1`, `utf-8`) that overrides MSH-18."""
    fallback_encodings: list[str] = Field(default_factory=lambda: ["utf-8", "iso-8859-1"], min_length=1)
    """Tried in order when MSH-18 is empty, unknown or does not decode the bytes."""
    profile: Literal["base", "mii"] = "base"
    """Output profile of harmonized FHIR: `base` (plain R4) or `mii` (MII core data set profiles)."""
    terminology: list[Path] = Field(default_factory=list)
    """CSV maps from local codes to LOINC/SNOMED CT/ICD-10-GM/OPS/UCUM (format: node/harmonize/terminology.py)."""
    z_segments: Literal["ignore", "extension"] = "ignore"
    """Z-segments: `ignore` (counted as unmapped) or `extension` (kept on the resource before them)."""
    validation: Literal["lenient", "strict"] = "lenient"
    """`strict`: check each message's structure against its declared version with hl7apy first."""
    skip_message_types: list[str] = Field(default_factory=list)
    """Message types (e.g. "ACK", "ADT^A60") this feed ignores: stored as `skipped`, not converted."""

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        if value != "auto":
            _check_codec(value)
        return value

    @field_validator("fallback_encodings")
    @classmethod
    def _known_fallbacks(cls, values: list[str]) -> list[str]:
        for value in values:
            _check_codec(value)
        return values


def _check_codec(name: str) -> None:
    import codecs

    try:
        codecs.lookup(name)
    except LookupError:
        raise ValueError(f"unknown encoding {name!r}") from None


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class MLLPFeed(HL7FeedBase):
    """`[[feeds]] type = "mllp"`: an HL7 v2 listener speaking MLLP, optionally over TLS."""

    type: Literal["mllp"]
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = Field(default=2575, ge=0, le=65535)
    """TCP port; 0 picks a free one (tests)."""
    tls_cert: Path | None = None
    """PEM certificate chain; with `tls_key` turns TLS on."""
    tls_key: Path | None = None
    """PEM private key (relative names are read from $CREDENTIALS_DIRECTORY)."""
    tls_key_password_file: Path | None = None
    """File holding the private key's passphrase, if it has one."""
    tls_key_password: SecretStr | None = Field(default=None, exclude=False)
    """Filled from `tls_key_password_file`; never set directly."""
    tls_client_ca: Path | None = None
    """PEM CA bundle: when set, clients must present a certificate it signed (mTLS)."""
    allow: list[IPNetwork] = Field(default_factory=lambda: [ipaddress.ip_network("127.0.0.0/8"),
                                                             ipaddress.ip_network("::1/128")])
    """Source networks (CIDR) allowed to connect; others are refused. Default: loopback only."""
    max_message_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """A frame larger than this gets AR and the connection is closed."""
    idle_timeout_s: float = Field(default=120.0, gt=0)
    """A connection that sends nothing for this long (idle or half-open) is closed."""
    max_connections: int = Field(default=64, ge=1)
    """Connections beyond this are refused (closed at once)."""
    ack_policy: Literal["always", "msh"] = "always"
    """`always`: every message gets at least one acknowledgement, also when MSH-15 and MSH-16 both say
    NE (MLLP senders block waiting for one; many real feeds send NE/NE anyway). `msh`: exactly what
    MSH-15/16 ask for, per HL7 table 0155 (NE/NE gets no answer)."""

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("tls_key_password") is not None:
            raise ValueError("tls_key_password is never read from the config; use tls_key_password_file")
        return data

    @model_validator(mode="after")
    def _tls_consistent(self) -> MLLPFeed:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        if self.tls_key_password_file is not None and self.tls_key_password is None:
            object.__setattr__(self, "tls_key_password", _read_secret(self.tls_key_password_file))
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None


class FileDropFeed(HL7FeedBase):
    """`[[feeds]] type = "filedrop"`: a directory watched for HL7 v2 files (one or many messages each)."""

    type: Literal["filedrop"]
    path: Path
    """Directory to watch; created if missing."""
    pattern: str = "*.hl7"
    """Glob of file names to pick up. Others (e.g. `*.tmp` while a writer is busy) are ignored."""
    archive: Path
    """Where a fully staged file is moved."""
    error: Path
    """Where a file with unreadable messages is moved, with a `<name>.reason` file beside it."""
    settle_s: float = Field(default=1.0, ge=0)
    """A file is read only after its size and mtime have not changed for this long (for writers
    that do not write-then-rename)."""
    poll_interval_s: float = Field(default=5.0, gt=0)
    """Rescan the directory this often, in case a file-system event was missed."""


Feed = Annotated[MLLPFeed | FileDropFeed, Field(discriminator="type")]


class NodeSettings(BaseSettings):
    """The whole configuration. Build it with `load_settings()`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    node: NodeSection = Field(default_factory=NodeSection)
    store: StoreSection = Field(default_factory=StoreSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    harmonize: HarmonizeSection = Field(default_factory=HarmonizeSection)
    central: CentralSection = Field(default_factory=CentralSection)
    feeds: list[Feed] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_feed_names(self) -> NodeSettings:
        seen: set[str] = set()
        for feed in self.feeds:
            if feed.name in seen:
                raise ValueError(f"feed name {feed.name!r} is used twice")
            seen.add(feed.name)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init = the parsed TOML (see load_settings); environment overrides it.
        return (env_settings, init_settings)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for index, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif index > 0 and loc[0] == "feeds" and item in ("mllp", "filedrop") and index == 2:
            continue  # the discriminator tag pydantic puts in the path
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def _env_source_for(loc: tuple[int | str, ...]) -> str | None:
    """The environment variable that set the value at `loc`, if one did (most specific first)."""
    keys = [item for item in loc if isinstance(item, str)]
    upper = {name.upper(): name for name in os.environ}
    for depth in range(len(keys), 0, -1):
        candidate = (ENV_PREFIX + "__".join(keys[:depth])).upper()
        if candidate in upper:
            return upper[candidate]
    return None


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error["loc"])
        where = _env_source_for(loc)
        origin = f"environment {where}" if where else source
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{origin}: {_format_loc(loc)}: {message}")
    return "\n".join(lines)


def _check_env_names() -> None:
    """Unknown `EDGE_NODE_*` variables are typos; report them rather than ignore them."""
    known_top = set(NodeSettings.model_fields)
    for name in os.environ:
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == ENV_CONFIG_PATH:
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        if path[0] not in known_top:
            raise ConfigError(f"environment {name}: unknown key {path[0]!r}")
        annotation = NodeSettings.model_fields[path[0]].annotation
        nested = len(path) > 1 and isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if nested and path[1] not in annotation.model_fields:  # type: ignore[union-attr]
            raise ConfigError(f"environment {name}: unknown key {path[0]}.{path[1]}")


def config_path_from(cli_path: Path | None) -> Path | None:
    """The config file to read: the CLI's `--config`, else `$EDGE_NODE_CONFIG`, else None (embedded)."""
    if cli_path is not None:
        return cli_path
    env = os.environ.get(ENV_CONFIG_PATH)
    return Path(env) if env else None


def load_settings(path: Path | None = None) -> NodeSettings:
    """Load and validate the configuration.

    :param path: the TOML file; None reads `$EDGE_NODE_CONFIG` or, if unset, the embedded default.
    :raises ConfigError: unreadable file, TOML syntax error, unknown key, bad value. The text names the
        file (or the environment variable) and the key.
    """
    path = config_path_from(path)
    if path is None:
        source = "embedded default config"
        data = tomllib.loads(DEFAULT_CONFIG_TOML)
    else:
        source = str(path)
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    _check_env_names()
    try:
        return NodeSettings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def redacted_dump(settings: NodeSettings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets shown as '**********'."""
    return settings.model_dump(mode="json")

