"""The warm dbt (layercode_pipeline/defs/dbt/warm.py): one process per pipeline imports dbt and
parses the project once, and forks a child for each invocation. The `layercode-dbt` executable
dagster-dbt runs reaches it, gets dbt's own JSON log lines and exit status, and runs the real
dbt when there is no warm one. Real processes over a real Unix socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from layercode_pipeline.defs.dbt.project import DBT_PROJECT_DIR
from layercode_pipeline.defs.dbt.warm import NOT_PROJECT_FILES, ensure_warm_dbt, real_dbt, socket_path

CLIENT = Path(sys.executable).parent / "layercode-dbt"

pytestmark = pytest.mark.skipif(not CLIENT.exists(), reason="the package's layercode-dbt is not installed")


def invoke(state: Path, args: list[str], project: Path = DBT_PROJECT_DIR) -> dict:
    """`layercode-dbt ARGS` as dagster-dbt runs it (its target directory `state`): its exit
    status, output, and its own process id."""
    env = {**os.environ, "DBT_LOG_FORMAT": "json", "DBT_TARGET_PATH": str(state), "DBT_LOG_PATH": str(state)}
    env |= {"DBT_PROJECT_DIR": str(project), "DBT_PROFILES_DIR": str(project)}
    proc = subprocess.Popen(
        [str(CLIENT), *args], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=300)
    return {"code": proc.returncode, "stdout": out, "stderr": err, "pid": proc.pid}


def dbt_pids(run: dict) -> set[int]:
    """The processes dbt's JSON log lines came from."""
    return {json.loads(line)["info"]["pid"] for line in run["stdout"].splitlines() if line.startswith("{")}


def messages(run: dict) -> list[str]:
    return [json.loads(line)["data"].get("msg") for line in run["stdout"].splitlines() if line.startswith("{")]


def event_names(run: dict) -> set[str]:
    return {json.loads(line)["info"]["name"] for line in run["stdout"].splitlines() if line.startswith("{")}


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's parent may be slow to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def wait_gone(pid: int, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(pid)


@pytest.fixture
def warm(tmp_path):
    """A pipeline's dbt directory with its warm dbt started (no last build to parse ahead)."""
    state = tmp_path / "data" / "dbt" / "run"
    pid = ensure_warm_dbt(str(state), idle_s=120)
    assert pid is not None
    yield state, pid
    if running(pid):
        os.kill(pid, signal.SIGTERM)


def test_one_warm_dbt_serves_every_invocation_of_its_pipeline_each_in_a_process_of_its_own(warm):
    state, server = warm
    assert ensure_warm_dbt(str(state), idle_s=120) is None  # running: not started twice
    listing = ["ls", "--select", "fct_sessions", "--vars", json.dumps({"test_scope": "new"})]
    # another kind of invocation of the same pipeline (its own target directory) too
    first, second = invoke(state, listing), invoke(state.parent / "scheduled_tests", listing)
    for run in (first, second):
        assert run["code"] == 0, run["stdout"] + run["stderr"]
        assert "layercode_analytics.marts.fct_sessions" in messages(run)
        # dbt's own log lines, relayed line by line, from a process that is neither the client
        # nor the warm dbt itself (a child forked for the invocation)
        (pid,) = dbt_pids(run)
        assert pid not in (run["pid"], server)
    assert dbt_pids(first) != dbt_pids(second)
    assert running(server)


def test_each_invocation_names_the_warehouse_its_own_vars_name(warm):
    """A project parsed with other vars names another warehouse's database in every relation:
    such an invocation parses for itself."""
    state, _ = warm
    for name in ("one_warehouse", "another_warehouse"):
        args = ["ls", "--select", "fct_sessions", "--output", "json", "--output-keys", "database"]
        args += ["--vars", json.dumps({"warehouse_path": str(state / f"{name}.duckdb"), "test_scope": "new"})]
        run = invoke(state, args)
        assert run["code"] == 0, run["stdout"]
        assert f'{{"database": "{name}"}}' in messages(run)


def last_build(project: Path, state: Path, dbt_vars: dict) -> None:
    """A build's run_results.json in `state` (what the warm dbt parses ahead as), by the real dbt."""
    subprocess.run(
        [real_dbt(), "compile", "--select", "fct_sessions", "--exclude", "resource_type:test"]
        + ["--vars", json.dumps(dbt_vars), "--target-path", str(state)]
        + ["--project-dir", str(project), "--profiles-dir", str(project)],
        cwd=project,
        capture_output=True,
        check=True,
        timeout=300,
    )


def wait_for_log(state: Path, line: str, limit_s: float = 120) -> None:
    log = socket_path(state.parent).with_suffix(".log")
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count(line):
            return
        time.sleep(0.2)
    raise AssertionError(f"the warm dbt never logged {line!r}: {log.read_text() if log.exists() else ''}")


def test_the_manifest_parsed_ahead_serves_its_like_until_the_project_changes(tmp_path):
    """The warm dbt parses as the last build did and hands that manifest to invocations with the
    same vars; an edited project file makes the next invocation parse for itself, after which
    the warm dbt parses ahead again."""
    project = tmp_path / "project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns(*NOT_PROJECT_FILES))
    state = tmp_path / "data" / "dbt" / "run"
    built = {"warehouse_path": str(tmp_path / "built.duckdb"), "test_scope": "new"}
    last_build(project, state, built)
    server = ensure_warm_dbt(str(state), idle_s=120)
    assert server is not None
    try:
        listing = ["ls", "--select", "fct_sessions", "--output", "json", "--output-keys", "database", "--vars"]
        same = invoke(state, [*listing, json.dumps(built)], project)
        assert same["code"] == 0, same["stdout"]
        assert "layercode-dbt: the manifest parsed ahead" in same["stdout"]
        assert "PartialParsingEnabled" not in event_names(same)  # dbt did not parse again
        assert '{"database": "built"}' in messages(same)
        # another warehouse: the manifest parsed ahead names the built one, so this one parses
        other = {**built, "warehouse_path": str(tmp_path / "other.duckdb")}
        elsewhere = invoke(state, [*listing, json.dumps(other)], project)
        assert "layercode-dbt: parsing" in elsewhere["stdout"]
        assert '{"database": "other"}' in messages(elsewhere)
        # a model added since: the manifest parsed ahead is out of date, and the invocation
        # sees the project as it is now (whether it parsed itself or the warm dbt parsed anew)
        (project / "models" / "marts" / "added_later.sql").write_text("select 1 as one\n")
        added = ["ls", "--select", "added_later", "--vars", json.dumps(built)]
        edited = invoke(state, added, project)
        assert edited["code"] == 0, edited["stdout"]
        assert "layercode_analytics.marts.added_later" in messages(edited)
        # the warm dbt parsed the changed project ahead, for the next invocations
        wait_for_log(state, "parsed ahead again")
        again = invoke(state, added, project)
        assert "layercode-dbt: the manifest parsed ahead" in again["stdout"]
        assert "layercode_analytics.marts.added_later" in messages(again)
    finally:
        os.kill(server, signal.SIGTERM)


def test_the_pipelines_builds_write_their_results_and_no_manifest(warm):
    """A build in the pipeline runs' target directory needs run_results.json (the dbt step reads
    it), never manifest.json (the definitions read the project's own): the warm dbt writes the
    one without the other. Any other invocation writes dbt's artifacts as the CLI does."""
    state, _ = warm
    other = state.parent / "full"
    nothing = ["build", "--select", "no_such_model_anywhere", "--vars", json.dumps({"test_scope": "new"})]
    for target in (state, other):
        run = invoke(target, nothing)
        assert run["code"] == 0, run["stdout"]
        results = json.loads((target / "run_results.json").read_text())
        assert results["results"] == [] and results["args"]["which"] == "build"
    assert not (state / "manifest.json").exists()
    assert (other / "manifest.json").exists()


def test_a_failing_dbt_command_keeps_its_exit_status_through_the_warm_dbt(warm):
    state, _ = warm
    served = invoke(state, ["run", "--select", "no_such_model_anywhere+", "--fail-fast", "--no-such-flag"])
    cold = invoke(state.parent.parent / "elsewhere" / "dbt" / "run", ["run", "--no-such-flag"])
    assert served["code"] == cold["code"] == 2


def test_without_a_warm_dbt_the_client_is_dbt_itself(tmp_path):
    run = invoke(tmp_path / "data" / "dbt" / "run", ["ls", "--select", "fct_turns"])
    assert run["code"] == 0 and "layercode_analytics.marts.fct_turns" in messages(run)
    assert dbt_pids(run) == {run["pid"]}  # the client became dbt (exec)


def test_a_warm_dbt_that_never_takes_the_call_leaves_it_to_the_real_dbt(tmp_path):
    """A warm dbt that exits with a call in its backlog (idle, or killed) closes it unanswered:
    the client runs dbt itself instead of failing the build."""
    state = tmp_path / "data" / "dbt" / "run"
    state.mkdir(parents=True)
    path = socket_path(state.parent)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.recv(1 << 16)
        conn.close()

    taker = threading.Thread(target=hang_up)
    taker.start()
    try:
        run = invoke(state, ["ls", "--select", "fct_turns"])
    finally:
        taker.join(10)
        listener.close()
        path.unlink(missing_ok=True)
    assert run["code"] == 0 and "layercode_analytics.marts.fct_turns" in messages(run)
    assert dbt_pids(run) == {run["pid"]}


def test_a_warm_dbt_lives_past_the_run_that_started_it_and_exits_when_idle_or_its_directory_goes(tmp_path):
    """It is not the run's child to stop: it serves the next runs, and exits by itself after its
    idle time without an invocation, or as soon as its pipeline's directory is removed."""
    states = [tmp_path / name / "dbt" / "run" for name in ("idle", "removed")]
    code = (
        "import sys\nfrom layercode_pipeline.defs.dbt.warm import ensure_warm_dbt\n"
        "print(ensure_warm_dbt(sys.argv[1], idle_s=float(sys.argv[2])), flush=True)\n"
    )
    pids = []
    for state, idle_s in zip(states, ("5", "600"), strict=True):
        run = subprocess.run(
            [sys.executable, "-c", code, str(state), idle_s], capture_output=True, text=True, check=True
        )
        pids.append(int(run.stdout.strip()))
    for pid in pids:
        assert running(pid) and parent_of(pid) != os.getpid()  # the run's process has ended
    shutil.rmtree(states[1].parent.parent)
    wait_gone(pids[0])
    wait_gone(pids[1])
    assert not socket_path(states[0].parent).exists()
    # the next run starts a new one
    again = ensure_warm_dbt(str(states[0]), idle_s=5)
    assert again is not None and again != pids[0]
    wait_gone(again)
