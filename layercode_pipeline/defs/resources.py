"""Resources, built from the one settings module (`resources_from_settings`)."""

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import dagster as dg
import duckdb

from layercode_pipeline.config import (
    DataPaths,
    ResultEndpoint,
    Settings,
    StorageConfig,
    load_privacy_key,
    parse_result_endpoints,
)
from layercode_pipeline.contract.minimise import Minimisation
from layercode_pipeline.landing.objects import ObjectLanding, is_object_url
from layercode_pipeline.lib.warehouse import Warehouse

# Every asset that writes the warehouse runs in this pool; give it a limit of 1 in the
# instance's `dagster.yaml` (see README) so parallel runs queue. The writers' lock in
# `Warehouse.open_for_writing` makes the same guarantee across processes outside Dagster.
WAREHOUSE_POOL = "layercode_warehouse"


class StorageResource(dg.ConfigurableResource):
    """Where the landing files, the warehouse, the recordings and the serving copy live."""

    data_dir: str = "./data"
    landing_dir: str | None = None
    # s3://bucket/prefix when events land in object storage (then with the AWS_* settings)
    landing_url: str | None = None
    aws_endpoint_url: str | None = None
    aws_region: str | None = None
    aws_access_key_id: str | None = None  # EnvVar
    aws_secret_access_key: str | None = None  # EnvVar
    warehouse_target: str | None = None  # a DuckDB file, or md:<database> (MotherDuck)
    motherduck_token: str | None = None  # an EnvVar (see resources_from_settings)
    # a directory (None: <data dir>/recordings) or s3://bucket/prefix (with the AWS_* fields)
    recordings_url: str | None = None
    serving_dir: str | None = None
    # how long to wait for a process outside the pipeline (a BI tool) that holds the warehouse
    open_timeout_s: float = Settings.default("warehouse_open_timeout_s")
    promoted_metadata_keys: str = Settings.default("promoted_metadata_keys")
    privacy_key: str | None = None  # an EnvVar (see resources_from_settings)
    keep_caller_ip: bool = Settings.default("keep_caller_ip")
    hash_phone_numbers: bool = Settings.default("hash_phone_numbers")

    @property
    def paths(self) -> DataPaths:
        # From this resource's own fields only (not the process environment, which the
        # resource was already configured from through EnvVar).
        return DataPaths.derive(
            self.data_dir,
            landing=self.landing_dir,
            recordings=None if is_object_url(self.recordings_url) else self.recordings_url,
            serving=self.serving_dir,
        )

    def storage(self) -> StorageConfig:
        """This resource's own fields (not the process environment, which configured it
        through EnvVar) as the plain values the objects are built from."""
        return StorageConfig(
            data_dir=self.paths.data_dir,
            landing_url=self.landing_url,
            aws_endpoint_url=self.aws_endpoint_url,
            aws_region=self.aws_region,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            warehouse_target=self.warehouse_target,
            motherduck_token=self.motherduck_token,
            open_timeout_s=self.open_timeout_s,
            recordings_url=self.recordings_url,
        )

    def recording_store(self):  # -> RecordingStore (imported lazily: obstore only when it is S3)
        """Where the recordings are kept: the directory, or the S3 prefix."""
        from layercode_pipeline.lib.recording_store import recording_store

        return recording_store(self.storage(), self.paths.recordings)

    @property
    def object_landing(self) -> ObjectLanding | None:
        """The object store the ingest reads, or None for the local landing directory."""
        return ObjectLanding.from_config(self.storage())

    @property
    def warehouse(self) -> Warehouse:
        """The warehouse seam: every asset reaches the warehouse through it."""
        return Warehouse.from_config(self.storage())

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The warehouse for writing (waits for the writers' lock), with the privacy key the
        ingest checks erased callers' tombstones with."""
        with self.warehouse.open_for_writing() as con:
            con.execute("set variable privacy_key = ?", [self.privacy_key_value()])
            yield con

    def minimisation(self) -> Minimisation:
        """What REST records keep of the caller's IP and phone numbers (as the listener does)."""
        return Minimisation(
            keep_caller_ip=self.keep_caller_ip,
            phone_key=self.privacy_key_value() if self.hash_phone_numbers else None,
        )

    def privacy_key_value(self) -> str:
        """LAYERCODE_PRIVACY_KEY, or the key kept under the data directory (lib/privacy.py)."""
        return load_privacy_key(self.paths.data_dir, self.privacy_key)

    def answer_cache(self):  # -> AnswerCache (imported lazily, like the REST client)
        """Answers the express result path made, for the enrichment run to take over."""
        from layercode_pipeline.lib.enrichment.answer_cache import AnswerCache

        return AnswerCache(self.paths.data_dir / "enrichment" / "express_answers.sqlite3")

    def dbt_vars(self) -> str:
        """What dbt needs, as `--vars` (profiles.yml and the models read them): no process
        environment is changed for a dbt call."""
        return json.dumps({**self.warehouse.dbt_vars(), "promoted_metadata_keys": self.promoted_metadata_keys})


class LayercodeAPIResource(dg.ConfigurableResource):
    """The Layercode REST API (built by `resources_from_settings`; the key as an `EnvVar`)."""

    base_url: str = Settings.default("api_base_url")
    api_key: str | None = None
    timeout_s: float = Settings.default("api_timeout_s")
    max_concurrency: int = Settings.default("api_max_concurrency")
    max_attempts: int = Settings.default("api_max_attempts")
    backoff_initial_s: float = Settings.default("api_backoff_initial_s")
    backoff_max_s: float = Settings.default("api_backoff_max_s")
    private_redirects: bool | None = Settings.default("recording_private_redirects")
    recording_max_bytes: int = Settings.default("recording_max_bytes")
    recording_deadline_s: float = Settings.default("recording_deadline_s")

    @property
    def configured(self) -> bool:
        return bool(self.api_key)

    def client(self):  # -> LayercodeClient (imported lazily: httpx is not needed to load definitions)
        from layercode_pipeline.lib.layercode_client import LayercodeClient

        return LayercodeClient(
            self.api_key or "",
            self.base_url,
            timeout_s=self.timeout_s,
            max_concurrency=self.max_concurrency,
            max_attempts=self.max_attempts,
            backoff_initial_s=self.backoff_initial_s,
            backoff_max_s=self.backoff_max_s,
            private_redirects=self.private_redirects,
        )


class OpenAIResource(dg.ConfigurableResource):
    """An OpenAI-compatible endpoint, any compatible server (built by `resources_from_settings`;
    the key as an `EnvVar`)."""

    api_key: str | None = None
    base_url: str | None = None
    model: str = Settings.default("enrichment_model")
    timeout_s: float = 60.0
    max_retries: int = 4
    enrichment_config: str | None = None  # LAYERCODE_ENRICHMENT_CONFIG

    @property
    def configured(self) -> bool:
        return bool(self.api_key)


class RetentionResource(dg.ConfigurableResource):
    """How long each class of data is kept, in days (None: kept); see lib/retention.py."""

    recordings_days: int | None = None
    text_days: int | None = None
    landing_days: int | None = None
    reviews_days: int | None = None


class ResultWebhooksResource(dg.ConfigurableResource):
    """Where results are pushed (`LAYERCODE_RESULT_WEBHOOKS`, as an `EnvVar`: it holds secrets)
    and the outbox that records every message before its first attempt."""

    endpoints_json: str | None = None
    outbox_path: str
    timeout_s: float = Settings.default("result_webhook_timeout_s")
    retry_schedule_s: list[float] = Settings.default("result_webhook_retry_schedule_s")
    # call.analyzed straight from the landing, not after the warehouse (see lib/result_webhooks/express.py)
    express: bool = Settings.default("result_webhooks_express")

    def endpoints(self) -> list[ResultEndpoint]:
        return parse_result_endpoints(self.endpoints_json)

    def outbox(self):  # -> Outbox (imported lazily, like the REST client)
        from layercode_pipeline.lib.result_webhooks.outbox import Outbox

        return Outbox(self.outbox_path)


def _secret(settings: Settings, field: str) -> dg.EnvVar | str | None:
    """A secret from the environment as `EnvVar` (its value never enters run config); one given
    to `Settings(...)` in code (the demo, tests) as itself; none as None."""
    name = settings.secret_from_environment(field)
    if name is not None:
        return dg.EnvVar(name)
    value = getattr(settings, field)
    return value.get_secret_value() if value is not None else None


def resources_from_settings(settings: Settings | None = None) -> dict[str, Any]:
    """Every resource the definitions need, from one `Settings` (the environment's by default)."""
    from layercode_pipeline.defs.dbt.project import dbt_resource

    settings = settings or Settings.load()
    settings.result_endpoints()  # a malformed LAYERCODE_RESULT_WEBHOOKS fails here, at load, naming it
    paths = settings.paths
    return {
        "storage": StorageResource(
            data_dir=str(paths.data_dir),
            landing_dir=str(paths.landing),
            warehouse_target=Warehouse.from_settings(settings).target,
            motherduck_token=_secret(settings, "motherduck_token"),
            landing_url=settings.landing_url if is_object_url(settings.landing_url) else None,
            aws_endpoint_url=settings.aws_endpoint_url,
            aws_region=settings.aws_region,
            aws_access_key_id=_secret(settings, "aws_access_key_id"),
            aws_secret_access_key=_secret(settings, "aws_secret_access_key"),
            recordings_url=settings.recordings_url if is_object_url(settings.recordings_url) else str(paths.recordings),
            serving_dir=str(paths.serving),
            open_timeout_s=settings.warehouse_open_timeout_s,
            promoted_metadata_keys=settings.promoted_metadata_keys,
            privacy_key=_secret(settings, "privacy_key"),
            keep_caller_ip=settings.keep_caller_ip,
            hash_phone_numbers=settings.hash_phone_numbers,
        ),
        "retention": RetentionResource(
            recordings_days=settings.retention_recordings_days,
            text_days=settings.retention_text_days,
            landing_days=settings.retention_landing_days,
            reviews_days=settings.retention_reviews_days,
        ),
        "layercode_api": LayercodeAPIResource(
            base_url=settings.api_base_url,
            api_key=_secret(settings, "api_key"),
            timeout_s=settings.api_timeout_s,
            max_concurrency=settings.api_max_concurrency,
            max_attempts=settings.api_max_attempts,
            backoff_initial_s=settings.api_backoff_initial_s,
            backoff_max_s=settings.api_backoff_max_s,
            private_redirects=settings.recording_private_redirects,
            recording_max_bytes=settings.recording_max_bytes,
            recording_deadline_s=settings.recording_deadline_s,
        ),
        "openai": OpenAIResource(
            api_key=_secret(settings, "openai_api_key"),
            base_url=settings.openai_base_url,
            model=settings.enrichment_model,
            enrichment_config=str(settings.enrichment_config) if settings.enrichment_config else None,
        ),
        "result_webhooks": ResultWebhooksResource(
            endpoints_json=_secret(settings, "result_webhooks"),
            outbox_path=str(settings.outbox),
            timeout_s=settings.result_webhook_timeout_s,
            retry_schedule_s=list(settings.result_webhook_retry_schedule_s),
            express=settings.result_webhooks_express,
        ),
        "dbt": dbt_resource(paths.data_dir, warm_idle_s=settings.warm_dbt_idle_s),
    }
