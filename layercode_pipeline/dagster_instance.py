"""The project's Dagster instance: the demo's `dagster.yaml`, one initialisation per home, and
the code server deploy/ runs (`CODE_SERVER_ARGS`; `start_code_server` for benches and tests).

Dagster creates an instance's SQLite storages (and runs their schema migrations) on first use.
Two processes doing that at once on a new DAGSTER_HOME race on the migration and can leave the
instance with two alembic heads, unusable. Every place the project opens an instance goes
through `initialise_instance`, which does the first use under an exclusive file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAGSTER_YAML = """\
# written by `layercode-pipeline demo` / `init-instance`; see deploy/dagster.yaml
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    default_limit: 1
    # one run beyond the pool's slot may start (its process and code location) while
    # another holds the warehouse, and run its steps the moment it is free
    op_granularity_run_buffer: 1
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    # the landing sensor's runs start within a second of being queued
    dequeue_interval_seconds: 1
run_retries:
  enabled: true
  max_retries: 2
# sensors evaluated on their own threads: result_webhooks_sensor's tick (deliveries) never
# delays the landing sensor's
sensors:
  use_threads: true
  num_workers: 4
telemetry:
  enabled: false
"""


def initialise_instance(home: Path) -> Path:
    """Create `home` with the demo's `dagster.yaml` if it has none, and open the instance once
    under an exclusive lock, so its storages exist and are migrated before anyone else opens
    it. Returns `home`, resolved. Idempotent and safe to call from several processes."""
    import dagster as dg

    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".layercode-instance.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        config = home / "dagster.yaml"
        if not config.exists():  # the warehouse pool limit, run queue and retries, telemetry off
            tmp = config.with_suffix(".yaml.tmp")
            tmp.write_text(DAGSTER_YAML)
            tmp.replace(config)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            # first use of each storage creates its tables and stamps its schema version
            instance.get_runs(limit=1)
            instance.event_log_storage.get_asset_records()
            if instance.schedule_storage is not None:
                instance.schedule_storage.all_instigator_state()
    return home


# a dagster-daemon beats about every 20 s; a minute without one means none runs on the instance
DAEMON_STALE_S = 60.0


def daemon_heartbeat_age(instance) -> float | None:  # noqa: ANN001 - a DagsterInstance
    """Seconds since a dagster-daemon (or `dagster dev`, which runs one) on this instance last
    beat, or None when none has within `DAEMON_STALE_S`: its sensors would react to data the
    demo lands, and its runs would queue with the demo's for the warehouse."""
    import time

    beats = instance.get_daemon_heartbeats()
    if not beats:
        return None
    age = time.time() - max(beat.timestamp for beat in beats.values())
    return age if age < DAEMON_STALE_S else None


# How the code location is served: deploy/ runs exactly this (the code-server service of
# docker-compose.yml and systemd/dagster-code-server.service; a test checks), with a host and
# a port, and deploy/workspace.yaml points the webserver and the daemon at it.
CODE_SERVER_ARGS = (
    "code-server",
    "start",
    "-m",
    "layercode_pipeline.definitions",
    "-a",
    "defs",
    "--location-name",
    "layercode_pipeline",
)


def start_code_server(env: dict[str, str], log: Path, *, cwd: Path | None = None) -> tuple[subprocess.Popen, int]:
    """The code server as deploy/ runs it, on a free loopback port (benches and tests), its
    output to `log`; waited for until it serves the definitions. Returns it and its port; the
    workspace of deploy/ reaches it with `code_server_env(port)`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dagster = str(Path(sys.executable).parent / "dagster")
    with log.open("w") as out:  # the server writes through its own copy
        proc = subprocess.Popen(
            [dagster, *CODE_SERVER_ARGS, "-h", "127.0.0.1", "-p", str(port)],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the run processes it starts are stopped with it
        )
    try:
        _wait_for_code_server(proc, port, log)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        raise
    return proc, port


def code_server_env(port: int) -> dict[str, str]:
    """The variables deploy/workspace.yaml reads to reach a code server on this host."""
    return {"DAGSTER_CODE_SERVER_HOST": "127.0.0.1", "DAGSTER_CODE_SERVER_PORT": str(port)}


def _wait_for_code_server(proc: subprocess.Popen, port: int, log: Path, timeout_s: float = 300.0) -> None:
    from dagster._core.errors import DagsterUserCodeUnreachableError
    from dagster._grpc.client import DagsterGrpcClient

    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer = client.list_repositories()
            if '"__class__": "ListRepositoriesResponse"' in answer:
                return  # the definitions loaded
            if '"__class__": "SerializableErrorInfo"' in answer:  # they failed to load: say why
                raise RuntimeError(f"the code server could not load the definitions: {answer[:2000]}")
        except DagsterUserCodeUnreachableError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the code server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the code server did not serve in {timeout_s:.0f} s: {log.read_text()[-2000:]}")
        time.sleep(0.2)
