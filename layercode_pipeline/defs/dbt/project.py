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

from layercode_pipeline.config import Settings

DBT_PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt_project"
DBT_PROJECT_NAME = "layercode_analytics"  # dbt_project.yml's name
# the folders under models/; each is a Dagster asset group (the translator names them, and the
# jobs and the demo select by them)
DBT_LAYERS = ("staging", "intermediate", "marts")


def dbt_group(layer: str) -> str:
    return f"dbt_{layer}"


DBT_GROUPS = tuple(dbt_group(layer) for layer in DBT_LAYERS)

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


# dbt through the pipeline's warm dbt (defs/dbt/warm.py): the `layercode-dbt` executable this
# package installs beside this Python; without it (a checkout not reinstalled), dbt itself
_WARM_CLIENT = Path(sys.executable).parent / "layercode-dbt"


class LayercodeDbtCli(DbtCliResource):
    """dagster-dbt's resource without two costs every run paid for nothing (a cProfile of the
    dbt step put them at 6.5 s of its 19 s on this project): running `dbt --version` to learn the
    version of the dbt-core installed beside it, and building an in-process dbt adapter, which
    only its `fetch_row_counts()`/`fetch_column_metadata()` use; the row counts and column
    types come from `with_row_counts` instead. Each run also makes sure the pipeline's warm dbt
    (defs/dbt/warm.py) is running: dbt imported and the project parsed once, not in every run."""

    # the target directory of the pipeline runs' builds: the warm dbt serves the invocations
    # under its parent and parses ahead as their last build did ("": no warm dbt)
    warm_state_dir: str = ""
    # the warm dbt exits after this long without an invocation (the next run starts it again)
    warm_idle_s: float = Settings.default("warm_dbt_idle_s")

    @cached_property
    def _cli_version(self) -> version.Version:
        return version.parse(importlib.metadata.version("dbt-core"))

    def _initialize_dbt_core_adapter(self, args):  # noqa: ANN001 - dagster-dbt's signature
        return None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        super().setup_for_execution(context)
        if self.dbt_executable == str(_WARM_CLIENT) and self.warm_state_dir:
            from layercode_pipeline.defs.dbt.warm import ensure_warm_dbt

            ensure_warm_dbt(self.warm_state_dir, self.warm_idle_s)


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


def dbt_resource(data_dir: Path | None = None, warm_idle_s: float | None = None) -> DbtCliResource:
    """The dbt resource; given the pipeline's data directory, its runs go through the
    pipeline's warm dbt (defs/dbt/warm.py), which exits after `warm_idle_s` without one (by
    default LAYERCODE_WARM_DBT_IDLE_S)."""
    executable = str(_WARM_CLIENT) if _WARM_CLIENT.exists() else DBT_EXECUTABLE
    state = str(dbt_target_path("run", data_dir)) if data_dir is not None else ""
    if warm_idle_s is None:  # (no data directory: no warm dbt, and nothing to read)
        warm_idle_s = Settings.load().warm_dbt_idle_s if data_dir is not None else Settings.default("warm_dbt_idle_s")
    # dagster-dbt's validator takes the DbtProject (its field is annotated str)
    return LayercodeDbtCli(
        project_dir=layercode_dbt_project(),  # type: ignore[arg-type]
        dbt_executable=executable,
        warm_state_dir=state,
        warm_idle_s=warm_idle_s,
    )


# How much each kind of dbt invocation builds and tests (the `test_scope` var; the project's
# `get_where_subquery` reads it):
# - "run": what every pipeline run does. Incremental models build only the sessions, days and
#   hours the new data touches, and their tests check only the rows this run wrote.
# - "full": everything from scratch (`--full-refresh`), every row tested.
# - "scheduled_tests": no model built; every test over whole tables (the schedule's job), so a
#   defect in an old row is still found.
# Each kind has its own target directory under the data directory (one per pipeline, so two
# pipelines on one checkout never share dbt's artifacts): dbt re-parses the whole project when
# its vars change, so runs and scheduled test runs keep their partial-parse state apart, and a
# kind's state stays valid from one invocation to the next.
# A pipeline run leaves the generic tests to `tests/new_rows_audit.sql`, which runs them all on
# the new rows in one query (dbt's cost is per node: two hundred test nodes were most of a run's
# dbt time); the singular tests and any warning-severity generic test still run as nodes.
RUN_AUDITED_TESTS = "test_type:generic,config.severity:error"
DBT_MODES = {
    "run": (["build", "--exclude", RUN_AUDITED_TESTS], "new"),
    "full": (["build", "--full-refresh"], "all"),
    "scheduled_tests": (["test"], "all"),
}


def dbt_target_path(mode: str, data_dir: Path) -> Path:
    return data_dir / "dbt" / mode


def dbt_args(mode: str, dbt_vars: Mapping[str, str]) -> list[str]:
    """The dbt CLI arguments (without the executable) of one kind of invocation."""
    command, scope = DBT_MODES[mode]
    return [*command, "--vars", json.dumps({**dbt_vars, "test_scope": scope})]


def dbt_command(mode: str, dbt_vars: Mapping[str, str], data_dir: Path) -> list[str]:
    """The whole command line, as the benches run it outside Dagster."""
    return [
        DBT_EXECUTABLE,
        *dbt_args(mode, dbt_vars),
        "--quiet",
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
        "--target-path",
        str(dbt_target_path(mode, data_dir)),
    ]
