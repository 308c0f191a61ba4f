"""The warm dbt (layercode_pipeline/defs/dbt/warm.py): the `layercode-dbt` executable dagster-dbt
runs reaches the dbt its run started early, gets dbt's own JSON log lines and exit status, and
runs the real dbt when there is no warm one. Real processes over a real Unix socket."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layercode_pipeline.defs.dbt.project import DBT_PROJECT_DIR
from layercode_pipeline.defs.dbt.warm import real_dbt, socket_path

CLIENT = Path(sys.executable).parent / "layercode-dbt"

# a process that starts its warm dbt, then runs `layercode-dbt ARGS` as dagster-dbt would (its
# child), and prints the child's exit status and output as JSON
CALLER = """
import json, os, subprocess, sys, time
from layercode_pipeline.defs.dbt.warm import socket_path, start_warm_dbt, stop_warm_dbt
warm = start_warm_dbt({state!r}) if {start_warm} else None
args = json.loads(sys.argv[1])
env = {{**os.environ, "DBT_LOG_FORMAT": "json", "DBT_TARGET_PATH": {target!r}, "DBT_LOG_PATH": {target!r}}}
runs = []
for _ in range(2):  # the second finds the warm dbt used (it serves one invocation): the real dbt
    done = subprocess.run([{client!r}, *args], cwd={project!r}, env=env, capture_output=True, text=True)
    runs.append({{"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}})
print(json.dumps({{"warm_pid": warm.pid if warm else None, "runs": runs,
                  "socket_left": socket_path(os.getpid()).exists()}}))
if warm:
    stop_warm_dbt(warm)
"""


def call(tmp_path: Path, args: list[str], *, start_warm: bool = True, state: Path | None = None) -> dict:
    code = CALLER.format(
        project=str(DBT_PROJECT_DIR),
        target=str(tmp_path / "target"),
        client=str(CLIENT),
        start_warm=start_warm,
        state=str(state) if state else None,
    )
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def dbt_pids(stdout: str) -> set[int]:
    """The processes dbt's JSON log lines came from."""
    pids = set()
    for line in stdout.splitlines():
        if line.startswith("{"):
            pids.add(json.loads(line)["info"]["pid"])
    return pids


pytestmark = pytest.mark.skipif(not CLIENT.exists(), reason="the package's layercode-dbt is not installed")


def test_the_warm_dbt_serves_one_invocation_then_the_real_dbt_runs(tmp_path):
    result = call(tmp_path, ["ls", "--select", "fct_sessions", "--vars", json.dumps({"test_scope": "new"})])
    warm, real = result["runs"]
    assert warm["code"] == real["code"] == 0, (warm["stderr"], real["stderr"])
    listed = [json.loads(line)["data"].get("msg") for line in warm["stdout"].splitlines() if line.startswith("{")]
    assert "layercode_analytics.marts.fct_sessions" in listed
    # dbt's own log lines, from the warm dbt's process, relayed line by line
    assert dbt_pids(warm["stdout"]) == {result["warm_pid"]}
    # the warm dbt served once and is gone: the next invocation ran dbt itself, with the same output
    assert dbt_pids(real["stdout"]) and result["warm_pid"] not in dbt_pids(real["stdout"])
    assert "layercode_analytics.marts.fct_sessions" in real["stdout"]
    assert not result["socket_left"]


def test_each_invocation_names_the_warehouse_its_own_vars_name(tmp_path):
    """The warm dbt parses nothing before it is called: a project parsed ahead, with the default
    vars, named the default warehouse's database in every relation, and a build of another
    warehouse failed (`"warehouse" is not a catalog or schema`)."""
    other = tmp_path / "another_warehouse.duckdb"
    args = ["ls", "--select", "fct_sessions", "--output", "json", "--output-keys", "database"]
    args += ["--vars", json.dumps({"warehouse_path": str(other), "test_scope": "new"})]
    warm, real = call(tmp_path, args)["runs"]
    for run in (warm, real):
        assert run["code"] == 0, run["stderr"]
        listed = [json.loads(line)["data"].get("msg") for line in run["stdout"].splitlines() if line.startswith("{")]
        assert '{"database": "another_warehouse"}' in listed, listed


def messages(run: dict) -> list[str]:
    return [json.loads(line)["data"].get("msg") for line in run["stdout"].splitlines() if line.startswith("{")]


def event_names(run: dict) -> set[str]:
    return {json.loads(line)["info"]["name"] for line in run["stdout"].splitlines() if line.startswith("{")}


def test_a_warm_dbt_parses_ahead_as_the_last_build_did_and_serves_that_parse_to_its_like(tmp_path):
    target = tmp_path / "target"
    built = {"warehouse_path": str(tmp_path / "built.duckdb"), "test_scope": "new"}
    # the last build: the real dbt, whose run_results.json records its vars
    project = ["--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR)]
    subprocess.run(
        [
            real_dbt(),
            "compile",
            "--select",
            "fct_sessions",
            "--exclude",
            "resource_type:test",
            "--vars",
            json.dumps(built),
        ]
        + ["--target-path", str(target)]
        + project,
        cwd=DBT_PROJECT_DIR,
        capture_output=True,
        check=True,
        timeout=300,
    )
    listing = ["ls", "--select", "fct_sessions", "--output", "json", "--output-keys", "database", "--vars"]
    same = call(tmp_path, [*listing, json.dumps(built)], state=target)["runs"][0]
    assert same["code"] == 0, same["stderr"]
    assert "layercode-dbt: the manifest parsed ahead" in same["stdout"]
    assert "PartialParsingEnabled" not in event_names(same)  # dbt did not parse again
    assert '{"database": "built"}' in messages(same)
    # another warehouse: the manifest parsed ahead names the built one, so this one parses
    other = {**built, "warehouse_path": str(tmp_path / "other.duckdb")}
    elsewhere = call(tmp_path, [*listing, json.dumps(other)], state=target)["runs"][0]
    assert elsewhere["code"] == 0, elsewhere["stderr"]
    assert "layercode-dbt: parsing" in elsewhere["stdout"]
    assert '{"database": "other"}' in messages(elsewhere)


def test_a_failing_dbt_command_keeps_its_exit_status_through_the_warm_dbt(tmp_path):
    result = call(tmp_path, ["run", "--select", "no_such_model_anywhere+", "--fail-fast", "--no-such-flag"])
    warm, real = result["runs"]
    assert warm["code"] == real["code"] != 0


def test_without_a_warm_dbt_the_client_is_dbt_itself(tmp_path):
    result = call(tmp_path, ["ls", "--select", "fct_turns"], start_warm=False)
    first, _ = result["runs"]
    assert first["code"] == 0 and "layercode_analytics.marts.fct_turns" in first["stdout"]


def test_an_unused_warm_dbt_exits_when_its_run_ends(tmp_path):
    """A run that never reached its dbt step (it failed, or found nothing new) leaves nothing
    behind: the warm dbt notices its run process is gone."""
    code = "from layercode_pipeline.defs.dbt.warm import start_warm_dbt\nprint(start_warm_dbt().pid, flush=True)\n"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid = int(parent.communicate(timeout=60)[0].strip())
    deadline = time.monotonic() + 120
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not running(pid), "the warm dbt outlived the process that started it"
    assert not socket_path(parent.pid).exists()


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's parent may be slow to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
