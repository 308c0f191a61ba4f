"""The project's Dagster instance is initialised once per home, under a lock: processes that
start together on a new DAGSTER_HOME do not race on its schema migration."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg


def test_concurrent_first_uses_of_a_new_home_leave_one_usable_instance(tmp_path):
    home = tmp_path / "dagster_home"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "layercode_pipeline.cli", "init-instance", "--dagster-home", str(home)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(4)
    ]
    outputs = [(p.wait(120), p.stdout.read().decode()) for p in procs]
    assert all(code == 0 for code, _ in outputs), outputs
    assert all("Dagster instance ready" in out for _, out in outputs)
    assert "QueuedRunCoordinator" in (home / "dagster.yaml").read_text()

    @dg.asset
    def one() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert dg.materialize([one], instance=instance).success
        assert len(instance.get_runs()) == 1
        instance.upgrade()  # a migrated schema has one head: nothing left to do, no error
