"""The dbt project as Dagster assets: one lineage from the raw tables to the marts."""

import graphlib
import hashlib
import json
from collections.abc import Mapping
from functools import cache
from typing import Any

import dagster as dg
import duckdb
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject, dbt_assets

from layercode_pipeline.defs.dbt.project import (  # noqa: F401 - re-exported: the project's names
    DBT_EXECUTABLE,
    DBT_PROJECT_DIR,
    DBT_PROJECT_NAME,
    column_schema,
    dbt_args,
    dbt_group,
    dbt_resource,
    dbt_target_path,
    layercode_dbt_project,
)
from layercode_pipeline.defs.freshness import DOWNSTREAM, FRESHNESS
from layercode_pipeline.defs.resources import StorageResource
from layercode_pipeline.lib.warehouse import Warehouse, scalar, sources_fingerprint

# the publish that follows a build (defs/serving)
SERVING_KEY = dg.AssetKey("analytics_serving")
# the singular test that runs every generic test on a pipeline run's new rows
AUDIT_TEST = f"test.{DBT_PROJECT_NAME}.new_rows_audit"


class LayercodeDbtTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        if dbt_resource_props["resource_type"] == "source":
            return None
        return dbt_group(dbt_resource_props["fqn"][1]) if len(dbt_resource_props["fqn"]) > 2 else "dbt"

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> dg.AutomationCondition | None:
        # the sources are the Python assets (they declare their own); models follow their parents
        return None if dbt_resource_props["resource_type"] == "source" else DOWNSTREAM

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = self.get_resource_props(manifest, unique_id)
        if props["resource_type"] == "model" and props["fqn"][1:2] == ["marts"]:
            spec = spec.replace_attributes(freshness_policy=FRESHNESS)
        return spec

    def get_asset_check_spec(
        self, asset_spec: dg.AssetSpec, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> dg.AssetCheckSpec | None:
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        if spec is None:
            return None
        node = manifest["nodes"][unique_id]
        if node.get("test_metadata"):
            # A generic test gates a pipeline run inside the new-rows audit (its failure fails
            # the dbt step), not as a check of its own: it has no result in a pipeline run, and
            # the daily full test run records it here.
            spec = spec._replace(blocking=False)
        return spec if spec.description else spec._replace(description=describe_dbt_test(node))


def describe_dbt_test(props: Mapping[str, Any]) -> str:
    """What a dbt test checks, in words, for its asset check in the UI: the test's own
    description, else its generic test and arguments, else a singular test's leading comment.
    Every check says how it is run: pipeline runs test the rows they build (a generic test as a
    branch of the new-rows audit, tests/new_rows_audit.sql), and the daily `dbt_full_tests_job`
    tests every row."""
    meta = props.get("test_metadata") or {}
    kwargs = meta.get("kwargs") or {}
    column = f"`{kwargs.get('column_name')}`"
    name = meta.get("name")
    if props.get("description"):
        what = props["description"]
    elif name == "not_null":
        what = f"{column} is never null."
    elif name == "unique":
        what = f"{column} is unique: one row per value."
    elif name == "accepted_values":
        what = f"{column} is one of: {', '.join(map(str, kwargs.get('values', [])))}."
    elif name == "relationships":
        target = str(kwargs.get("to", "")).removeprefix("ref('").removesuffix("')")
        what = f"Every {column} is found in `{target}.{kwargs.get('field')}`."
    elif name == "dbt_utils_free_range":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        what = f"{column} is {bounds} (when known)."
    elif name == "dbt_utils_free_unique_combination":
        what = f"One row per {', '.join(f'`{c}`' for c in kwargs.get('columns', []))}."
    else:  # a singular test: its SQL file opens with what it checks
        lines = []
        for line in str(props.get("raw_code", "")).splitlines():
            stripped = line.strip()
            if stripped.startswith("--"):
                lines.append(stripped.removeprefix("--").strip())
            elif lines:
                break  # the opening comment ended
            elif stripped and not stripped.startswith("{{"):
                break  # SQL before any comment (a `{{ config(...) }}` line may come first)
        what = " ".join(lines) or f"dbt test {props.get('name')}."
    severity = str((props.get("config") or {}).get("severity", "error")).lower()
    kind = "A warning: it never fails a run." if severity == "warn" else "An error: a failure fails the run."
    if name:  # a generic test: in a pipeline run, one branch of the new-rows audit
        when = (
            "Pipeline runs run it on the rows they build, inside the new-rows audit (one query for every "
            "generic test; a failure fails the run and names this test); the daily full test job runs it "
            "over every row and records the result here."
        )
    else:
        when = "Pipeline runs test the rows they build; the daily full test job tests every row."
    return f"{what} {kind} {when}"


# dbt tests become asset checks on the models. There are no source tests: as checks on the raw
# (Python) assets they would make every ingest run invoke dbt a second time; the same tests
# sit on the staging models instead, so dbt runs once per run.
TRANSLATOR = LayercodeDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))


@dbt_assets(
    manifest=layercode_dbt_project().manifest_path,
    project=layercode_dbt_project(),
    # Not in the warehouse pool: the writers' lock below orders dbt with the other writers, and
    # is let go as soon as dbt and the row counts are done. Dagster then records this step's
    # results (a second of its own work) while the next run's ingest, waiting in the pool,
    # already has the warehouse; this run's serving publish then goes before that run's later
    # steps (measured: steady-traffic p95 68.5 s against 81.3 s with dbt in the pool,
    # bench/freshness_bench.py --steady at 1M sessions).
    dagster_dbt_translator=TRANSLATOR,
)
def layercode_dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, storage: StorageResource):
    warehouse = storage.warehouse
    with warehouse.open_for_writing():
        # creates the raw and enrichment tables, so the models build before any data arrives;
        # waits (bounded) for a process outside the pipeline that holds the file, and dbt's own
        # connect retries (profiles.yml) cover one that grabs it again in between
        pass
    # Let go as soon as dbt and the row counts are done: Dagster records the results (a second
    # of its own work) while the next run's ingest has the warehouse, and this run's publish
    # then takes it back ahead of that run's later steps (warehouse_lock's `first`).
    with warehouse.lock():
        # Collected, then counted: dagster-dbt's fetch_row_counts() keeps a DuckDB connection
        # open in this process, which would lock the warehouse against every other process.
        # One fixed target directory per kind of invocation (data/dbt/<kind>), not dagster-dbt's
        # new one per run: dbt's partial-parse state stays valid from run to run (a full parse
        # costs seconds of every run's freshness), and runs leave no directory behind. The
        # writers' lock held here means no two builds share it at once.
        # "run": the incremental models build the sessions, days and hours the new data touches
        # and the tests check the rows this run wrote. A run of checks alone (dbt_full_tests_job,
        # on its schedule) tests every row: dagster-dbt selects the tests, dbt builds nothing.
        mode = "run" if context.selected_asset_keys else "scheduled_tests"
        built_from = project = None
        args = dbt_args(mode, json.loads(storage.dbt_vars()))
        views_as_built: list[tuple[dg.AssetKey, bool]] = []  # selected views dbt does not replace
        if mode == "run":
            with warehouse.connect() as con:
                salt = json.dumps([storage.dbt_vars(), manifest_digest()])
                built_from = sources_fingerprint(con, dbt_source_tables(), salt=salt)
                project = hashlib.sha256(salt.encode()).hexdigest()
                last = last_build(con)
            if unattended(context.run.tags) and project == last.get("project"):
                # the views' SQL is as the last build created it (same project, same vars):
                # replacing them again is a second of every run for nothing
                args = [*args, "--exclude", "config.materialized:view"]
                views_as_built = [view for view in dbt_views_in_order() if view[0] in context.selected_asset_keys]
                if len(views_as_built) == len(context.selected_asset_keys):
                    # the automation sensor asked for views alone: nothing for dbt to build
                    yield from view_results(context, [key for key, _ in views_as_built])
                    return
            if unattended(context.run.tags) and built_from == last.get("fingerprint"):
                context.log.info("dbt not run: no source table changed since the last build")
                return  # nothing materialised, so nothing downstream (the publish) runs either
        invocation = dbt.cli(
            args,
            context=context,
            target_path=dbt_target_path(mode, storage.paths.data_dir),
            raise_on_error=False,  # the results first (failed checks shown as such), then the verdict
        )
        # recorded while dbt runs (its process has started; it does not touch them), not after
        # it: those that read no table it builds (a multi-asset yields parents first)
        yield from view_results(context, [key for key, reads_a_table in views_as_built if not reads_a_table])
        events = with_row_counts(list(invocation.stream()), warehouse)
        audit = audit_result(invocation, warehouse) if mode == "run" else None
        if built_from is not None and invocation.is_successful():
            with warehouse.connect() as con:
                con.execute(
                    "create or replace table main.dbt_built_from as "
                    "select ? as fingerprint, ? as project, now() as built_at",
                    [built_from, project],
                )
    yield from events
    if invocation.is_successful():
        yield from view_results(context, [key for key, reads_a_table in views_as_built if reads_a_table])
    if audit is not None:
        context.log.info(
            f"new-rows audit: {audit['tests']} generic tests on this run's rows, {len(audit['failed'])} failed"
        )
    if not invocation.is_successful():
        results = invocation.get_artifact("run_results.json").get("results", [])
        errors = [r["unique_id"] for r in results if r.get("status") in ("error", "runtime error")]
        failed = [r["unique_id"] for r in results if r.get("status") == "fail"]
        # A failed test in a pipeline run fails the run (dbt skipped what depends on it); in the
        # scheduled test job it is a failed asset check, and only errors fail the run.
        if mode == "run" or errors or not failed:
            audited = audit["failed"] if audit else []
            named = "; ".join(f"{f['test']} ({f['failures']} rows)" for f in audited[:5])
            raise dg.Failure(
                f"dbt {mode}: {len(errors)} errors, {len(failed)} failed tests"
                + (f"; the new-rows audit failed: {named}" if audited else ""),
                metadata={
                    "errors": dg.MetadataValue.json(errors[:20]),
                    "failed_tests": dg.MetadataValue.json(failed[:20]),
                    "new_rows_audit_failed": dg.MetadataValue.json(audited[:50]),
                },
            )


def view_results(context: dg.AssetExecutionContext, views: list[dg.AssetKey]):
    """The selected views a run left as they are, reported materialized: their SQL is the one the
    last build of this project created, and their rows are their sources' as of this run (dbt's
    outcome does not change them). Not reported, they stayed stale in Dagster's eyes, and the
    automation sensor launched a run for them between pipeline runs, holding the warehouse for
    up to 16 s for nothing (4 such runs in 10 minutes of bench/freshness_bench.py --steady)."""
    for key in views:
        yield dg.Output(
            None,
            output_name=context.assets_def.get_output_name_for_asset_key(key),
            metadata={"dbt": "view not replaced: its SQL is as the last build of this project created it"},
        )


def audited_check_keys() -> list[dg.AssetCheckKey]:
    """The checks of the generic tests a pipeline run runs inside the new-rows audit (those of
    error severity; RUN_AUDITED_TESTS). A pipeline job leaves them out of its selection: they
    have no result of their own in its runs, and planning them made the daemon write a couple of
    hundred events before each run could start (7 s of a loaded 2-core host)."""
    manifest = json.loads(layercode_dbt_project().manifest_path.read_text())
    audited = {
        node["name"]
        for node in manifest["nodes"].values()
        if node["resource_type"] == "test"
        and node.get("test_metadata")
        and str((node.get("config") or {}).get("severity", "error")).lower() == "error"
    }
    return [spec.key for spec in layercode_dbt_models.check_specs if spec.name in audited]


def audit_result(invocation, warehouse: Warehouse) -> dict[str, Any] | None:
    """The new-rows audit's outcome (tests/new_rows_audit.sql): how many generic tests it ran
    and, when it failed, each failing test and its failing rows' count (its query run again,
    with the writers' lock still held, so it sees what the tests saw)."""
    results = invocation.get_artifact("run_results.json").get("results", [])
    found = [r for r in results if r["unique_id"] == AUDIT_TEST]
    if not found:
        return None
    sql = found[0].get("compiled_code") or ""
    out: dict[str, Any] = {"tests": sql.count(" as test_id, "), "failed": []}
    if found[0].get("status") in ("fail", "error") and sql:
        with warehouse.connect(read_only=True) as con:
            rows = con.execute(f"select test_id, model, failures from ({sql}) order by 1").fetchall()
        out["failed"] = [{"test": t, "model": m, "failures": n} for t, m, n in rows]
    return out


def unattended(tags: Mapping[str, str]) -> bool:
    """A run a sensor launched for new data (not the heartbeat, whose point is to run the whole
    chain, and not a run a person asked for): it may find that nothing changed."""
    launched_by_sensor = bool(tags.get("dagster/sensor_name")) or tags.get("layercode/stage") == "automation"
    return launched_by_sensor and tags.get("layercode/reason") != "heartbeat"


@cache
def dbt_view_keys() -> frozenset[dg.AssetKey]:
    """The models dbt creates as views: a pipeline run leaves them as they are (their SQL is
    the project's, their rows the sources'), so nothing may wait for them to be replaced."""
    return frozenset(key for key, _ in dbt_views_in_order())


@cache
def dbt_views_in_order() -> tuple[tuple[dg.AssetKey, bool], ...]:
    """The views, parents first, each with whether it reads a model dbt builds as a table
    (directly or through other views): such a view is reported after the build's results."""
    manifest = json.loads(layercode_dbt_project().manifest_path.read_text())
    models = {uid: node for uid, node in manifest["nodes"].items() if node["resource_type"] == "model"}
    parents = {uid: [p for p in node["depends_on"]["nodes"] if p in models] for uid, node in models.items()}
    views = {uid for uid, node in models.items() if node.get("config", {}).get("materialized") == "view"}
    reads_a_table: dict[str, bool] = {}
    ordered = []
    for uid in graphlib.TopologicalSorter(parents).static_order():
        reads_a_table[uid] = any(p not in views or reads_a_table[p] for p in parents[uid])
        if uid in views:
            key = TRANSLATOR.get_asset_spec(manifest, uid, layercode_dbt_project()).key
            ordered.append((key, reads_a_table[uid]))
    return tuple(ordered)


@cache
def manifest_digest() -> str:
    """The dbt project as parsed (a changed model or test changes it): part of what a build read."""
    return hashlib.sha256(layercode_dbt_project().manifest_path.read_bytes()).hexdigest()


@cache
def dbt_source_tables() -> list[tuple[str, str]]:
    """The (schema, table) of every dbt source: what the models read (not the ingest's own
    bookkeeping, which changes on every run)."""
    sources = json.loads(layercode_dbt_project().manifest_path.read_text()).get("sources", {}).values()
    return sorted({(node["schema"], node.get("identifier") or node["name"]) for node in sources})


def last_build(con) -> dict[str, Any]:
    """What the last successful build read (main.dbt_built_from): its sources' `fingerprint`
    and its `project` (the dbt project and vars it built with); empty before any."""
    try:
        row = con.execute("select * from main.dbt_built_from").fetchone()
        columns = [d[0] for d in con.description]
    except duckdb.CatalogException:
        return {}
    return dict(zip(columns, row, strict=True)) if row else {}


def with_row_counts(events: list, warehouse: Warehouse) -> list:
    """Each built model's row count and column schema (the warehouse's types, the descriptions
    of its `_schema.yml`), so the UI shows every column typed and described. Read at once, with
    the writers' lock still held, so the events can be recorded after it is let go."""
    nodes = json.loads(layercode_dbt_project().manifest_path.read_text())["nodes"]
    # schema.alias, not the manifest's relation_name: that one names the database after the
    # file dbt parsed with, which need not be the warehouse this run builds
    relations = {
        uid: (node["schema"], node.get("alias") or node["name"])
        for uid, node in nodes.items()
        if node.get("resource_type") == "model"
    }
    out = []
    con = warehouse.connect(read_only=True)
    try:
        for event in events:
            raw = event.metadata.get("unique_id") if isinstance(event, (dg.Output, dg.AssetMaterialization)) else None
            uid = raw.value if isinstance(raw, dg.MetadataValue) else raw
            if uid in relations:
                schema, name = relations[uid]
                extra: dict[str, Any] = {"dagster/column_schema": column_schema(con, schema, name, nodes[uid])}
                if nodes[uid].get("config", {}).get("materialized") in ("table", "incremental"):
                    extra["dagster/row_count"] = scalar(con, f'select count(*) from "{schema}"."{name}"')
                event = event.with_metadata({**event.metadata, **extra})
            out.append(event)
    finally:
        con.close()
    return out
