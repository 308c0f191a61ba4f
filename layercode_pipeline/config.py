"""The one configuration module: the only reader of the environment.

The listener, the CLI and the demo read `Settings()`; the Dagster resources are built from
it (`defs/resources.py`), secrets as `dagster.EnvVar` of the variable they came from so
their values never reach a run's configuration; dbt gets what it needs as `--vars`. Every
default is written here once. The README's configuration table is tested against this model
(`tests/test_config.py`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from layercode_pipeline.contract.landing import DEFAULT_KEPT_HEADERS
from layercode_pipeline.contract.minimise import Minimisation

DEFAULT_AGENT_ID = "default"
DEFAULT_API_BASE_URL = "https://api.layercode.com/v1"
DEFAULT_ENRICHMENT_MODEL = "gpt-5-mini"


@dataclass(frozen=True)
class StorageConfig:
    """Where events land and the warehouse is, as plain values: what `Settings` and the Dagster
    storage resource each hold, and the one input `Warehouse.from_config` and
    `ObjectLanding.from_config` build their objects from (so neither is derived twice)."""

    data_dir: Path
    landing_url: str | None = None
    aws_endpoint_url: str | None = None
    aws_region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    warehouse_target: str | None = None
    motherduck_token: str | None = None
    open_timeout_s: float = 60.0
    recordings_url: str | None = None  # a directory (None: <data>/recordings) or s3://bucket/prefix


@dataclass(frozen=True)
class DataPaths:
    """Where the files live: `<data dir>/{landing,quarantine,recordings,serving}`, each
    overridable on its own. Always absolute, so dbt's working directory does not matter. (The
    warehouse is not a path: see `Warehouse.from_settings`.)"""

    data_dir: Path
    landing: Path
    quarantine: Path
    recordings: Path
    serving: Path

    @property
    def reviews(self) -> Path:
        """The review workbench's append-only review files."""
        return self.data_dir / "reviews"

    @classmethod
    def derive(
        cls,
        data_dir: Path | str,
        *,
        landing: Path | str | None = None,
        quarantine: Path | str | None = None,
        recordings: Path | str | None = None,
        serving: Path | str | None = None,
    ) -> DataPaths:
        root = Path(data_dir).expanduser().resolve()

        def pick(value: Path | str | None, default: Path) -> Path:
            return Path(value).expanduser().resolve() if value else default

        return cls(
            root,
            pick(landing, root / "landing"),
            pick(quarantine, root / "quarantine"),
            pick(recordings, root / "recordings"),
            pick(serving, root / "serving"),
        )


def inherited_environment() -> dict[str, str]:
    """This process's whole environment (what a dbt invocation reads its DBT_* options from)."""
    return dict(os.environ)


# What a dbt build reads from its environment: dbt's and dagster-dbt's own variables, the
# locale, the paths, and the warehouse profiles.yml may name. Never the pipeline's secrets (API
# keys, webhook secrets, the privacy key): the warm dbt is handed only these.
_BUILD_VARIABLES = re.compile(
    r"(DBT_\w*|DAGSTER_DBT_\w*|PATH|HOME|USER|LOGNAME|LANG|LANGUAGE|LC_\w+|TZ|TMPDIR|PYTHON\w*|VIRTUAL_ENV"
    r"|LAYERCODE_WAREHOUSE|LAYERCODE_WAREHOUSE_PATH)"
)


def build_environment(*, motherduck: bool = False) -> dict[str, str]:
    """The part of this process's environment a dbt build needs (the warm dbt runs each build
    with it, as a child process would inherit it): MOTHERDUCK_TOKEN only for a MotherDuck
    warehouse, which dbt's `motherduck` extension reads itself. Never logged or stored."""
    env = {k: v for k, v in os.environ.items() if _BUILD_VARIABLES.fullmatch(k)}
    if motherduck and "MOTHERDUCK_TOKEN" in os.environ:
        env["MOTHERDUCK_TOKEN"] = os.environ["MOTHERDUCK_TOKEN"]
    return env


def adopt_environment(env: dict[str, str]) -> None:
    """Take `env` as this process's environment (the warm dbt, before it runs a command)."""
    os.environ.clear()
    os.environ.update(env)


def load_privacy_key(data_dir: Path, configured: str | None = None) -> str:
    """The key erased callers' tombstones and hashed phone numbers use: LAYERCODE_PRIVACY_KEY,
    else `<data>/privacy/key` (made once, readable by the owner only, fsynced)."""
    if configured:
        return configured
    path = Path(data_dir) / "privacy" / "key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    try:
        os.write(fd, key.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key


class ConfigError(ValueError):
    """A setting that cannot be used: the message names the variable, never its value."""


RESULT_EVENT_TYPES = ("call.analyzed", "call.recording_ready", "call.erased")
RESULT_WEBHOOKS_VAR = "LAYERCODE_RESULT_WEBHOOKS"


@dataclass(frozen=True)
class ResultEndpoint:
    """One receiver of result webhooks. `secrets`: the raw key bytes of each `whsec_` secret
    (every message is signed with each, so a receiver can rotate)."""

    url: str
    secrets: tuple[bytes, ...] = field(repr=False)
    events: frozenset[str] = frozenset(RESULT_EVENT_TYPES)
    agents: frozenset[str] | None = None  # None: every agent

    def wants(self, event_type: str, agent_id: str | None) -> bool:
        return event_type in self.events and (self.agents is None or agent_id in self.agents)


def _whsec(value: object, where: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("whsec_"):
        raise ConfigError(f"{RESULT_WEBHOOKS_VAR}: {where}: a secret must be a string 'whsec_<base64>'")
    try:
        key = base64.b64decode(value[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{RESULT_WEBHOOKS_VAR}: {where}: the secret after 'whsec_' is not base64") from None
    if len(key) < 16:
        raise ConfigError(f"{RESULT_WEBHOOKS_VAR}: {where}: the secret is shorter than 16 bytes")
    return key


def parse_result_endpoints(text: str | None) -> list[ResultEndpoint]:
    """`LAYERCODE_RESULT_WEBHOOKS` as endpoints. Errors name the variable and the endpoint's
    position, and never repeat a secret."""
    if not text or not text.strip():
        return []
    try:
        items = json.loads(text)
    except ValueError:
        raise ConfigError(f"{RESULT_WEBHOOKS_VAR} is not JSON (a list of endpoint objects)") from None
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise ConfigError(f"{RESULT_WEBHOOKS_VAR} must be a JSON list of endpoint objects")
    out: list[ResultEndpoint] = []
    for i, item in enumerate(items):
        where = f"endpoint {i + 1}"
        if not isinstance(item, dict):
            raise ConfigError(f"{RESULT_WEBHOOKS_VAR}: {where} is not an object")
        unknown = set(item) - {"url", "secret", "events", "agents"}
        if unknown:
            raise ConfigError(f"{RESULT_WEBHOOKS_VAR}: {where}: unknown keys {sorted(unknown)}")
        url = item.get("url")
        parsed = urlsplit(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"{RESULT_WEBHOOKS_VAR}: {where}: url must be an http(s) URL with a host")
        where = f"endpoint {i + 1} ({parsed.scheme}://{parsed.netloc}{parsed.path})"
        raw_secrets = item.get("secret")
        raw_list = raw_secrets if isinstance(raw_secrets, list) else [raw_secrets]
        if not raw_list:
            raise ConfigError(f"{RESULT_WEBHOOKS_VAR}: {where}: no secret")
        secrets = tuple(_whsec(s, where) for s in raw_list)
        events = item.get("events")
        if events is not None:
            if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
                raise ConfigError(f"{RESULT_WEBHOOKS_VAR}: {where}: events must be a list of event types")
            bad = sorted(set(events) - set(RESULT_EVENT_TYPES))
            if bad:
                raise ConfigError(
                    f"{RESULT_WEBHOOKS_VAR}: {where}: unknown event types {bad}; known: {list(RESULT_EVENT_TYPES)}"
                )
        agents = item.get("agents")
        if agents is not None and (not isinstance(agents, list) or not all(isinstance(a, str) for a in agents)):
            raise ConfigError(f"{RESULT_WEBHOOKS_VAR}: {where}: agents must be a list of agent ids")
        if any(e.url == url for e in out):
            raise ConfigError(f"{RESULT_WEBHOOKS_VAR}: {where}: the same url twice")
        out.append(
            ResultEndpoint(
                str(url),
                secrets,
                frozenset(events) if events is not None else frozenset(RESULT_EVENT_TYPES),
                frozenset(agents) if agents is not None else None,
            )
        )
    return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LAYERCODE_", extra="ignore", populate_by_name=True)

    # --- paths -------------------------------------------------------------------------
    data_dir: Path = Path("./data")
    landing_dir: Path | None = None
    # Where the listener lands events and the ingest reads them: a local path (the default,
    # LAYERCODE_LANDING_DIR) or s3://bucket/prefix on any S3-compatible store, reached with
    # the standard AWS_* variables below.
    landing_url: str | None = None
    # For an s3:// landing URL: `bucket` acknowledges a group of events once its object is in
    # the store; `local+ship` once it is fsynced on the local disk (LAYERCODE_LANDING_DIR),
    # shipping sealed segments to the bucket in the background and on the next start.
    landing_mode: Literal["bucket", "local+ship"] = "bucket"
    landing_ship_interval_s: float = 1.0
    aws_endpoint_url: str | None = Field(
        default=None, validation_alias=AliasChoices("aws_endpoint_url", "AWS_ENDPOINT_URL")
    )
    aws_region: str | None = Field(default=None, validation_alias=AliasChoices("aws_region", "AWS_REGION"))
    aws_access_key_id: SecretStr | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("aws_access_key_id", "AWS_ACCESS_KEY_ID")
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY")
    )
    quarantine_dir: Path | None = None
    # The warehouse: a DuckDB file path, or `md:<database>` for MotherDuck (then with
    # MOTHERDUCK_TOKEN). LAYERCODE_WAREHOUSE_PATH, its earlier name, is still read.
    warehouse_target: str | None = Field(
        default=None,
        validation_alias=AliasChoices("warehouse_target", "LAYERCODE_WAREHOUSE_PATH", "LAYERCODE_WAREHOUSE"),
    )
    motherduck_token: SecretStr | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("motherduck_token", "MOTHERDUCK_TOKEN")
    )
    # Where the WAV files are kept: a directory (unset: <data dir>/recordings) or
    # `s3://bucket/prefix` on any S3-compatible store, with the landing's AWS_* settings.
    # LAYERCODE_RECORDINGS_DIR, its earlier name, is still read.
    recordings_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("recordings_url", "LAYERCODE_RECORDINGS_DIR", "LAYERCODE_RECORDINGS_URL"),
    )
    serving_dir: Path | None = None
    # Dagster's instance directory (runs, schedules, the pool limit); the demo defaults it to
    # <data dir>/dagster_home
    dagster_home: Path | None = Field(default=None, validation_alias=AliasChoices("dagster_home", "DAGSTER_HOME"))
    # How long a pipeline writer waits for a process outside the pipeline (a BI tool, a
    # notebook) that holds warehouse.duckdb before failing with a message naming it.
    warehouse_open_timeout_s: float = 60.0
    # The pipeline's warm dbt (dbt imported and the project parsed once, forked for each build)
    # exits after this long without a build; the next run starts it again.
    warm_dbt_idle_s: float = 900.0

    # --- webhook listener --------------------------------------------------------------
    agent_id: str = DEFAULT_AGENT_ID
    webhook_secret: SecretStr | None = None
    # JSON object: agent_id -> secret or list of secrets (several while rotating).
    webhook_secrets: SecretStr | None = None
    signature_tolerance_s: int = 300
    max_body_bytes: int = 10 * 1024 * 1024
    # A client gets this long to send its headers (from its first byte, or from connecting) and
    # then its body; a slow or stalled one is answered 408 and cut off, so it cannot hold a
    # descriptor that a healthy delivery needs.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    segment_max_bytes: int = 64 * 1024 * 1024
    segment_max_age_s: float = 10.0  # under steady traffic: the longest a landed event waits to be sealed
    # seal the open segment after this many seconds without an event (the freshness of the
    # last calls before a quiet spell); under load segments seal by size and age
    segment_idle_seal_s: float = 1.0
    # Request headers landed with each event: exact names or `prefix*`. Layercode appends the
    # customer's custom headers (`x-tenant-id`, ...) to every webhook; the signature,
    # `authorization` and `cookie` are never kept, whatever this says.
    kept_headers: list[str] = list(DEFAULT_KEPT_HEADERS)
    responder: str = "webhook_listener.responder:default_responder"
    # `module:function` answering `data` webhooks; unset, they are answered `{}` (what Layercode
    # forwards to the caller's browser must be safe for a web client to receive)
    data_responder: str | None = None
    welcome_message: str = "Hi, thanks for calling. How can I help you today?"
    ack_message: str = "Thanks, let me look into that."
    log_level: str = "INFO"

    # Accept unsigned webhooks (local experiments only); `listen --insecure-skip-verify` sets it
    # for its worker processes.
    insecure_skip_verify: bool = False

    # --- REST API ----------------------------------------------------------------------
    api_base_url: str = DEFAULT_API_BASE_URL
    api_key: SecretStr | None = Field(default=None, repr=False)
    api_timeout_s: float = 30.0
    api_max_concurrency: int = 8
    api_max_attempts: int = 5  # per request, then the failure is recorded and asked again next run
    api_backoff_initial_s: float = 0.5
    api_backoff_max_s: float = 30.0
    # May a recording redirect reach a loopback, link-local or private address? Unset: only when
    # the API itself is on one (the simulator); Layercode's public API never needs it.
    recording_private_redirects: bool | None = None
    # A recording larger than this is refused (recorded with its reason, not kept), and each
    # download, its retries included, must finish within the deadline: a host that drips bytes
    # cannot hold a run.
    recording_max_bytes: int = 512 * 1024 * 1024
    recording_deadline_s: float = 600.0

    # --- enrichment (any OpenAI-compatible server; without a key: the offline provider) ----
    openai_api_key: SecretStr | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("openai_api_key", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("openai_base_url", "OPENAI_BASE_URL")
    )
    enrichment_model: str = DEFAULT_ENRICHMENT_MODEL
    enrichment_config: Path | None = None  # a YAML file like lib/enrichment/default_config.yaml

    # --- models ------------------------------------------------------------------------
    # session metadata keys promoted to their own fct_sessions columns (metadata_<key>),
    # comma-separated; passed to dbt as a variable
    promoted_metadata_keys: str = ""

    # --- result webhooks (results pushed to the customer's product) --------------------------
    # JSON list of endpoints: {"url", "secret": "whsec_..." or a list while rotating,
    # "events": [...], "agents": [...]} (events and agents optional: all). A secret: read
    # only through `result_endpoints()`, never logged, never in a run's configuration.
    result_webhooks: SecretStr | None = Field(default=None, repr=False)
    # one attempt's whole deadline (connect, send, answer); a hung endpoint costs this, once
    result_webhook_timeout_s: float = 10.0
    # the wait after each failed attempt (Standard Webhooks' schedule: 5 s, 5 min, 30 min, 2 h,
    # 5 h, 10 h, 10 h: eight attempts over about 28 h); then the message is dead-lettered
    result_webhook_retry_schedule_s: list[float] = [5, 300, 1800, 7200, 18000, 36000, 36000]
    # the outbox (SQLite): every message is recorded here before its first attempt
    outbox_path: Path | None = None
    # call.analyzed straight from the landing (local landing only), seconds after session.end,
    # not after the warehouse's run in flight; off: only from the warehouse, after enrichment
    result_webhooks_express: bool = True

    # --- privacy ---------------------------------------------------------------------------
    # The key erased callers' tombstones are hashed with (lib/privacy.py); unset, a random key
    # is made once and kept in <data dir>/privacy/key (mode 0600). Set it in production, and
    # keep it: with another key, old tombstones no longer match.
    privacy_key: SecretStr | None = Field(default=None, repr=False)
    # Minimisation (contract/minimise.py): the caller's IP address is not kept unless asked;
    # phone numbers may be stored as keyed hashes (the same number, the same hash)
    keep_caller_ip: bool = False
    hash_phone_numbers: bool = False
    # Retention in days per class of data (unset: kept); the daily retention_job applies them
    # (lib/retention.py says what expires and what stays).
    retention_recordings_days: int | None = Field(default=None, ge=1)
    retention_text_days: int | None = Field(default=None, ge=1)
    retention_landing_days: int | None = Field(default=None, ge=1)
    retention_reviews_days: int | None = Field(default=None, ge=1)

    # --- dashboard and review workbench ---------------------------------------------------
    # The host names the dashboard answers to, besides 127.0.0.1, localhost and ::1 (and the
    # address it listens on): JSON list, e.g. ["analytics.example.com"]. Any other `Host` is
    # refused, so a page on another site cannot read calls through DNS rebinding.
    dashboard_hosts: list[str] = []
    # JSON {"<reviewer name>": "<token or password>"}: who may save reviews in the dashboard.
    # Unset: the dashboard is read-only.
    reviewers: SecretStr | None = Field(default=None, repr=False)

    @classmethod
    def default(cls, field: str) -> Any:
        """A setting's default: resources and the REST client take theirs from here, so each
        default is written once."""
        return cls.model_fields[field].default

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable a field is read from."""
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, AliasChoices):
            return str(alias.choices[-1])
        return f"LAYERCODE_{field.upper()}"

    def secret_from_environment(self, field: str) -> str | None:
        """The variable's name when this secret's value came from the environment (Dagster then
        reads it as `EnvVar(name)`, so the value never enters a run's configuration)."""
        value = getattr(self, field)
        name = self.env_name(field)
        if value is not None and os.environ.get(name) == value.get_secret_value():
            return name
        return None

    @field_validator("webhook_secrets")
    @classmethod
    def _secrets_are_json(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            try:
                parsed = json.loads(value.get_secret_value())
            except json.JSONDecodeError as exc:  # its message quotes no input, only a position
                raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from None
            if not isinstance(parsed, dict) or not all(
                isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
                for v in parsed.values()
            ):
                raise ValueError("must be a JSON object: agent_id -> secret, or a list of secrets while rotating")
        return value

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """The settings from the environment, or a `ConfigError` of one line per problem that
        names the variable and what is wrong, never the value (pydantic's own message quotes
        the input, which may be a secret)."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            problems = []
            for err in exc.errors(include_input=False, include_url=False):
                field = str(err["loc"][0]) if err["loc"] else ""
                name = "DAGSTER_HOME" if field == "dagster_home" else f"LAYERCODE_{field.upper()}"
                problems.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
            raise ConfigError("; ".join(problems)) from None

    def result_endpoints(self) -> list[ResultEndpoint]:
        """The result webhook endpoints, validated; a `ConfigError` naming the variable (never
        a secret's value) when one is malformed."""
        raw = self.result_webhooks.get_secret_value() if self.result_webhooks is not None else ""
        return parse_result_endpoints(raw)

    def minimisation(self) -> Minimisation:
        """What is kept of identifying fields (contract/minimise.py). Hashing phone numbers needs
        one key on every host: LAYERCODE_PRIVACY_KEY, or the data directory's key file when
        events land on this host's disk."""
        key = None
        if self.hash_phone_numbers:
            if self.privacy_key is not None:
                key = self.privacy_key.get_secret_value()
            elif self.landing_url and "://" in self.landing_url:
                raise ConfigError(
                    "LAYERCODE_HASH_PHONE_NUMBERS with an object-store landing needs LAYERCODE_PRIVACY_KEY "
                    "(every listener host must hash with the same key)"
                )
            else:
                key = load_privacy_key(self.paths.data_dir)
        return Minimisation(keep_caller_ip=self.keep_caller_ip, phone_key=key)

    def reviewer_credentials(self) -> dict[str, str]:
        """Reviewer name -> credential; a `ConfigError` naming the variable (never a value)."""
        raw = self.reviewers.get_secret_value() if self.reviewers is not None else ""
        if not raw.strip():
            return {}
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise ConfigError("LAYERCODE_REVIEWERS is not JSON (an object of reviewer name to token)") from None
        if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and k.strip() and isinstance(v, str) and len(v) >= 8 for k, v in parsed.items()
        ):
            raise ConfigError(
                "LAYERCODE_REVIEWERS must map each reviewer's name to a token or password of at least 8 characters"
            )
        return {k.strip(): v for k, v in parsed.items()}

    @cached_property
    def agent_secrets(self) -> dict[str, tuple[str, ...]]:
        """agent_id -> accepted secrets (any of them verifies; rotation keeps two)."""
        out: dict[str, tuple[str, ...]] = {}
        if self.webhook_secrets is not None and self.webhook_secrets.get_secret_value():
            for agent, value in json.loads(self.webhook_secrets.get_secret_value()).items():
                values = [value] if isinstance(value, str) else list(value)
                out[str(agent)] = tuple(str(v) for v in values if v)
        if self.webhook_secret is not None and self.webhook_secret.get_secret_value():
            existing = out.get(self.agent_id, ())
            out[self.agent_id] = (self.webhook_secret.get_secret_value(), *existing)
        return {k: v for k, v in out.items() if v}

    # --- derived paths (absolute, so dbt's cwd does not matter) --------------------------
    @property
    def outbox(self) -> Path:
        return (self.outbox_path or self.paths.data_dir / "outbox" / "result_webhooks.sqlite3").expanduser().resolve()

    def storage(self) -> StorageConfig:
        """The storage settings as plain values (secrets unwrapped: for building objects only)."""

        def plain(value: SecretStr | None) -> str | None:
            return value.get_secret_value() if value is not None else None

        return StorageConfig(
            data_dir=self.paths.data_dir,
            landing_url=self.landing_url,
            aws_endpoint_url=self.aws_endpoint_url,
            aws_region=self.aws_region,
            aws_access_key_id=plain(self.aws_access_key_id),
            aws_secret_access_key=plain(self.aws_secret_access_key),
            warehouse_target=self.warehouse_target,
            motherduck_token=plain(self.motherduck_token),
            open_timeout_s=self.warehouse_open_timeout_s,
            recordings_url=self.recordings_url,
        )

    @property
    def paths(self) -> DataPaths:
        local_url = self.landing_url if self.landing_url and "://" not in self.landing_url else None
        local_recordings = self.recordings_url if self.recordings_url and "://" not in self.recordings_url else None
        return DataPaths.derive(
            self.data_dir,
            landing=local_url or self.landing_dir,
            quarantine=self.quarantine_dir,
            recordings=local_recordings,
            serving=self.serving_dir,
        )
