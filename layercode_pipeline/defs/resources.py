"""Resources, configured from the environment with `dg.EnvVar` (same names as `config.py`)."""


import contextlib
import os
from collections.abc import Iterator

import dagster as dg
import duckdb

from layercode_pipeline.config import DataPaths, Settings
from layercode_pipeline.lib.warehouse import open_warehouse

# Every asset that writes the warehouse runs in this pool; give it a limit of 1 in the
# instance's `dagster.yaml` (see README) so parallel runs queue. The writer lock in
# `open_warehouse` makes the same guarantee across processes outside Dagster.
WAREHOUSE_POOL = "layercode_warehouse"


def env_or(name: str, default: str | None = None) -> dg.EnvVar | str | None:
    """`EnvVar(name)` when the variable is set, else the default (EnvVar insists on a value)."""
    return dg.EnvVar(name) if os.environ.get(name) else default


class StorageResource(dg.ConfigurableResource):
    """Where the landing files, the warehouse, the recordings and the serving copy live."""

    data_dir: str = "./data"
    landing_dir: str | None = None
    warehouse_path: str | None = None
    recordings_dir: str | None = None
    serving_dir: str | None = None
    # how long to wait for a process outside the pipeline (a BI tool) that holds the warehouse
    open_timeout_s: float = 60.0

    @property
    def paths(self) -> DataPaths:
        # From this resource's own fields only (not the process environment, which the
        # resource was already configured from through EnvVar).
        return DataPaths.derive(self.data_dir, landing=self.landing_dir, warehouse=self.warehouse_path,
                                recordings=self.recordings_dir, serving=self.serving_dir)

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The warehouse for writing (waits for the single-writer lock)."""
        with open_warehouse(self.paths.warehouse, open_timeout_s=self.open_timeout_s) as con:
            yield con


def storage_from_env() -> StorageResource:
    return StorageResource(
        data_dir=env_or("LAYERCODE_DATA_DIR", "./data"),
        landing_dir=env_or("LAYERCODE_LANDING_DIR"),
        warehouse_path=env_or("LAYERCODE_WAREHOUSE_PATH"),
        recordings_dir=env_or("LAYERCODE_RECORDINGS_DIR"),
        serving_dir=env_or("LAYERCODE_SERVING_DIR"),
        open_timeout_s=Settings().warehouse_open_timeout_s,
    )


class LayercodeAPIResource(dg.ConfigurableResource):
    """The Layercode REST API. `api_key` comes from `EnvVar("LAYERCODE_API_KEY")`."""

    base_url: str = "https://api.layercode.com/v1"
    api_key: str | None = None
    timeout_s: float = 30.0
    max_concurrency: int = 8
    max_attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0

    @property
    def configured(self) -> bool:
        return bool(self.api_key)

    def client(self):  # -> LayercodeClient (imported lazily: httpx is not needed to load definitions)
        from layercode_pipeline.lib.layercode_client import LayercodeClient

        return LayercodeClient(self.api_key or "", self.base_url, timeout_s=self.timeout_s,
                               max_concurrency=self.max_concurrency, max_attempts=self.max_attempts,
                               backoff_initial_s=self.backoff_initial_s, backoff_max_s=self.backoff_max_s)


def layercode_api_from_env() -> LayercodeAPIResource:
    return LayercodeAPIResource(base_url=env_or("LAYERCODE_API_BASE_URL", "https://api.layercode.com/v1"),
                                api_key=env_or("LAYERCODE_API_KEY"))


class OpenAIResource(dg.ConfigurableResource):
    """An OpenAI-compatible endpoint. `api_key` from `EnvVar("OPENAI_API_KEY")`, `base_url`
    from `EnvVar("OPENAI_BASE_URL")` (any compatible server works)."""

    api_key: str | None = None
    base_url: str | None = None
    model: str = "gpt-5-mini"
    timeout_s: float = 60.0
    max_retries: int = 4
    enrichment_config: str | None = None  # LAYERCODE_ENRICHMENT_CONFIG

    @property
    def configured(self) -> bool:
        return bool(self.api_key)


def openai_from_env() -> OpenAIResource:
    return OpenAIResource(api_key=env_or("OPENAI_API_KEY"), base_url=env_or("OPENAI_BASE_URL"),
                          model=env_or("LAYERCODE_ENRICHMENT_MODEL", "gpt-5-mini"),
                          enrichment_config=env_or("LAYERCODE_ENRICHMENT_CONFIG"))
