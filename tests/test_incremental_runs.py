"""A run's cost follows the new calls, not the warehouse (issue 27).

A history of calls over three days is built by the real assets; then one new call lands and
the same assets run again, as the landing sensor's run would. The tests assert on what that
run selected and wrote (never on time): the sessions, conversations, days and hours its
incremental marts rebuilt, the rows each of its dbt tests examined, the rows and Parquet
partitions its publish copied, and the sessions its enrichment looked at. The scheduled full
test run (a check-only Dagster run) still finds a defect planted in an old row, which the
pipeline's own runs by design no longer read.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from layercode_pipeline.defs.dbt.assets import AUDIT_TEST, dbt_resource, layercode_dbt_models
from layercode_pipeline.defs.dbt.automation import dbt_full_tests_job
from layercode_pipeline.defs.dbt.project import dbt_target_path, layercode_dbt_project
from layercode_pipeline.defs.enrichment.assets import session_enrichments
from layercode_pipeline.defs.ingest.assets import raw_layercode_events
from layercode_pipeline.defs.resources import OpenAIResource, StorageResource
from layercode_pipeline.defs.serving.assets import analytics_serving
from layercode_pipeline.simulator import generate_batch, write_segment

RUN_ASSETS = [raw_layercode_events, session_enrichments, layercode_dbt_models, analytics_serving]
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def run_pipeline(storage: StorageResource, tags: dict[str, str] | None = None) -> dg.ExecuteInProcessResult:
    """What the landing sensor's ingest run executes: ingest, enrichment (offline), dbt, publish."""
    result = dg.materialize(
        RUN_ASSETS,
        # the runs after the first hand dbt the manifest the pipeline's warm dbt parsed ahead (defs/dbt/warm.py)
        resources={"storage": storage, "dbt": dbt_resource(storage.paths.data_dir), "openai": OpenAIResource()},
        tags=tags,
    )
    assert result.success
    return result


def query(storage: StorageResource, sql: str) -> list[tuple]:
    con = duckdb.connect(str(storage.warehouse.path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def newest(storage: StorageResource, table: str, columns: str) -> set[tuple]:
    """The rows of `table` the newest dbt invocation wrote (their `built_at`)."""
    return set(
        query(
            storage,
            f"select {columns} from marts.{table} where built_at = (select max(built_at) from marts.{table})",
        )
    )


def metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    mat = result.asset_materializations_for_node(key.replace("-", "_"))
    return {k: v.value for k, v in mat[-1].metadata.items()}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Three days of calls built, then one new call (today) through a second run."""
    data = tmp_path_factory.mktemp("incremental") / "data"
    landing = data / "landing"
    for days_ago in (3, 2, 1):
        day = TODAY - timedelta(days=days_ago) + timedelta(hours=9)
        write_segment(
            landing, generate_batch(6, seed=40 + days_ago, base_time=day), received_at=day, name=f"d{days_ago}"
        )
    storage = StorageResource(data_dir=str(data))
    first = run_pipeline(storage)
    old = {r[0] for r in query(storage, "select session_id from marts.fct_sessions")}
    new_batch = generate_batch(1, seed=7, base_time=TODAY + timedelta(hours=9), reconnect_rate=0.0)
    write_segment(landing, new_batch, received_at=datetime.now(UTC), name="new-call")
    second = run_pipeline(storage)
    return {
        "storage": storage,
        "first": first,
        "second": second,
        "old": old,
        "new": new_batch.sessions[0],
    }


def test_a_run_after_one_new_session_rebuilds_only_its_rows_days_and_hours(pipeline):
    storage, new = pipeline["storage"], pipeline["new"]
    assert len(pipeline["old"]) >= 18 and new.session_id not in pipeline["old"]
    assert newest(storage, "fct_sessions", "session_id") == {(new.session_id,)}
    assert newest(storage, "fct_turns", "distinct session_id") == {(new.session_id,)}
    assert newest(storage, "fct_conversations", "conversation_id") == {(new.conversation_id,)}
    started = new.started_at.astimezone(UTC)
    assert newest(storage, "agg_daily_call_metrics", "call_date, agent_id") == {(started.date(), new.agent_id)}
    hours = newest(storage, "agg_hourly_call_metrics", "call_hour, agent_id")
    assert {(h.replace(tzinfo=None), a) for h, a in hours} == {
        (started.replace(tzinfo=None, minute=0, second=0, microsecond=0), new.agent_id)
    }
    # the old rows were left as the first run wrote them
    (older,) = query(
        storage,
        "select count(*) from marts.fct_sessions where built_at < (select max(built_at) from marts.fct_sessions)",
    )[0]
    assert older == len(pipeline["old"])
    # and every day is whole: each (day, agent) row counts what a recomputation from scratch counts
    daily = set(query(storage, "select call_date, agent_id, sessions from marts.agg_daily_call_metrics"))
    assert daily == set(
        query(
            storage,
            "select cast(session_date_at at time zone 'UTC' as date), agent_id, count(*) from marts.fct_sessions "
            "where agent_id is not null and session_date_at is not null group by all",
        )
    )
    assert any(d == started.date() and a == new.agent_id for d, a, _ in daily)


def dbt_invocations(log: Path) -> list[set[str]]:
    """The names of dbt's events in each invocation its JSON log (dbt.log) records, in order."""
    invocations: list[set[str]] = []
    for line in log.read_text().splitlines():
        try:
            name = json.loads(line)["info"]["name"]
        except (ValueError, KeyError):
            continue
        if name == "MainReportVersion":
            invocations.append(set())
        if invocations:
            invocations[-1].add(name)
    return invocations


def test_the_second_runs_dbt_was_handed_the_project_its_warm_dbt_parsed_ahead(pipeline):
    """dbt's start-up is paid while a run waits: the first run's dbt parsed the project itself;
    the second's warm dbt had parsed it with the first build's vars (defs/dbt/warm.py), so dbt
    went straight to the models."""
    parsing = {"UnableToPartialParse", "PartialParsingEnabled"}
    first, second = dbt_invocations(pipeline["storage"].paths.data_dir / "dbt" / "run" / "dbt.log")[:2]
    assert first & parsing
    assert not second & parsing and "FoundStats" in second


def test_the_run_read_only_the_new_sessions_events(pipeline):
    """The marts read the touched sessions' webhook events from their oldest load on: a
    constant DuckDB prunes the events table with (a list of random session ids prunes nothing)."""
    storage, new = pipeline["storage"], pipeline["new"]
    ((oldest_new, newest_old),) = query(
        storage,
        f"select min(ingested_at) filter (where session_id = '{new.session_id}'), "
        f"max(ingested_at) filter (where session_id <> '{new.session_id}') from raw.layercode_events",
    )
    assert oldest_new > newest_old
    compiled = dbt_target_path("run", storage.paths.data_dir) / "compiled" / "layercode_analytics" / "models" / "marts"
    for model, reads in (("fct_sessions", 6), ("fct_turns", 3)):
        sql = (compiled / f"{model}.sql").read_text()
        bounds = re.findall(r"ingested_at >= '([^']+)'::timestamptz", sql)
        assert len(bounds) >= reads, model
        assert {datetime.fromisoformat(b) for b in bounds} == {oldest_new}, model


def test_each_test_of_the_run_examined_only_the_new_rows(pipeline):
    storage, new = pipeline["storage"], pipeline["new"]
    run_results = json.loads((dbt_target_path("run", storage.paths.data_dir) / "run_results.json").read_text())
    tests = [r for r in run_results["results"] if r["unique_id"].startswith("test.")]
    assert all(r["status"] in ("pass", "warn") for r in tests)
    # the generic tests ran inside the new-rows audit, one branch each; the singular ones as nodes
    (audit,) = [r for r in tests if r["unique_id"] == AUDIT_TEST]
    generic = json.loads(layercode_dbt_project().manifest_path.read_text())["nodes"]
    generic = [n for n in generic.values() if n["resource_type"] == "test" and n.get("test_metadata")]
    assert audit["compiled_code"].count(" as test_id, ") == len(generic) > 100
    assert not any(r["unique_id"] in {n["unique_id"] for n in generic} for r in tests)
    examined: dict[str, int] = {}
    con = duckdb.connect(str(storage.warehouse.path), read_only=True)
    try:
        for r in tests:
            for relation, condition in re.findall(
                # a test's subject: `(select * from <model> where (<new rows>))`, inline or as the
                # audit's CTE of the model's new rows
                r'\(select \* from ("[^"]+"\."[^"]+"\."[^"]+") where \((.+?)\)\)(?: dbt_subquery|,|\s)',
                r["compiled_code"],
            ):
                table = relation.split(".")[-1].strip('"')
                examined[table] = con.execute(f"select count(*) from {relation} where {condition}").fetchone()[0]
        whole = {t: con.execute(f"select count(*) from marts.{t}").fetchone()[0] for t in ("fct_sessions", "fct_turns")}
    finally:
        con.close()
    # the marts' tests saw the new session's rows, and only them
    assert examined["fct_sessions"] == 1 < whole["fct_sessions"]
    assert examined["fct_turns"] == len(new.session_end()["transcript"]) < whole["fct_turns"]
    assert examined["fct_conversations"] == 1
    # the staging views' tests saw the events (and sessions) landed since the previous run
    events = 2 + len(new.messages()) + (1 if new.session_update() else 0)
    assert examined["stg_webhook_events"] == events
    assert examined["stg_webhook_session_ends"] == 1
    assert examined["int_session_sources"] == 1


def test_the_run_enriched_and_published_only_what_changed(pipeline):
    first, second = pipeline["first"], pipeline["second"]
    enrichment = metadata(second, "session_enrichments")
    assert enrichment["candidates"] == 1 and enrichment["enriched"] == 1
    published = metadata(second, "analytics_serving")
    assert metadata(first, "analytics_serving")["whole_copy"] is True and published["whole_copy"] is False
    assert published["rows_copied"]["fct_sessions"] == 1
    assert published["rows_copied"]["fct_conversations"] == 1
    # Parquet: today's partition of each partitioned mart, nothing else
    assert published["parquet_partitions_written"] == {
        **{t: 1 for t in ("fct_sessions", "fct_turns", "fct_conversations")},
        "fct_recordings": 0,  # the new session has no recording: no partition of it changed
        **{
            t: 1
            for t in published["parquet_partitions_written"]
            if not t.startswith(("fct_sessions", "fct_turns", "fct_conversations", "fct_recordings"))
        },
    }
    serving = pipeline["storage"].paths.serving
    days = sorted(p.name for p in (serving / "parquet" / "fct_sessions").iterdir())
    assert len(days) == 4 and days[-1] == f"session_date={TODAY.date()}"
    # the published copy holds every session, old and new, in both forms
    con = duckdb.connect()
    try:
        total = con.execute(
            f"select count(*) from read_parquet('{serving}/parquet/fct_sessions/*/*.parquet', hive_partitioning = true)"
        ).fetchone()[0]
        con.execute(f"attach '{serving / 'analytics.duckdb'}' as s (read_only)")
        copied = con.execute("select count(*) from s.marts.fct_sessions").fetchone()[0]
    finally:
        con.close()
    assert total == copied == len(pipeline["old"]) + 1


def test_the_scheduled_full_test_run_still_finds_a_defect_in_an_old_row(pipeline):
    storage = pipeline["storage"]
    old_session = sorted(pipeline["old"])[0]
    with storage.connect() as con:  # a defect in an old row: a hand edit, a bad backfill, a fixed bug
        con.execute("update marts.fct_sessions set duration_ms = -5 where session_id = ?", [old_session])
    try:
        # a pipeline run (one more new call) does not read the old row: it passes
        landing = storage.paths.landing
        later = generate_batch(1, seed=8, base_time=TODAY + timedelta(hours=10), reconnect_rate=0.0)
        write_segment(landing, later, received_at=datetime.now(UTC), name="later-call")
        run_pipeline(storage)
        # the schedule's job (checks only, every row) finds it, as a failed asset check
        defs = dg.Definitions(
            assets=[layercode_dbt_models],
            jobs=[dbt_full_tests_job],
            resources={"storage": storage, "dbt": dbt_resource()},
        )
        result = defs.resolve_job_def(dbt_full_tests_job.name).execute_in_process(raise_on_error=False)
        failed = {
            e.asset_check_evaluation_data.check_name
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.asset_check_evaluation_data.passed
        }
        assert {"assert_durations_non_negative", "dbt_utils_free_range_fct_sessions_duration_ms__0"} <= failed, failed
        # error-severity checks block: the scheduled run fails, so it is seen and can alert
        assert not result.success
        materialized = [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
        assert materialized == []  # the job built nothing
    finally:
        with storage.connect() as con:
            con.execute("update marts.fct_sessions set duration_ms = 1000 where session_id = ?", [old_session])


def test_a_sensor_run_with_nothing_new_does_no_dbt_work(pipeline):
    """Segments holding only redeliveries, or an hourly REST run that fetched nothing: a run a
    sensor launched finds every source as the last build left it, and neither invokes dbt nor
    publishes. The heartbeat (the liveness run every 30 min) and a person's run still build."""
    storage = pipeline["storage"]
    marts = {"marts/fct_sessions", "marts/agg_daily_call_metrics"}

    def built(result: dg.ExecuteInProcessResult) -> set[str]:
        return {m.asset_key.to_user_string() for m in result.get_asset_materialization_events() if m.asset_key}

    def dbt_invoked(result: dg.ExecuteInProcessResult) -> bool:  # a dbt test ran: one of its checks
        return any(
            e.asset_check_evaluation_data.asset_key.path[0] in ("staging", "intermediate", "marts")
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
        )

    sensor = {"dagster/sensor_name": "landing_sensor", "layercode/reason": "sealed segments"}
    before = query(storage, "select max(built_at) from marts.fct_sessions")
    quiet = run_pipeline(storage, tags=sensor)
    assert "raw_layercode_events" in built(quiet)  # the ingest ran and found nothing new
    assert not built(quiet) & (marts | {"analytics_serving"}) and not dbt_invoked(quiet)
    assert query(storage, "select max(built_at) from marts.fct_sessions") == before
    # the same quiet warehouse: the heartbeat builds (and tests) as before
    heartbeat = run_pipeline(storage, tags={**sensor, "layercode/reason": "heartbeat"})
    views = {"staging/stg_webhook_events", "intermediate/int_session_sources"}
    assert marts | views <= built(heartbeat) and dbt_invoked(heartbeat)
    # something new: the sensor's run builds again, all but the views (their SQL is as the last
    # build of the same project created it; the data they show is the new data anyway)
    landing = storage.paths.landing
    newer = generate_batch(1, seed=9, base_time=TODAY + timedelta(hours=11), reconnect_rate=0.0)
    write_segment(landing, newer, received_at=datetime.now(UTC), name="newer-call")
    again_run = run_pipeline(storage, tags=sensor)
    again = built(again_run)
    assert marts | {"analytics_serving"} | views <= again
    # the views are reported as they are (so nothing waits for them), and dbt did not replace them
    for event in again_run.get_asset_materialization_events():
        if event.asset_key and event.asset_key.to_user_string() in views:
            assert "view not replaced" in str(event.materialization.metadata["dbt"].value)
    ran = json.loads((dbt_target_path("run", storage.paths.data_dir) / "run_results.json").read_text())["results"]
    assert not {r["unique_id"].rsplit(".", 1)[-1] for r in ran} & {v.rsplit("/", 1)[-1] for v in views}
    assert newer.sessions[0].session_id in {r[0] for r in query(storage, "select session_id from marts.fct_sessions")}


def test_only_a_sensors_run_for_new_data_may_skip_dbt():
    from layercode_pipeline.defs.dbt.assets import unattended

    assert unattended({"dagster/sensor_name": "landing_sensor", "layercode/reason": "sealed segments"})
    assert unattended({"dagster/sensor_name": "layercode_automation", "layercode/stage": "automation"})
    assert not unattended({"dagster/sensor_name": "landing_sensor", "layercode/reason": "heartbeat"})
    assert not unattended({})  # a person's run (the UI, `dg launch`, the demo)
    assert not unattended({"layercode/launched_by": "demo", "layercode/stage": "dbt"})


def test_the_first_run_on_a_warehouse_from_before_built_at_rebuilds_everything(tmp_path):
    """An upgraded warehouse (marts without `built_at`): the first run fills every row."""
    data = tmp_path / "data"
    day = TODAY - timedelta(days=1) + timedelta(hours=9)
    write_segment(data / "landing", generate_batch(3, seed=3, base_time=day), received_at=day, name="d")
    storage = StorageResource(data_dir=str(data))
    run_pipeline(storage)
    with storage.connect() as con:
        for table in ("fct_sessions", "fct_turns", "fct_conversations", "agg_daily_call_metrics"):
            con.execute(f"alter table marts.{table} drop column built_at")
    run_pipeline(storage)
    for table in ("fct_sessions", "fct_turns", "fct_conversations", "agg_daily_call_metrics"):
        assert query(storage, f"select count(*) from marts.{table} where built_at is null") == [(0,)], table


def test_a_defect_in_a_new_row_fails_the_run_naming_its_test_and_nothing_is_published(pipeline):
    """The pipeline run's audit (every generic test on the new rows, in one query) is a gate: a
    new row that breaks a test fails the run, the failure names the test, and the serving copy
    keeps what it had."""
    storage = pipeline["storage"]
    landing = storage.paths.landing
    bad = generate_batch(1, seed=12, base_time=TODAY + timedelta(hours=12), reconnect_rate=0.0)
    write_segment(landing, bad, received_at=datetime.now(UTC), name="bad-call")
    sid = bad.sessions[0].session_id
    storage_ingest_and_enrich = [raw_layercode_events, session_enrichments]
    dg.materialize(storage_ingest_and_enrich, resources={"storage": storage, "openai": OpenAIResource()})
    with storage.connect() as con:  # the enrichment answered an outcome the schema does not allow
        con.execute(
            "insert into enrichment.session_enrichments select * replace ('bogus' as outcome, now() as enriched_at) "
            "from enrichment.session_enrichments where session_id = ? limit 1",
            [sid],
        )
    result = dg.materialize(
        RUN_ASSETS,
        resources={"storage": storage, "dbt": dbt_resource(), "openai": OpenAIResource()},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "new-rows audit failed" in message
    assert "accepted_values_stg_session_enrichments_outcome" in message, message
    serving = storage.paths.serving / "analytics.duckdb"
    con = duckdb.connect(str(serving), read_only=True)
    try:
        assert con.execute("select count(*) from marts.fct_sessions where session_id = ?", [sid]).fetchone()[0] == 0
    finally:
        con.close()


@pytest.mark.parametrize("job_name", ["ingest_job", "backfill_job"])
def test_a_pipeline_job_plans_the_audit_check_and_no_generic_test_of_its_own(job_name):
    """The pipeline jobs leave the generic tests' checks out (a run runs them inside the audit;
    planning two hundred made the daemon write as many events before each run started), and
    keep the audit and the singular tests."""
    from layercode_pipeline.definitions import build_definitions

    job = build_definitions().resolve_job_def(job_name)
    nodes = json.loads(layercode_dbt_project().manifest_path.read_text())["nodes"]
    generic = {n["name"] for n in nodes.values() if n["resource_type"] == "test" and n.get("test_metadata")}
    planned = {key.name for key in job.asset_layer.asset_graph.asset_check_keys}
    assert "new_rows_audit" in planned and "assert_turns_ordered" in planned
    severities = {n["name"]: (n.get("config") or {}).get("severity", "error").lower() for n in nodes.values()}
    assert not {name for name in planned & generic if severities[name] == "error"}


def test_after_a_sensor_run_the_automation_sensor_asks_for_no_view(pipeline):
    """A sensor's run leaves the views as they are: it still reports them, or the automation
    sensor would see their sources updated and not them, and launch a run for them between
    pipeline runs (holding the warehouse to build nothing). A run of views alone, which that
    sensor may still ask for, reports them without invoking dbt."""
    from layercode_pipeline.defs.dbt.assets import dbt_view_keys

    storage = pipeline["storage"]
    resources = {"storage": storage, "dbt": dbt_resource(storage.paths.data_dir), "openai": OpenAIResource()}
    # launched like the landing sensor's runs: a job by name, so the run records no asset selection
    job = dg.define_asset_job("sensor_like_ingest", selection=dg.AssetSelection.assets(*RUN_ASSETS))
    defs = dg.Definitions(assets=RUN_ASSETS, jobs=[job], resources=resources)
    sensor = {"dagster/sensor_name": "landing_sensor", "layercode/reason": "sealed segments"}
    views = dbt_view_keys()
    with dg.instance_for_test() as instance:
        first = defs.resolve_job_def(job.name).execute_in_process(
            instance=instance, tags={**sensor, "layercode/reason": "heartbeat"}
        )
        assert first.success
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        newer = generate_batch(1, seed=11, base_time=TODAY + timedelta(hours=12), reconnect_rate=0.0)
        write_segment(storage.paths.landing, newer, received_at=datetime.now(UTC), name="newest-call")
        second = defs.resolve_job_def(job.name).execute_in_process(instance=instance, tags=sensor)
        assert second.success
        assert any(
            e.asset_key == dg.AssetKey(["marts", "fct_sessions"]) for e in second.get_asset_materialization_events()
        )
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        asked = {key.to_user_string() for key in views if tick.get_num_requested(key)}
        assert not asked, asked
        # a run of views alone (as the automation sensor asks for them): reported, dbt not invoked
        stamp = (dbt_target_path("run", storage.paths.data_dir) / "run_results.json").stat().st_mtime_ns
        only_views = dg.materialize(
            [layercode_dbt_models],
            selection=sorted(views, key=dg.AssetKey.to_user_string)[:2],
            resources=resources,
            instance=instance,
            tags={"dagster/sensor_name": "layercode_automation", "layercode/stage": "automation"},
        )
        assert only_views.success
        assert len(only_views.get_asset_materialization_events()) == 2
        assert (dbt_target_path("run", storage.paths.data_dir) / "run_results.json").stat().st_mtime_ns == stamp
