"""The dbt project as Dagster assets: one lineage from the raw tables to the marts."""

import json
import shutil
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import (DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject,
                         DagsterDbtProjectPreparer, dbt_assets)

from layercode_pipeline.defs.resources import WAREHOUSE_POOL, StorageResource
from layercode_pipeline.lib.warehouse import Warehouse

DBT_PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt_project"

# The dbt installed beside this Python, so an un-activated virtualenv works too; else PATH's.
_BESIDE = Path(sys.executable).parent / "dbt"
DBT_EXECUTABLE = str(_BESIDE) if _BESIDE.exists() else (shutil.which("dbt") or "dbt")


def _manifest_is_stale(manifest: Path) -> bool:
    """No manifest, or a model, macro, test or YAML file newer than it: an upgraded checkout
    would otherwise run with the lineage of the old models (a new model never selected)."""
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    return any(p.stat().st_mtime > built for folder in ("models", "macros", "tests")
               for p in (DBT_PROJECT_DIR / folder).rglob("*") if p.is_file()) \
        or (DBT_PROJECT_DIR / "dbt_project.yml").stat().st_mtime > built


class DbtParser(DagsterDbtProjectPreparer):
    """dagster-dbt's preparer (a guard against concurrent parses included), running the dbt
    beside this Python rather than whichever `dbt` is first on PATH."""

    def _prepare_manifest(self, project: DbtProject) -> None:
        DbtCliResource(project_dir=project, dbt_executable=DBT_EXECUTABLE).cli(
            ["parse", "--quiet"], target_path=project.target_path).wait()


@cache
def layercode_dbt_project() -> DbtProject:
    """The dbt project, its manifest parsed when missing or older than the project's files (a
    fresh clone, an upgrade, an edit under `dagster dev`). Parsing needs no warehouse."""
    project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
    if _manifest_is_stale(project.manifest_path):
        DbtParser().prepare(project)
    return project


class LayercodeDbtTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        if dbt_resource_props["resource_type"] == "source":
            return None
        return "dbt_" + dbt_resource_props["fqn"][1] if len(dbt_resource_props["fqn"]) > 2 else "dbt"


# dbt tests become asset checks, the source tests on raw tables included
TRANSLATOR = LayercodeDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True,
                                                                          enable_source_tests_as_checks=True))


@dbt_assets(manifest=layercode_dbt_project().manifest_path, project=layercode_dbt_project(), pool=WAREHOUSE_POOL,
            dagster_dbt_translator=TRANSLATOR)
def layercode_dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, storage: StorageResource):
    warehouse = storage.warehouse
    with warehouse.open_for_writing():
        # creates the raw and enrichment tables, so the models build before any data arrives;
        # waits (bounded) for a process outside the pipeline that holds the file, and dbt's own
        # connect retries (profiles.yml) cover one that grabs it again in between
        pass
    with warehouse.lock():
        # Collected, then counted: dagster-dbt's fetch_row_counts() keeps a DuckDB connection
        # open in this process, which would lock the warehouse against every other process.
        events = list(dbt.cli(["build", "--vars", storage.dbt_vars()], context=context).stream())
        yield from with_row_counts(events, warehouse)


def with_row_counts(events: list, warehouse: Warehouse) -> Iterator:
    # schema.alias, not the manifest's relation_name: that one names the database after the
    # file dbt parsed with, which need not be the warehouse this run builds
    relations = {uid: f'"{node["schema"]}"."{node.get("alias") or node["name"]}"' for uid, node in
                 json.loads(layercode_dbt_project().manifest_path.read_text())["nodes"].items()
                 if node.get("config", {}).get("materialized") in ("table", "incremental")}
    con = warehouse.connect(read_only=True)
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
    return DbtCliResource(project_dir=layercode_dbt_project(), dbt_executable=DBT_EXECUTABLE)
