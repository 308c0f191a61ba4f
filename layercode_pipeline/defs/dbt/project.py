"""dbt's resource side, a leaf: the project (its manifest parsed when stale), the dbt
executable and the CLI resource. `defs/resources.py` builds the resource from here and
`assets.py` the assets, so building resources never imports the assets."""

import importlib.metadata
import json
import shutil
import sys
from collections.abc import Mapping
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtProjectPreparer, DbtCliResource, DbtProject
from packaging import version

DBT_PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt_project"
DBT_PROJECT_NAME = "layercode_analytics"  # dbt_project.yml's name
# the folders under models/; each is a Dagster asset group (the translator names them, and the
# jobs and the demo select by them)
DBT_LAYERS = ("staging", "intermediate", "marts")


def dbt_group(layer: str) -> str:
    return f"dbt_{layer}"


DBT_GROUPS = tuple(dbt_group(layer) for layer in DBT_LAYERS)
RUN_TARGET_PATH = DBT_PROJECT_DIR / "target" / "run"

# The dbt installed beside this Python, so an un-activated virtualenv works too; else PATH's.
_BESIDE = Path(sys.executable).parent / "dbt"
DBT_EXECUTABLE = str(_BESIDE) if _BESIDE.exists() else (shutil.which("dbt") or "dbt")


def _manifest_is_stale(manifest: Path) -> bool:
    """No manifest, or a model, macro, test or YAML file newer than it: an upgraded checkout
    would otherwise run with the lineage of the old models (a new model never selected)."""
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    return (
        any(
            p.stat().st_mtime > built
            for folder in ("models", "macros", "tests")
            for p in (DBT_PROJECT_DIR / folder).rglob("*")
            if p.is_file()
        )
        or (DBT_PROJECT_DIR / "dbt_project.yml").stat().st_mtime > built
    )


class DbtParser(DagsterDbtProjectPreparer):
    """dagster-dbt's preparer (a guard against concurrent parses included), running the dbt
    beside this Python rather than whichever `dbt` is first on PATH."""

    def _prepare_manifest(self, project: DbtProject) -> None:
        DbtCliResource(project_dir=project, dbt_executable=DBT_EXECUTABLE).cli(
            ["parse", "--quiet"], target_path=project.target_path
        ).wait()


@cache
def layercode_dbt_project() -> DbtProject:
    """The dbt project, its manifest parsed when missing or older than the project's files (a
    fresh clone, an upgrade, an edit under `dagster dev`). Parsing needs no warehouse."""
    project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
    if _manifest_is_stale(project.manifest_path):
        DbtParser().prepare(project)
    return project


class LayercodeDbtCli(DbtCliResource):
    """dagster-dbt's resource without two costs every run paid for nothing (a cProfile of the
    dbt step put them at 6.5 s of its 19 s on this project): running `dbt --version` to learn the
    version of the dbt-core installed beside it, and building an in-process dbt adapter, which
    only its `fetch_row_counts()`/`fetch_column_metadata()` use; the row counts and column
    types come from `with_row_counts` instead."""

    @cached_property
    def _cli_version(self) -> version.Version:
        return version.parse(importlib.metadata.version("dbt-core"))

    def _initialize_dbt_core_adapter(self, args):  # noqa: ANN001 - dagster-dbt's signature
        return None


def column_schema(con, schema: str, name: str, node: Mapping[str, Any]) -> dg.TableSchema:
    """A table's columns as the warehouse types them, described as the dbt project's YAML
    (`node`: a model's or a source's manifest entry) describes them."""
    described = {c: (v.get("description") or None) for c, v in node.get("columns", {}).items()}
    rows = con.execute(
        "select column_name, data_type from information_schema.columns where table_schema = ? "
        "and table_name = ? order by ordinal_position",
        [schema, name],
    ).fetchall()
    return dg.TableSchema(columns=[dg.TableColumn(c, t.lower(), description=described.get(c)) for c, t in rows])


def source_node(source: str, table: str) -> Mapping[str, Any]:
    """A dbt source's manifest entry (its description and column descriptions); empty if absent
    or unreadable (descriptions are documentation: they never fail a run)."""
    try:
        manifest = json.loads(layercode_dbt_project().manifest_path.read_text())
    except (OSError, ValueError):
        return {}
    return manifest.get("sources", {}).get(f"source.{DBT_PROJECT_NAME}.{source}.{table}", {})


def dbt_resource() -> DbtCliResource:
    # dagster-dbt's validator takes the DbtProject (its field is annotated str)
    return LayercodeDbtCli(project_dir=layercode_dbt_project(), dbt_executable=DBT_EXECUTABLE)  # type: ignore[arg-type]
