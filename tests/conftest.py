from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from layercode_pipeline.landing.segments import iter_sealed_segments, recover_orphan_segments
from layercode_pipeline.simulator.server import free_port

SECRET = "whsec_test_default"

# Each test pipeline (its own data directory) starts its own warm dbt (defs/dbt/warm.py): let
# them go a minute after their last build, not the production quarter of an hour, so a run of
# the suite does not keep dozens of them; the rest are stopped as the session ends.
os.environ.setdefault("LAYERCODE_WARM_DBT_IDLE_S", "60")


@pytest.fixture(scope="session", autouse=True)
def stop_warm_dbts(tmp_path_factory) -> Iterator[None]:
    yield
    base = str(tmp_path_factory.getbasetemp())
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError, ValueError):
            args = cmdline.read_bytes().decode().split("\0")
            if "layercode_pipeline.defs.dbt.warm" in args and "serve" in args and args[-3].startswith(base):
                os.kill(int(cmdline.parent.name), signal.SIGTERM)


class ListenerProcess:
    """`layercode-pipeline listen` in a subprocess: what an operator runs."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (), preexec_fn=None):
        self.port = free_port()
        self.data_dir = data_dir
        full_env = {
            **os.environ,
            "LAYERCODE_DATA_DIR": str(data_dir),
            "LAYERCODE_WEBHOOK_SECRET": SECRET,
            "LAYERCODE_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "layercode_pipeline.cli", "listen", "--port", str(self.port), *args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"listener exited: {self.proc.stdout.read().decode()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("listener did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        return self.proc.stdout.read().decode() if self.proc.stdout else ""


@pytest.fixture
def listener_factory(tmp_path: Path) -> Iterator:
    procs: list[ListenerProcess] = []

    def make(data_dir: Path | None = None, **kwargs) -> ListenerProcess:
        proc = ListenerProcess(data_dir or tmp_path / "data", **kwargs)
        procs.append(proc)
        return proc

    yield make
    for p in procs:
        p.stop(signal.SIGKILL)


def landed_envelopes(landing_dir: Path) -> list[dict]:
    """Every envelope in sealed segments, after sealing what dead writers left open."""
    recover_orphan_segments(landing_dir)
    out = []
    for seg in iter_sealed_segments(landing_dir):
        data = seg.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"torn segment {seg}"
        out += [orjson.loads(line) for line in data.splitlines()]
    return out


class DaemonProcess:
    """`dagster-daemon run -w <workspace>` in a subprocess (its output to a file, not a pipe
    nobody reads: a full pipe would block it)."""

    def __init__(self, workspace: Path, env: dict[str, str], log: Path, cwd: Path | None = None):
        self.log = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server and run processes are stopped with it
        )

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, "the daemon exited: " + self.tail()

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def stop(self) -> None:
        """The daemon and every process it started (a code server outlived it otherwise)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()


def failure_messages(instance, run_id: str) -> list[str]:
    """Each failure of a Dagster run with its causes (a step error wraps the asset's)."""
    out = []
    for e in instance.all_logs(run_id):
        if e.dagster_event and e.dagster_event.is_failure:
            error, text = getattr(e.dagster_event.event_specific_data, "error", None), e.dagster_event.message or ""
            while error is not None:
                text, error = text + " | " + error.message, error.cause
            out.append(text)
    return out


# Modules that build the whole chain (demo, every asset, dbt) or start a daemon, Postgres,
# Chromium, moto's S3 server or a second venv: `make test` runs them, `make test-fast` not.
SLOW_MODULES = {
    "test_automation",
    "test_dashboard",
    "test_demo_cli",
    "test_express_results",
    "test_incremental_runs",
    "test_layercode_today",
    "test_object_landing",
    "test_poison_pills",
    "test_privacy",
    "test_production_instance",
    "test_readme",
    "test_recordings_on_object_storage",
    "test_retention",
    "test_review_workbench",
    "test_serving",
    "test_warehouse_seam",
    "test_whole_chain",
}
SLOW_TESTS = {
    "test_a_killed_delivering_process_loses_nothing",
    # a whole materialize_all of their own (the shared build covers what they read)
    "test_without_an_api_key_the_marts_still_refresh_and_checks_warn",
    # `dg check defs` loads the code location in two fresh processes
    "test_dg_check_defs_and_both_workspaces_load",
    # a fresh Python per deployed service, or per concurrent instance initialisation
    "test_each_service_command_accepts_its_options",
    "test_concurrent_first_uses_of_a_new_home_leave_one_usable_instance",
    # `dbt docs generate` over the shared build: the documentation, not a number
    "test_dbt_docs_generate_and_every_column_is_described",
    # hostile inputs at full size (issue 48): 500 calls analysed, a 256 MiB gzip body, an
    # endpoint trickling past a lease
    "test_a_segment_of_500_session_ends_is_done_in_one_round",
    "test_hostile_wav_files_are_each_set_aside_with_bounded_memory_and_the_stage_goes_on",
    "test_a_slow_endpoint_never_gets_the_same_message_twice_at_once",
}


# What a module needs beyond Python: `pytest -m "not postgres"` on a machine without it.
NEEDS = {
    "test_production_instance": ("postgres", "daemon"),
    "test_automation": ("daemon",),
    "test_dashboard": ("chromium",),
    "test_review_workbench": ("chromium",),
    "test_object_landing": ("s3",),
    "test_privacy": ("s3",),
    "test_recordings_on_object_storage": ("s3",),
    "test_readme": ("s3", "daemon"),
}


# First: pytest-xdist's own hook turns each item's `xdist_group` mark into its group, and it
# must see the marks added here (after it, every group was split over both workers, and each
# slow module's fixture built twice)
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        for need in NEEDS.get(item.module.__name__.rsplit(".", 1)[-1], ()):
            item.add_marker(getattr(pytest.mark, need))
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        # under `-n 2 --dist loadgroup` (make test, make test-fast) a group runs on one worker:
        # the tests reading the shared marts (one build), and each slow module (its module-scoped
        # chain, dashboard or daemon is built once)
        module = item.module.__name__.rsplit(".", 1)[-1]
        if "shared_marts" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("shared_marts"))
        elif module in SLOW_MODULES:
            item.add_marker(pytest.mark.xdist_group(module))


@pytest.fixture(scope="session")
def shared_marts(tmp_path_factory):
    """One pipeline build for every test that only reads marts: the sessions of
    test_voice_metrics and of test_trustworthy_numbers (their agents differ, so each module's
    figures are its own), landed, ingested and built by the real `dbt build`."""
    from .test_trustworthy_numbers import NUMBERS_AGENTS, REST_UTTERANCES, numbers_events
    from .test_voice_metrics import VOICE_AGENTS, VOICE_ENRICHMENTS, VOICE_REST, build_warehouse, voice_events

    return build_warehouse(
        tmp_path_factory.mktemp("shared_marts") / "data",
        [voice_events(), numbers_events()],
        [*VOICE_REST, REST_UTTERANCES],
        [*VOICE_AGENTS, *NUMBERS_AGENTS],
        VOICE_ENRICHMENTS,
    )


# moto's S3 server on loopback: the object store of the tests that need one
KEY_ID, SECRET_KEY, REGION = "test-key-id", "test-secret-key", "us-east-1"


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(endpoint, timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the S3 server (moto) did not start") from None
            time.sleep(0.1)
    yield endpoint
    proc.kill()
    proc.wait()


def make_bucket(endpoint: str, name: str) -> None:
    import boto3  # the test's own S3 client, to create the bucket (the pipeline uses obstore)

    boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET_KEY, region_name=REGION
    ).create_bucket(Bucket=name)


@pytest.fixture
def express(tmp_path):
    """The express result path as the daemon ticks it (`tick()`), over `<tmp>/data`, with a
    receiver verifying every delivery with the `standardwebhooks` package."""
    import json

    import dagster as dg

    from layercode_pipeline.defs.resources import OpenAIResource, ResultWebhooksResource, StorageResource
    from layercode_pipeline.defs.results.automation import result_webhooks_sensor
    from layercode_pipeline.lib.result_webhooks.signing import new_secret
    from layercode_pipeline.simulator.receiver import ResultReceiver
    from layercode_pipeline.simulator.server import BackgroundServer

    data = tmp_path / "data"
    storage = StorageResource(data_dir=str(data))
    secret = new_secret()
    receiver = ResultReceiver(secret)
    with BackgroundServer(receiver.app) as server:
        config = json.dumps([{"url": server.url + "/", "secret": secret}])
        hooks = ResultWebhooksResource(endpoints_json=config, outbox_path=str(data / "outbox.sqlite3"))
        resources = {"result_webhooks": hooks, "storage": storage, "openai": OpenAIResource()}

        def tick() -> str:
            with dg.instance_for_test() as instance:
                context = dg.build_sensor_context(instance=instance, resources=resources)
                return result_webhooks_sensor(context).skip_message

        tick()  # the first tick starts from now
        yield {"storage": storage, "receiver": receiver, "tick": tick, "hooks": hooks, "data": data}
