"""Automation with a real `dagster-daemon`: calls delivered to a real listener reach the serving
copy with no run launched by hand, and a run that fails (a notebook holds the warehouse open)
is retried by the instance and its data is not left behind. The instance is the one the demo
writes (`layercode-pipeline demo`'s dagster.yaml), as a new user runs it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import duckdb

from layercode_pipeline.dagster_instance import daemon_heartbeat_age, initialise_instance
from layercode_pipeline.simulator import deliver, generate_batch, listener_secrets_json

from .conftest import DaemonProcess, ListenerProcess, failure_messages

ROOT = Path(__file__).resolve().parents[1]


def serving_sessions(data: Path) -> set[str]:
    path = data / "serving" / "analytics.duckdb"
    if not path.exists():
        return set()
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {r[0] for r in con.execute("select session_id from marts.fct_sessions").fetchall()}
    finally:
        con.close()


def test_sealed_segments_reach_the_serving_copy_and_a_failed_run_is_retried(tmp_path):
    home, data = initialise_instance(tmp_path / "dagster_home"), tmp_path / "data"
    data.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERCODE_", "OPENAI_", "DAGSTER_"))}
    env |= {
        "DAGSTER_HOME": str(home),
        "LAYERCODE_DATA_DIR": str(data),
        # a writer that finds the warehouse held gives up after 1 s (the default waits 60 s)
        "LAYERCODE_WAREHOUSE_OPEN_TIMEOUT_S": "1",
    }
    # A notebook holds the warehouse open for writing: the first ingest run fails on it.
    notebook = duckdb.connect(str(data / "warehouse.duckdb"))
    daemon = DaemonProcess(ROOT / "workspace.yaml", env, tmp_path / "daemon.log", cwd=ROOT)
    listener = None
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:

            def wait_for(what: str, done, timeout_s: float = 240):
                deadline = time.monotonic() + timeout_s
                while not (result := done()):
                    daemon.assert_alive()
                    assert time.monotonic() < deadline, (
                        f"timed out waiting for {what}; runs: "
                        f"{[(r.job_name, r.status.value, r.tags.get('dagster/sensor_name')) for r in instance.get_runs()]}"
                        + daemon.tail()
                    )
                    time.sleep(1)
                return result

            def failed_ingest():
                return [
                    r
                    for r in instance.get_runs(
                        dg.RunsFilter(job_name="ingest_job", statuses=[dg.DagsterRunStatus.FAILURE])
                    )
                ]

            # the landing sensor is on by default: a fresh instance gets a first run, which fails
            failed = wait_for("a failed ingest run", failed_ingest)[-1]
            # the demo can tell a daemon runs on this instance (it warns before landing data)
            assert daemon_heartbeat_age(instance) is not None
            with dg.DagsterInstance.from_config(str(initialise_instance(tmp_path / "other_home"))) as other:
                assert daemon_heartbeat_age(other) is None
            assert any("warehouse.duckdb" in m for m in failure_messages(instance, failed.run_id))
            notebook.close()

            # the instance retries it (run retries): the retry succeeds once the notebook let go
            def retry_succeeded():
                return [
                    r
                    for r in instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": failed.run_id}))
                    if r.status == dg.DagsterRunStatus.SUCCESS
                ]

            wait_for("the retried run to succeed", retry_succeeded)

            # now calls arrive; their segment seals when the listener goes quiet
            batch = generate_batch(6, seed=404)
            listener = ListenerProcess(
                data,
                env={"LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(batch), "LAYERCODE_SEGMENT_IDLE_SEAL_S": "0.5"},
            )
            assert deliver(batch, listener.url + "/agents/{agent_id}/webhook", faults={}).failed == 0
            expected = {s.session_id for s in batch.sessions}
            wait_for("the delivered sessions in the serving copy", lambda: expected <= serving_sessions(data))

            # nobody launched a run by hand: the sensor did, or the instance retried one of its
            # runs, or (when the test runs at 03:30 UTC) the daily full-test schedule
            for run in instance.get_runs():
                assert (
                    run.tags.get("dagster/sensor_name") in ("landing_sensor", "layercode_automation")
                    or run.tags.get("dagster/parent_run_id")
                    or run.tags.get("dagster/schedule_name") == "dbt_full_tests_job_schedule"
                ), run.tags
            reasons = {r.tags.get("layercode/reason") for r in instance.get_runs(dg.RunsFilter(job_name="ingest_job"))}
            assert "sealed segments" in reasons
            # dbt runs once per successful ingest run, and no step reports checks it was not asked for
            for run in instance.get_runs(dg.RunsFilter(job_name="ingest_job", statuses=[dg.DagsterRunStatus.SUCCESS])):
                logs = instance.all_logs(run.run_id)
                assert (
                    sum(
                        1
                        for e in logs
                        if e.dagster_event
                        and e.dagster_event.event_type_value == "STEP_START"
                        and e.step_key == "layercode_dbt_models"
                    )
                    == 1
                )
                assert not [e.user_message for e in logs if "not selected" in (e.user_message or "")]
    finally:
        if listener is not None:
            listener.stop()
        daemon.stop()
        notebook.close()
