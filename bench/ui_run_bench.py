"""A run launched from the Dagster UI ("Materialize all") against the same work in-process.

    .venv/bin/python bench/ui_run_bench.py [--calls 300]

The simulator delivers `--calls` calls to a real listener and serves the REST API (records,
recordings, agents); the landed data is copied twice. One copy is materialised in-process
(`dg.materialize` over every asset on a persistent instance, as the demo does), the other through `dagster dev`:
webserver and daemon on the instance config the demo writes, the run submitted over the
webserver's GraphQL API exactly as the UI's "Materialize all" button does (`__ASSET_JOB`
with every asset selected), timed from submission to success. Sensors are stopped first, so
the only run is the one submitted. Goal: UI / in-process <= 1.3.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import duckdb
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PY, ROOT, dagster_home, pipeline_env  # noqa: E402

from layercode_pipeline.config import Settings  # noqa: E402
from layercode_pipeline.simulator import SimulatorAPI, deliver, generate_batch, listener_secrets_json  # noqa: E402
from layercode_pipeline.simulator.server import free_port  # noqa: E402

KEY = "sim_bench_key"
BIN = Path(PY).parent


def sessions_in(data: Path) -> int:
    con = duckdb.connect(str(data / "serving" / "analytics.duckdb"), read_only=True)
    try:
        return con.execute("select count(*) from marts.fct_sessions").fetchone()[0]
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300, help="calls landed (the demo's default)")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ui-run-"))
    source = root / "landed"
    batch = generate_batch(args.calls, seed=args.seed)
    api = SimulatorAPI(api_key=KEY, seed=args.seed, processing_delay_s=0.0)
    api.register(batch)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(api.serve())
        api_url = server.url + "/v1"
        # land the calls through a real listener (its segments seal on stop)
        port = free_port()
        env = pipeline_env(
            root, source, LAYERCODE_WEBHOOK_SECRETS=listener_secrets_json(batch), LAYERCODE_LOG_LEVEL="WARNING"
        )
        listener = subprocess.Popen(
            [PY, "-m", "layercode_pipeline.cli", "listen", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        report = deliver(batch, f"http://127.0.0.1:{port}/agents/{{agent_id}}/webhook", faults={})
        listener.terminate()
        listener.wait(30)
        print(f"landed {len(report.acknowledged)} events of {args.calls} calls", flush=True)
        in_process, via_ui = root / "in_process", root / "via_ui"
        shutil.copytree(source, in_process)
        shutil.copytree(source, via_ui)

        # 1. in-process, as the demo runs it
        from layercode_pipeline.definitions import build_definitions
        from layercode_pipeline.defs.resources import resources_from_settings

        defs = build_definitions()
        resources = resources_from_settings(Settings(data_dir=in_process, api_base_url=api_url, api_key=KEY))
        # on a persistent instance, as the demo runs (its runs are stored like the UI's)
        with dg.DagsterInstance.from_config(str(dagster_home(root / "in_process_home"))) as instance:
            started = time.perf_counter()
            result = dg.materialize(
                list(defs.assets or []),
                resources=resources,
                raise_on_error=False,
                instance=instance,
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            )
            in_process_s = time.perf_counter() - started
        assert result.success, "the in-process run failed"

        # 2. the UI's "Materialize all", through dagster dev
        home = dagster_home(root / "ui")
        ui_env = pipeline_env(home, via_ui, LAYERCODE_API_BASE_URL=api_url, LAYERCODE_API_KEY=KEY)
        workspace = str(ROOT / "workspace.yaml")
        for sensor in ("landing_sensor", "layercode_automation"):
            stopped = subprocess.run(
                [str(BIN / "dagster"), "sensor", "stop", sensor, "-w", workspace],
                env=ui_env,
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            if stopped.returncode != 0:
                raise SystemExit(f"could not stop {sensor}: {stopped.stdout[-1000:]}{stopped.stderr[-1000:]}")
        web_port = free_port()
        log = (root / "dagster_dev.log").open("w")
        dev = subprocess.Popen(
            [str(BIN / "dagster"), "dev", "-w", workspace, "-p", str(web_port)],
            env=ui_env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            from dagster_graphql import DagsterGraphQLClient

            deadline = time.time() + 180
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{web_port}/server_info", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline or dev.poll() is not None:
                    raise SystemExit("dagster dev did not come up: " + (root / "dagster_dev.log").read_text()[-2000:])
                time.sleep(0.5)
            client = DagsterGraphQLClient("127.0.0.1", port_number=web_port)
            keys = [k.path for k in defs.resolve_asset_graph().get_all_asset_keys()]
            while True:  # the code location may still be loading in the webserver
                try:
                    submitted = time.time()
                    run_id = client.submit_job_execution(
                        "__ASSET_JOB",
                        repository_location_name="layercode_pipeline",
                        repository_name="__repository__",
                        asset_selection=keys,
                    )
                    break
                except Exception:  # noqa: BLE001 - DagsterGraphQLClientError while the location loads
                    if time.time() > deadline:
                        raise
                    time.sleep(1)
            with dg.DagsterInstance.from_config(str(home)) as instance:
                while True:
                    run = instance.get_run_by_id(run_id)
                    if run.is_finished:
                        break
                    time.sleep(0.25)
                via_ui_s = time.time() - submitted
                stats = instance.get_run_stats(run_id)
                record = instance.get_run_record_by_id(run_id)
                assert run.status == dg.DagsterRunStatus.SUCCESS, f"the UI run ended {run.status}"
                queued_s = (record.start_time or submitted) - submitted
                executing_s = (stats.end_time or 0) - (stats.start_time or 0)
        finally:
            dev.terminate()
            try:
                dev.wait(60)
            except subprocess.TimeoutExpired:
                dev.kill()
            log.close()
    print(
        f"\n'Materialize all' over {len(keys)} assets ({args.calls} calls landed, REST API and recordings "
        "from the simulator)"
    )
    print(
        f"  in-process (dg.materialize, as the demo)    {in_process_s:6.1f} s   {sessions_in(in_process)} sessions served"
    )
    print(f"  from the UI (dagster dev, GraphQL submit)   {via_ui_s:6.1f} s   {sessions_in(via_ui)} sessions served")
    print(f"    of which queued and launching             {queued_s:6.1f} s")
    print(f"    of which the run from start to end        {executing_s:6.1f} s")
    ratio = via_ui_s / in_process_s
    print(
        f"  ratio UI / in-process                       {ratio:6.2f}x   (goal <= 1.3: "
        f"{'met' if ratio <= 1.3 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
