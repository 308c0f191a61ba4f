"""Every fenced example in the README runs, as a reader would run it, in the environment the
README's setup creates (the project's `.venv`, commands from the repository's directory).

Each example is found by its first line and run by its kind: shell commands as written, a
server until it answers (then Ctrl-C), settings by loading them, Python by executing it. What
a reader fills in (a secret shown as `whsec_...`, a session id, a file of their own) is
replaced by a declared value, and nothing else. An example this module does not know fails
`test_every_readme_example_is_known`: a new one must say how it is checked.

The commands run in a scratch directory laid out as the repository (the venv, pyproject.toml,
workspace.yaml and the package linked in), over the data of a small `demo` run there.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx
import pytest
import yaml

from layercode_pipeline.simulator.server import BackgroundServer, free_port

from .conftest import KEY_ID, REGION, SECRET_KEY, make_bucket

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a reader's own webhook secret


@dataclass(frozen=True)
class Example:
    line: int  # of the opening fence
    lang: str
    text: str

    @property
    def first(self) -> str:
        return next(line.strip() for line in self.text.splitlines() if line.strip())


def readme_examples() -> list[Example]:
    out, lines = [], (ROOT / "README.md").read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, body, j = len(opening["indent"]), [], i + 1
        while not FENCE.match(lines[j]) or FENCE.match(lines[j])["lang"]:
            body.append(lines[j][indent:])
            j += 1
        out.append(Example(i + 1, opening["lang"], "\n".join(body) + "\n"))
        i = j + 1
    return out


# How each example is checked, by its first line. "not run": with the reason.
KINDS: dict[str, str] = {
    "make demo": "not run: `make test` is this suite, and tests/test_demo_cli.py runs the demo's command",
    "DAGSTER_HOME=$PWD/data/dagster_home": "live",
    "flowchart LR": "not run: a Mermaid diagram",
    "export LAYERCODE_WEBHOOK_SECRETS=": "listener",
    "export LAYERCODE_LANDING_URL=s3://": "listener on object storage",
    "export LAYERCODE_RECORDINGS_URL=": "settings",
    "export DAGSTER_HOME=$PWD/.dagster_home": "dagster",
    "export LAYERCODE_RESULT_WEBHOOKS=": "settings",
    "from standardwebhooks": "receiver",
    "import { Webhook }": "not run: JavaScript (no Node.js here); the Python receiver checks the same signatures",
    "layercode-pipeline deliveries list": "shell",
    "import duckdb": "python",
    "export LAYERCODE_WAREHOUSE=md:": "settings",
    ".venv/bin/layercode-pipeline dashboard": "dashboard",
    "LAYERCODE_REVIEWERS=": "dashboard",
    "layercode-pipeline evaluate": "evaluate",
    "calls:": "labelled calls",
    "custom_fields:": "enrichment config",
    "layercode-pipeline forget": "shell",
    "layercode-pipeline retention": "shell",
    ".venv/bin/python bench/": "benches",
}


def kind_of(example: Example) -> str | None:
    return next((kind for first, kind in KINDS.items() if example.first.startswith(first)), None)


def examples_of(kind: str) -> list[Example]:
    found = [e for e in readme_examples() if kind_of(e) == kind]
    assert found, f"no README example of kind {kind!r}"
    return found


def test_every_readme_example_is_known():
    unknown = [f"README.md:{e.line}: {e.first}" for e in readme_examples() if kind_of(e) is None]
    assert unknown == [], "say in KINDS how each new example is checked"
    firsts = [e.first for e in readme_examples()]
    assert [f for f in KINDS if not any(x.startswith(f) for x in firsts)] == []  # none stale


@dataclass
class Workspace:
    root: Path
    env: dict[str, str]

    def run(self, script: str, timeout_s: float = 300, **env: str) -> subprocess.CompletedProcess:
        """A shell script as a reader types it, from the repository's directory."""
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        return done

    def start(self, script: str, **env: str) -> subprocess.Popen:
        """A command that serves until Ctrl-C, in its own process group."""
        log = (self.root / f"serve-{time.monotonic_ns()}.log").open("w")
        return subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.root,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# how a server stopped by Ctrl-C may end: cleanly, or (uvicorn re-raises the signal after its
# graceful shutdown, and bash then ends the same way) by SIGINT itself
STOPPED = (0, -signal.SIGINT, 128 + signal.SIGINT)


def interrupt(proc: subprocess.Popen, timeout_s: float = 60) -> int:
    """Ctrl-C, as in a terminal: SIGINT to the whole process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen | None = None, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc is None or proc.poll() is None, f"{what}: the command ended ({proc.returncode})"
        assert time.monotonic() < deadline, f"{what}: not ready after {timeout_s:.0f} s"
        time.sleep(0.5)


def answers(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def serving_calls(root: Path) -> int:
    path = root / "data" / "serving" / "analytics.duckdb"
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return -1  # being replaced: read it again
    try:
        return con.execute("select count(*) from marts.fct_conversations").fetchone()[0]
    finally:
        con.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    """The repository's layout in a scratch directory, with the data of a small demo run."""
    root = tmp_path_factory.mktemp("readme")
    for name in (".venv", "layercode_pipeline", "bench", "deploy", "dbt_project"):
        (root / name).symlink_to(ROOT / name)
    for name in ("pyproject.toml", "workspace.yaml"):
        shutil.copy(ROOT / name, root / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERCODE_", "OPENAI_", "DAGSTER_", "AWS_"))}
    env |= {"PATH": f"{VENV_BIN}:{env['PATH']}", "VIRTUAL_ENV": str(ROOT / ".venv"), "COLUMNS": "160"}
    space = Workspace(root, env)
    space.run(".venv/bin/layercode-pipeline demo --calls 6", timeout_s=600)
    return space


def test_the_live_recipe_brings_the_simulated_calls_into_the_serving_copy(workspace):
    """Dagster's UI and daemon, a listener, and 50 simulated calls: each in its own terminal,
    as the README says; the calls reach the serving copy without a human."""
    (example,) = examples_of("live")
    commands = [c for c in re.sub(r"\\\n\s*", "", example.text).splitlines() if c.strip()]
    dagster, listener, calls = commands
    before = serving_calls(workspace.root)
    started = [workspace.start(dagster), workspace.start(listener)]
    try:
        wait_for("dg dev", answers("http://127.0.0.1:3000/server_info"), started[0], timeout_s=180)
        wait_for("the listener", answers("http://127.0.0.1:8787/healthz"), started[1])
        simulate = workspace.start(calls)
        started.append(simulate)
        wait_for(
            "50 new calls in the serving copy", lambda: serving_calls(workspace.root) >= before + 50, simulate, 300
        )
        assert interrupt(simulate) in STOPPED  # it served the REST API until Ctrl-C
    finally:
        for proc in reversed(started):
            interrupt(proc)


def test_the_dagster_recipe_launches_every_asset_and_serves_the_ui(workspace):
    (example,) = examples_of("dagster")
    *setup, dev = [line for line in example.text.splitlines() if line.strip()]
    assert dev.startswith(".venv/bin/dg dev")
    env = {"LAYERCODE_DATA_DIR": str(workspace.root / "data")}
    launched = workspace.run("\n".join(setup), timeout_s=600, **env)
    assert "RUN_SUCCESS" in launched.stdout + launched.stderr
    assert (workspace.root / ".dagster_home" / "dagster.yaml").exists()
    ui = workspace.start("\n".join([*setup[:1], dev]), **env)
    try:
        wait_for("dg dev", answers("http://127.0.0.1:3000/server_info"), ui, timeout_s=180)
    finally:
        interrupt(ui)


def test_the_listener_examples_serve(workspace, s3_endpoint):
    (local,) = examples_of("listener")
    proc = workspace.start(local.text.replace("whsec_...", SECRET))
    try:
        wait_for("the listener", answers("http://127.0.0.1:8787/healthz"), proc)
    finally:
        assert interrupt(proc) in STOPPED
    # landing on object storage: moto's S3 stands in for the bucket, at the endpoint the
    # example shows commented out for MinIO and the like
    (s3,) = examples_of("listener on object storage")
    make_bucket(s3_endpoint, "my-layercode-landing")
    port = free_port()
    script = (
        s3.text.replace("AWS_ACCESS_KEY_ID=...", f"AWS_ACCESS_KEY_ID={KEY_ID}")
        .replace("AWS_SECRET_ACCESS_KEY=...", f"AWS_SECRET_ACCESS_KEY={SECRET_KEY}")
        .replace("AWS_REGION=eu-west-1", f"AWS_REGION={REGION}")
        .replace("# export AWS_ENDPOINT_URL=http://minio:9000", f"export AWS_ENDPOINT_URL={s3_endpoint}")
        .replace("--port 8080", f"--port {port}")
    )
    proc = workspace.start(script, LAYERCODE_WEBHOOK_SECRETS=json.dumps({"ag_support": SECRET}))
    try:
        wait_for("the listener on S3", answers(f"http://127.0.0.1:{port}/healthz"), proc)
    finally:
        assert interrupt(proc) in STOPPED


def test_the_settings_examples_load(workspace):
    load = '.venv/bin/python -c "from layercode_pipeline.config import Settings; Settings.load()"\n'
    for example in examples_of("settings"):
        workspace.run(example.text + load)


def test_the_python_receiver_verifies_a_signed_call_analyzed(workspace):
    from layercode_pipeline.lib.result_webhooks.signing import webhook_headers

    (example,) = examples_of("receiver")
    saved: list[tuple] = []
    namespace: dict = {"save": lambda *args: saved.append(args)}
    exec(compile(example.text.replace("whsec_...", SECRET), "README.md", "exec"), namespace)
    body = json.dumps({"type": "call.analyzed", "data": {"session_id": "s1", "analysis": {"outcome": "resolved"}}})
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    namespace["handle"](body.encode(), webhook_headers([key], "msg_1", int(time.time()), body.encode()))
    assert saved == [("s1", {"outcome": "resolved"})]


def test_the_shell_examples_run(workspace):
    serving = duckdb.connect(str(workspace.root / "data" / "serving" / "analytics.duckdb"), read_only=True)
    session_id, conversation_id = serving.execute(
        "select session_id, conversation_id from marts.fct_sessions order by session_id limit 1"
    ).fetchone()
    # a caller of another session: `forget` exits 1 for a number that matches no session
    (phone,) = serving.execute(
        "select from_phone_number from marts.fct_sessions where from_phone_number is not null "
        "and conversation_id <> ? order by session_id limit 1",
        [conversation_id],
    ).fetchone()
    serving.close()
    (workspace.root / "requests.txt").write_text("phone:+15550100999\n")
    # the reader's endpoint, configured as the README shows: here the demo's local receiver
    # (stopped, so a due message is refused and stays pending)
    endpoints = json.dumps([{"url": "http://127.0.0.1:8790/layercode/results", "secret": SECRET}])
    for example in examples_of("shell"):
        script = example.text.replace("sess_...", session_id).replace("conv_...", conversation_id)
        script = script.replace("forget --phone-number +15550100999", f"forget --phone-number {phone}")
        workspace.run(script, LAYERCODE_DATA_DIR=str(workspace.root / "data"), LAYERCODE_RESULT_WEBHOOKS=endpoints)


def test_the_python_bi_example_runs_in_the_venv(workspace):
    (example,) = examples_of("python")
    out = workspace.run(f".venv/bin/python - <<'EOF'\n{example.text}EOF\n").stdout
    assert "Acme" in out and "session_id" in out


def test_the_dashboard_examples_serve(workspace):
    for example in examples_of("dashboard"):
        proc = workspace.start(example.text)
        try:
            wait_for("the dashboard", answers("http://127.0.0.1:8050/"), proc)
        finally:
            interrupt(proc)


@pytest.fixture
def openai_stub():
    from layercode_pipeline.simulator.llm import OpenAIStub

    stub = OpenAIStub(api_key="sk-readme")
    server = BackgroundServer(stub.app).start()
    try:
        yield server.url + "/v1"
    finally:
        server.stop()


def test_the_evaluate_examples_run_with_their_files(workspace, openai_stub):
    """The offline provider, then two models and two prompt versions against a local
    OpenAI-compatible server, with a config made of the shipped one and the README's custom
    field, and the README's labelled call."""
    from layercode_pipeline.lib.enrichment.analysis import DEFAULT_CONFIG, EnrichmentSettings

    (custom,) = examples_of("enrichment config")
    config = yaml.safe_load(Path(DEFAULT_CONFIG).read_text()) | yaml.safe_load(custom.text)
    config["prompt_instructions"] = {**config.get("prompt_instructions", {}), "v2": "Be brief."}
    EnrichmentSettings.model_validate(config)
    (workspace.root / "my_enrichment.yaml").write_text(yaml.safe_dump(config))
    (example,) = examples_of("evaluate")
    script = example.text.replace("OPENAI_API_KEY=...", "OPENAI_API_KEY=sk-readme")
    workspace.run(script, OPENAI_API_KEY="sk-readme", OPENAI_BASE_URL=openai_stub)
    assert (workspace.root / "results.parquet").exists()
    (labelled,) = examples_of("labelled calls")
    (workspace.root / "labelled.yaml").write_text(labelled.text)
    out = workspace.run("layercode-pipeline evaluate --labelled labelled.yaml").stdout
    assert "Accuracy on 1 labelled calls" in out


def test_the_benches_exist_and_take_their_options(workspace):
    (example,) = examples_of("benches")
    for line in example.text.splitlines():
        command = line.split("#")[0].strip()
        if command:
            workspace.run(f"{command} --help > /dev/null", timeout_s=120)
