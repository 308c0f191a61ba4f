"""One warehouse seam: swapping the target is a configuration change.

A second local DuckDB file stands in for another target (MotherDuck cannot be reached from
here): every asset of the demo, dbt, the serving publish and the `backfill` CLI use it, and
nothing is written to the default path. The `md:` target is checked for what it would hand to
DuckDB, the lock and dbt.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from layercode_pipeline.config import Settings
from layercode_pipeline.defs.resources import resources_from_settings
from layercode_pipeline.demo import DEMO_API_KEY, run_demo
from layercode_pipeline.lib.warehouse import Warehouse
from layercode_pipeline.simulator import SimulatorAPI


def test_every_stage_and_the_cli_follow_a_swapped_warehouse_target(tmp_path):
    data = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere" / "analytics_wh.duckdb"
    result = run_demo(data, 6, seed=41, processing_delay_s=0.0, warehouse_target=str(elsewhere))
    sessions = len(result.batch.sessions)

    assert not (data / "warehouse.duckdb").exists(), "a stage wrote the default warehouse"
    assert elsewhere.exists() and (elsewhere.parent / "analytics_wh.duckdb.lock").exists()
    con = duckdb.connect(str(elsewhere), read_only=True)
    try:
        raw = con.execute("select count(distinct session_id) from raw.layercode_events").fetchone()[0]
        marts = con.execute("select count(*) from marts.fct_sessions").fetchone()[0]
        enriched = con.execute("select count(distinct session_id) from enrichment.session_enrichments").fetchone()[0]
    finally:
        con.close()
    assert raw == marts == sessions and enriched > 0
    served = duckdb.connect(str(data / "serving" / "analytics.duckdb"), read_only=True)
    assert served.execute("select count(*) from marts.fct_sessions").fetchone()[0] == sessions
    served.close()

    # the backfill CLI, configured through the environment, writes the same swapped target
    session = result.batch.sessions[0]
    api = SimulatorAPI(api_key=DEMO_API_KEY)
    api.register(result.batch, ready_in_s=0)
    with api.serve() as server:
        env = {
            "LAYERCODE_DATA_DIR": str(data),
            "LAYERCODE_WAREHOUSE": str(elsewhere),
            "LAYERCODE_API_BASE_URL": server.url + "/v1",
            "LAYERCODE_API_KEY": DEMO_API_KEY,
            "PATH": "/usr/bin:/bin",
        }
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "layercode_pipeline.cli",
                "backfill",
                "--agent-id",
                session.agent_id,
                "--session-id",
                session.session_id,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (data / "warehouse.duckdb").exists()
    con = duckdb.connect(str(elsewhere), read_only=True)
    assert (
        con.execute(
            "select count(*) from raw.layercode_session_details where session_id = ? and reason = 'requested'",
            [session.session_id],
        ).fetchone()[0]
        == 1
    )
    con.close()


def test_a_motherduck_target_is_a_configuration_change(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERCODE_WAREHOUSE", "md:layercode_analytics")
    monkeypatch.setenv("MOTHERDUCK_TOKEN", "md-secret-token")
    monkeypatch.setenv("LAYERCODE_DATA_DIR", str(tmp_path))
    warehouse = Warehouse.from_settings(Settings())
    assert warehouse.is_motherduck and warehouse.path is None
    assert warehouse.target == "md:layercode_analytics"
    # this host's writers still queue on a lock file in the data directory
    assert warehouse.lock_path == tmp_path.resolve() / "motherduck-layercode_analytics.lock"
    assert warehouse._config() == {"motherduck_token": "md-secret-token"}
    assert "md-secret-token" not in repr(warehouse)

    storage = resources_from_settings()["storage"]
    # the token reaches the resource as the variable's name, never its value
    assert storage.motherduck_token.env_var_name == "MOTHERDUCK_TOKEN"
    assert json.loads(storage.dbt_vars())["warehouse_path"] == "md:layercode_analytics"
    assert "md-secret-token" not in storage.dbt_vars()
    profile = (Path(__file__).resolve().parents[1] / "dbt_project" / "profiles.yml").read_text()
    assert "path: \"{{ var('warehouse_path'" in profile  # dbt-duckdb takes md: paths as they are


def test_the_earlier_variable_name_still_selects_the_warehouse(tmp_path, monkeypatch):
    monkeypatch.delenv("LAYERCODE_WAREHOUSE", raising=False)
    monkeypatch.setenv("LAYERCODE_WAREHOUSE_PATH", str(tmp_path / "old_name.duckdb"))
    assert Warehouse.from_settings(Settings()).path == tmp_path.resolve() / "old_name.duckdb"


def test_attach_reads_a_local_target_read_only(tmp_path):
    warehouse = Warehouse.at(tmp_path / "w.duckdb", data_dir=tmp_path)
    with warehouse.open_for_writing() as con:
        con.execute("create schema marts; create table marts.t as select 1 as x")
    reader = duckdb.connect()
    warehouse.attach(reader, "wh")
    assert reader.execute("select x from wh.marts.t").fetchall() == [(1,)]
    try:
        reader.execute("insert into wh.marts.t values (2)")
        raise AssertionError("the attached warehouse accepted a write")
    except duckdb.Error as exc:
        assert "read-only" in str(exc).lower() or "read only" in str(exc).lower()
    reader.close()


def _held_elsewhere(lock_path) -> bool:
    """Whether another holder has the flock (a second open file description conflicts with it,
    as another process's would)."""
    import fcntl

    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def test_a_publish_takes_the_writers_lock_ahead_of_the_writers_waiting(tmp_path):
    """A run's build lets the lock go when dbt is done, and the next run's steps may take it
    then; the run's publish (`first`) gets it next, ahead of writers that waited longer."""
    import threading
    import time

    from layercode_pipeline.lib.warehouse import warehouse_lock

    lock = tmp_path / "warehouse.duckdb.lock"
    order: list[str] = []

    def writer(name: str, first: bool = False) -> threading.Thread:
        def take() -> None:
            with warehouse_lock(lock, timeout_s=60, first=first):
                order.append(name)
                time.sleep(0.05)

        thread = threading.Thread(target=take)
        thread.start()
        return thread

    with warehouse_lock(lock):  # the next run's ingest, which took the lock after the build
        waiting = [writer(f"next run's step {i}") for i in range(3)]
        time.sleep(0.5)  # they poll for it
        publish = writer("publish", first=True)
        time.sleep(0.5)
        assert _held_elsewhere(lock) and order == []
    for thread in [*waiting, publish]:
        thread.join(60)
    assert order[0] == "publish", order
    assert sorted(order[1:]) == [f"next run's step {i}" for i in range(3)]
    assert not _held_elsewhere(lock)
    # a holder that fails lets it go
    with pytest.raises(RuntimeError), warehouse_lock(lock, first=True):
        raise RuntimeError("the publish failed")
    assert not _held_elsewhere(lock)
    # and one that never gets it says which lock, after its timeout
    with warehouse_lock(lock), pytest.raises(TimeoutError, match="warehouse.duckdb.lock"):
        _take_elsewhere(lock)


def _take_elsewhere(lock_path) -> None:
    """Another holder's wait for the lock (a thread: its own open file description)."""
    import threading

    from layercode_pipeline.lib.warehouse import warehouse_lock

    errors: list[BaseException] = []

    def take() -> None:
        try:
            with warehouse_lock(lock_path, timeout_s=0.3):
                pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
