"""The dbt project as Dagster assets: one lineage from the raw tables to the marts."""

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject, dbt_assets

from layercode_pipeline.config import Settings
from layercode_pipeline.defs.resources import WAREHOUSE_POOL, StorageResource
from layercode_pipeline.lib.warehouse import connect_waiting, open_warehouse, warehouse_lock

DBT_PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt_project"

# Use the dbt installed beside this Python, so an un-activated virtualenv works too
# (dagster-dbt's manifest preparer looks `dbt` up on PATH).
_BIN = str(Path(sys.executable).parent)
if shutil.which("dbt", path=_BIN) and _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")
DBT_EXECUTABLE = shutil.which("dbt") or "dbt"



@contextlib.contextmanager
def warehouse_env(path: Path) -> Iterator[None]:
    """profiles.yml reads LAYERCODE_WAREHOUSE_PATH; set it for one dbt call only, so it never
    leaks into the configuration of anything else in this process."""
    before = os.environ.get("LAYERCODE_WAREHOUSE_PATH")
    os.environ["LAYERCODE_WAREHOUSE_PATH"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LAYERCODE_WAREHOUSE_PATH", None)
        else:
            os.environ["LAYERCODE_WAREHOUSE_PATH"] = before


def _manifest_is_stale(manifest: Path) -> bool:
    """No manifest, or a model, macro, test or YAML file newer than it: an upgraded checkout
    would otherwise run with the lineage of the old models (a new model never selected)."""
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    return any(p.stat().st_mtime > built for folder in ("models", "macros", "tests")
               for p in (DBT_PROJECT_DIR / folder).rglob("*") if p.is_file()) \
        or (DBT_PROJECT_DIR / "dbt_project.yml").stat().st_mtime > built


dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
with warehouse_env(Settings().paths.warehouse):  # parsing needs a value, not the file
    dbt_project.prepare_if_dev()
    if _manifest_is_stale(dbt_project.manifest_path):  # a fresh clone or an upgrade outside `dagster dev`
        dbt_project.preparer.prepare(dbt_project)


class LayercodeDbtTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        if dbt_resource_props["resource_type"] == "source":
            return None
        return "dbt_" + dbt_resource_props["fqn"][1] if len(dbt_resource_props["fqn"]) > 2 else "dbt"


# dbt tests become asset checks, the source tests on raw tables included
TRANSLATOR = LayercodeDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True,
                                                                          enable_source_tests_as_checks=True))


@dbt_assets(manifest=dbt_project.manifest_path, project=dbt_project, pool=WAREHOUSE_POOL,
            dagster_dbt_translator=TRANSLATOR)
def layercode_dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, storage: StorageResource):
    warehouse = storage.paths.warehouse
    with open_warehouse(warehouse, open_timeout_s=storage.open_timeout_s):
        # creates the raw and enrichment tables, so the models build before any data arrives;
        # waits (bounded) for a process outside the pipeline that holds the file, and dbt's own
        # connect retries (profiles.yml) cover one that grabs it again in between
        pass
    with warehouse_lock(warehouse), warehouse_env(warehouse):
        # Collected, then counted: dagster-dbt's fetch_row_counts() keeps a DuckDB connection
        # open in this process, which would lock the warehouse against every other process.
        events = list(dbt.cli(["build"], context=context).stream())
        yield from with_row_counts(events, warehouse, storage.open_timeout_s)


def with_row_counts(events: list, warehouse: Path, open_timeout_s: float) -> Iterator:
    # schema.alias, not the manifest's relation_name: that one names the database after the
    # file dbt parsed with, which need not be the warehouse this run builds
    relations = {uid: f'"{node["schema"]}"."{node.get("alias") or node["name"]}"' for uid, node in
                 json.loads(dbt_project.manifest_path.read_text())["nodes"].items()
                 if node.get("config", {}).get("materialized") in ("table", "incremental")}
    con = connect_waiting(warehouse, timeout_s=open_timeout_s)
    try:
        for event in events:
            uid = event.metadata.get("unique_id") if isinstance(event, (dg.Output, dg.AssetMaterialization)) else None
            relation = relations.get(uid.value if hasattr(uid, "value") else uid) if uid is not None else None
            if relation:
                count = con.execute(f"select count(*) from {relation}").fetchone()[0]
                event = event.with_metadata({**event.metadata, "dagster/row_count": count})
            yield event
    finally:
        con.close()


def dbt_resource() -> DbtCliResource:
    return DbtCliResource(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE)
