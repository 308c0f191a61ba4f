"""The production Dagster instance of deploy/: Postgres storage, `dagster-daemon` as its own
process, and an automation-triggered run (the landing sensor) that succeeds.

Needs Debian's `postgresql` package (`.ci/run` installs it). Without it the test is skipped
with what to install, unless LAYERCODE_REQUIRE_POSTGRES=1 (CI), where it fails instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pytest

from layercode_pipeline.dagster_instance import code_server_env, start_code_server
from layercode_pipeline.simulator import deliver, generate_batch, listener_secrets_json
from layercode_pipeline.simulator.server import free_port

from .conftest import DaemonProcess, ListenerProcess, failure_messages

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        message = (
            "PostgreSQL server binaries not found: install Debian's package with "
            "`apt-get update && apt-get install -y postgresql` (.ci/run does)"
        )
        if os.environ.get("LAYERCODE_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Path(found[-1]).parent


def as_postgres(cmd: list[str]) -> list[str]:
    """Postgres refuses to run as root: drop to the `postgres` user the package created."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture
def postgres():
    pg = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="layercode-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    subprocess.run(
        as_postgres([str(pg / "initdb"), "-D", str(data), "-U", "dagster", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        as_postgres(
            [
                str(pg / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "log"),
                "-w",
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            as_postgres([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster"]),
            check=True,
            capture_output=True,
        )
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_DB": "dagster",
            "DAGSTER_PG_USERNAME": "dagster",
            "DAGSTER_PG_PASSWORD": "unused-trust-auth",
        }
    finally:
        subprocess.run(as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_the_daemon_on_postgres_runs_an_automation_triggered_run(tmp_path, postgres, monkeypatch):
    import dagster as dg

    home, data = tmp_path / "dagster_home", tmp_path / "data"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")  # the production instance, as written
    env = {**os.environ, **postgres, "DAGSTER_HOME": str(home), "LAYERCODE_DATA_DIR": str(data)}
    for name, value in postgres.items():
        monkeypatch.setenv(name, value)

    batch = generate_batch(4, seed=88)  # calls land, and the segment is sealed on the listener's stop
    listener = ListenerProcess(data, env={"LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(batch)})
    assert deliver(batch, listener.url + "/agents/{agent_id}/webhook", faults={}).failed == 0
    listener.stop()

    # deploy/'s topology: the code server, and the daemon over deploy/workspace.yaml reaching it
    code_server, port = start_code_server(env, tmp_path / "code-server.log", cwd=ROOT)
    env = {**env, **code_server_env(port)}
    workspace = str(ROOT / "deploy" / "workspace.yaml")
    started = subprocess.run(
        [str(BIN / "dagster"), "sensor", "start", "landing_sensor", "-w", workspace],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    daemon = DaemonProcess(Path(workspace), env, tmp_path / "daemon.log")
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            deadline = time.monotonic() + 240
            while True:
                runs = instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": "landing_sensor"}))
                done = [r for r in runs if r.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)]
                if done:
                    break
                daemon.assert_alive()
                assert time.monotonic() < deadline, (
                    f"no sensor run finished; runs: {[r.status for r in runs]}; " + daemon.tail()
                )
                time.sleep(2)
            run = done[0]
            assert run.status == dg.DagsterRunStatus.SUCCESS, failure_messages(instance, run.run_id)[:3]
    finally:
        daemon.stop()
        os.killpg(code_server.pid, signal.SIGTERM)
        code_server.wait(60)
    served = duckdb.connect(str(data / "serving" / "analytics.duckdb"), read_only=True)
    try:
        assert served.execute("select count(*) from marts.fct_sessions").fetchone()[0] == len(batch.sessions)
    finally:
        served.close()
