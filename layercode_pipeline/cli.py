"""`layercode-pipeline` command line: listen, simulate, backfill, demo, evaluate, dashboard.

Heavy imports (Dagster, dbt, uvicorn) happen inside each command so `--help` is instant.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime, timedelta

import click


def _settings():
    """The settings, or one line naming the variable that is wrong (never its value)."""
    from layercode_pipeline.config import ConfigError, Settings

    try:
        return Settings.load()
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")


def configure_access_log(level: str) -> None:
    """The listener's per-request JSON lines on stderr, one per line. The listener hands them
    over in batches (see webhook_listener.access_log), so one write carries many lines."""
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("webhook_listener.access")
    access.handlers[:] = [stream]
    access.propagate = False
    access.setLevel(level.upper())


@click.group()
@click.version_option(package_name="layercode-pipeline")
def main() -> None:
    """Turn every Layercode voice-agent call into warehouse tables."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True, type=int)
@click.option("--insecure-skip-verify", is_flag=True, help="Accept unsigned webhooks (local experiments only).")
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn worker processes.")
def listen(host: str, port: int, insecure_skip_verify: bool, workers: int) -> None:
    """Serve the webhook listener (POST /webhook, POST /agents/{id}/webhook, GET /healthz)."""
    import os

    import uvicorn

    from webhook_listener.app import create_app, tune_gc_for_serving
    from webhook_listener.slow_clients import HeaderTimeoutProtocol

    settings = _settings()
    _configure_logging(settings.log_level)
    configure_access_log(settings.log_level)
    if not settings.agent_secrets and not insecure_skip_verify:
        raise click.ClickException(
            "no webhook secret configured: set LAYERCODE_WEBHOOK_SECRET (default agent) or "
            "LAYERCODE_WEBHOOK_SECRETS (JSON agent_id -> secret), or pass --insecure-skip-verify"
        )
    if insecure_skip_verify:
        click.secho("WARNING: signature verification is disabled; anyone can post events.", fg="red", err=True)
    # the httptools protocol with a deadline for request headers (slow clients are cut off)
    HeaderTimeoutProtocol.header_timeout_s = settings.header_timeout_s
    if workers > 1:
        os.environ["LAYERCODE_INSECURE_SKIP_VERIFY"] = "1" if insecure_skip_verify else "0"
        uvicorn.run(
            "webhook_listener.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            http=HeaderTimeoutProtocol,
            access_log=False,
            server_header=False,
            log_level=settings.log_level.lower(),
            log_config=None,
        )
    else:
        app = create_app(settings, insecure_skip_verify=insecure_skip_verify)
        tune_gc_for_serving()
        # log_config=None: uvicorn's dictConfig would close the handlers configured above
        # server_header=False: no need to tell the internet which server answers
        uvicorn.run(
            app,
            host=host,
            port=port,
            http=HeaderTimeoutProtocol,
            access_log=False,
            server_header=False,
            log_level=settings.log_level.lower(),
            log_config=None,
        )


@main.command()
@click.option("--calls", default=100, show_default=True, type=click.IntRange(min=1), help="Conversations to generate.")
@click.option(
    "--webhook-url",
    default="http://127.0.0.1:8787/agents/{agent_id}/webhook",
    show_default=True,
    help="Listener URL; '{agent_id}' is replaced per agent.",
)
@click.option(
    "--seed",
    default=None,
    type=int,
    help="Replay the same calls (same ids, words and times). Default: new calls every run (the seed is printed).",
)
@click.option(
    "--agents-seed",
    default=None,
    type=int,
    help="The simulated org's agents: their ids and webhook secrets stay the same across runs (default: "
    "the demo's org, 7).",
)
@click.option(
    "--start",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    default=None,
    help="When the calls begin (UTC). Default: 8 hours ago, so they spread over the last 8 hours.",
)
@click.option("--api-port", type=int, default=None, help="Also serve the simulated REST API on this port.")
@click.option("--api-key", envvar="LAYERCODE_API_KEY", default="sim_api_key", show_default=True)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="NAME=RATE",
    help="Webhook: drop_session_end, drop_session_update, duplicate, out_of_order, burst. "
    "API: rate_limit, server_error, slow, truncated_wav, payment_required.",
)
@click.option(
    "--retries",
    default=0,
    show_default=True,
    type=click.IntRange(0, 10),
    help="Retry a failed delivery this many times. Layercode documents no retries, so the default is none.",
)
@click.option("--manifest", type=click.Path(dir_okay=False), default=None, help="Write the ground truth here.")
@click.option("--concurrency", default=32, show_default=True, type=int, help="Calls in flight at once.")
@click.option(
    "--pace",
    default=0.0,
    show_default=True,
    type=float,
    help="Seconds between a call's events (0: as fast as possible).",
)
@click.option(
    "--update-delay",
    default=0.0,
    show_default=True,
    type=float,
    help="Seconds between a call's session.end and its session.update (the recording's processing).",
)
@click.option(
    "--secret", default=None, help="Sign every agent's webhooks with this secret instead of the generated ones."
)
@click.option("--print-secrets", is_flag=True, help="Print LAYERCODE_WEBHOOK_SECRETS for these agents and exit.")
def simulate(
    calls: int,
    webhook_url: str,
    seed: int | None,
    agents_seed: int | None,
    start: datetime | None,
    api_port: int | None,
    api_key: str,
    faults: tuple[str, ...],
    retries: int,
    manifest: str | None,
    concurrency: int,
    pace: float,
    update_delay: float,
    secret: str | None,
    print_secrets: bool,
) -> None:
    """Send realistic signed Layercode webhooks to a listener (and serve the REST API)."""
    import contextlib
    import json
    import random
    import time
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from layercode_pipeline.simulator import (
        API_FAULTS,
        Deliverer,
        SimulatorAPI,
        default_agents,
        generate_batch,
        listener_secrets_json,
        parse_fault_specs,
    )
    from layercode_pipeline.simulator.deliver import deliver_with_progress
    from layercode_pipeline.simulator.generate import ORG_SEED

    console = Console()
    try:
        fault_rates = parse_fault_specs(faults)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from exc
    if seed is None:
        seed = random.SystemRandom().randrange(1, 2**31)
        if not print_secrets:
            console.print(f"new calls (seed {seed}; pass --seed {seed} to replay them)")
    # calls dated from now (they spread over the 8 hours from --start), the org's agents stable
    begin = start.replace(tzinfo=UTC) if start else datetime.now(UTC) - timedelta(hours=8)
    batch = generate_batch(
        calls, seed=seed, base_time=begin, agents=default_agents(ORG_SEED if agents_seed is None else agents_seed)
    )
    if print_secrets:
        click.echo(listener_secrets_json(batch))
        return
    if manifest:
        Path(manifest).write_text(json.dumps(batch.manifest(), indent=1))
    if api_port is not None:  # one line, before any call is sent (not uvicorn's bind traceback)
        _check_port_free("127.0.0.1", api_port, "another simulator (or demo) may be serving the REST API there")
    with contextlib.ExitStack() as stack:
        if api_port is not None:
            api = SimulatorAPI(
                api_key=api_key,
                seed=seed,
                processing_delay_s=update_delay,
                faults={k: v for k, v in fault_rates.items() if k in API_FAULTS},
            )
            api.register(batch)  # the platform knows every session, whatever the webhooks did
            server = stack.enter_context(api.serve(port=api_port))
            console.print(
                f"REST API: [bold]{server.url}/v1[/] (Bearer key from --api-key); "
                f"recordings redirect to {api.storage_url}"
            )
        deliverer = Deliverer(
            batch,
            webhook_url,
            faults=fault_rates,
            concurrency=concurrency,
            secret_override=secret,
            pace_s=pace,
            update_delay_s=update_delay,
            max_attempts=1 + retries,
        )
        report = deliver_with_progress(deliverer, console)
        table = Table(title="simulate")
        for key, value in report.summary().items():
            table.add_row(key, str(value))
        console.print(table)
        if report.failed:
            first = next(a.error or a.status for a in report.log if a.status is None or a.status >= 300)
            console.print(
                f"[red]{report.failed} deliveries failed[/] (not retried unless --retries; the REST backfill "
                f"repairs what it can); first: {first}"
            )
        refused = sum(1 for a in report.log if a.status in (401, 403))
        if refused or not report.acknowledged:
            # a wrong secret or agent id refuses every delivery: that is a failed run, not a result
            raise click.ClickException(
                f"{refused} deliveries refused (401/403: check the webhook secret and agent ids), "
                f"{len(report.acknowledged)} acknowledged"
            )
        if api_port is not None:
            console.print("Serving the REST API until Ctrl-C.")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)


@main.command()
@click.option("--agent-id", required=True, help="The agent that owns the sessions.")
@click.option("--session-id", "session_ids", multiple=True, help="A session to fetch (repeatable).")
@click.option("--from-file", type=click.Path(exists=True, dir_okay=False), help="File with one session id per line.")
def backfill(agent_id: str, session_ids: tuple[str, ...], from_file: str | None) -> None:
    """Fetch the REST records of the given sessions into raw.layercode_session_details.

    Runs the `layercode_session_details` asset itself (the code path of the hourly backfill),
    in the Dagster instance of DAGSTER_HOME when set, so the run shows in the UI."""
    import contextlib
    import logging

    import dagster as dg
    from rich.console import Console

    from layercode_pipeline.defs.backfill.assets import layercode_session_details
    from layercode_pipeline.defs.resources import resources_from_settings

    if not session_ids and not from_file:
        raise click.UsageError("give --session-id (repeatable) or --from-file")
    settings = _settings()
    if settings.api_key is None:
        raise click.ClickException("LAYERCODE_API_KEY is not set")
    console = Console()
    logging.getLogger("dagster").setLevel(logging.WARNING)
    config = {"agent_id": agent_id, "session_ids": list(session_ids), "session_ids_file": from_file, "automatic": False}
    run_config = {
        "ops": {"layercode_session_details": {"config": config}},
        "loggers": {"console": {"config": {"log_level": "ERROR"}}},
    }
    from layercode_pipeline.dagster_instance import initialise_instance

    with contextlib.ExitStack() as stack:
        instance = (
            stack.enter_context(dg.DagsterInstance.from_config(str(initialise_instance(settings.dagster_home))))
            if settings.dagster_home
            else None
        )
        with console.status("fetching session records…"):
            result = dg.materialize(
                [layercode_session_details],
                resources=resources_from_settings(settings),
                instance=instance,
                run_config=run_config,
                raise_on_error=False,
            )
    if not result.success:
        failure = next((e.step_failure_data.error for e in result.all_events if e.is_step_failure), None)
        raise click.ClickException(failure.message.strip() if failure else "the backfill run failed")
    meta = {
        k: v.value for k, v in result.asset_materializations_for_node("layercode_session_details")[0].metadata.items()
    }
    console.print(
        f"found {meta['found']}, not found {meta['not_found']}, errors {meta['errors']} "
        "-> raw.layercode_session_details"
    )
    for check in result.get_asset_check_evaluations():
        examples = check.metadata["examples"].value if "examples" in check.metadata else []
        for example in examples if isinstance(examples, list) else []:
            console.print(f"[red]{example['session_id']}[/]: {example['error']}")
    if meta["errors"]:
        raise SystemExit(1)


@main.command("init-instance")
@click.option(
    "--dagster-home",
    type=click.Path(file_okay=False),
    default=None,
    help="The instance directory (default: DAGSTER_HOME).",
)
def init_instance(dagster_home: str | None) -> None:
    """Create (or migrate) the Dagster instance of DAGSTER_HOME once, before commands that may
    run at the same time (two `dagster asset materialize` on a new home race on its schema)."""
    from pathlib import Path

    from layercode_pipeline.dagster_instance import initialise_instance

    home = Path(dagster_home) if dagster_home else _settings().dagster_home
    if home is None:
        raise click.UsageError("set DAGSTER_HOME or pass --dagster-home")
    click.echo(f"Dagster instance ready at {initialise_instance(home)}")


@main.command()
@click.option(
    "--calls",
    default=300,
    show_default=True,
    type=click.IntRange(min=1),
    help="Simulated calls (conversations) to deliver.",
)
@click.option("--seed", default=None, type=int, help="Seed for the simulated calls (default: a new one per run).")
@click.option(
    "--data-dir",
    default="./data",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where landing files, the warehouse, recordings and the serving copy go.",
)
def demo(calls: int, seed: int | None, data_dir: str) -> None:
    """Run the whole chain on the simulator: listener, webhooks with faults, ingest, backfill,
    recordings, enrichment, dbt, publish. No keys needed (OPENAI_API_KEY set: enrich with OpenAI)."""
    import logging
    import time
    from pathlib import Path

    from rich.console import Console

    from layercode_pipeline.dagster_instance import daemon_heartbeat_age, initialise_instance

    home = initialise_instance(_settings().dagster_home or Path(data_dir).resolve() / "dagster_home")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    # the terminal itself: each stage's output is captured (redirect_stdout), never the progress
    console = Console(file=sys.stdout)
    started = time.perf_counter()
    import dagster as dg

    from layercode_pipeline.demo import print_summary, run_demo

    try:
        # a persistent instance, so `dagster dev` with the same DAGSTER_HOME shows these runs
        with dg.DagsterInstance.from_config(str(home)) as instance:
            if daemon_heartbeat_age(instance) is not None:
                console.print(
                    f"[yellow]A dagster-daemon (or dg dev) is running on {home}: its sensors will start "
                    "runs as the demo lands data, and those runs queue with the demo's for the warehouse. "
                    "Stop it first, or set DAGSTER_HOME to another directory for the demo.[/]"
                )
            result = run_demo(Path(data_dir), calls, seed, console=console, instance=instance)
        print_summary(result, console, time.perf_counter() - started)
    except KeyboardInterrupt as exc:
        console.print(interrupt_line(exc), soft_wrap=True, highlight=False)
        raise SystemExit(130) from None


def interrupt_line(exc: KeyboardInterrupt) -> str:
    """Ctrl-C in the demo: one line, what was kept and how to go on."""
    from layercode_pipeline.demo import DemoInterrupted

    if not isinstance(exc, DemoInterrupted):  # before the first call, or while printing the summary
        return "[yellow]Interrupted; every call the listener acknowledged is kept. Run the demo again to go on.[/]"
    kept = (
        f"the {exc.acknowledged} webhooks acknowledged are landed and kept"
        if exc.acknowledged is not None
        else "every webhook the listener acknowledged is landed and kept"
    )
    return (
        f"[yellow]Interrupted during {exc.during}: {kept}; run the demo again to resume "
        f"(seed {exc.seed}; nothing is counted twice).[/]"
    )


@main.command()
@click.option(
    "--labelled",
    "labelled_path",
    default=None,
    help="Labelled calls (YAML, the format of the shipped lib/enrichment/labelled_calls.yaml), or `reviews`: "
    "the calls reviewed in the dashboard's workbench (their latest review, from the serving copy). "
    "Default: the shipped set.",
)
@click.option(
    "--provider",
    type=click.Choice(["auto", "offline", "openai"]),
    default="auto",
    show_default=True,
    help="auto: openai when OPENAI_API_KEY is set, else offline.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="OpenAI-compatible model (repeat to compare models). Default: LAYERCODE_ENRICHMENT_MODEL.",
)
@click.option(
    "--prompt-version",
    "prompt_versions",
    multiple=True,
    help="Prompt version from the enrichment config (repeat to compare versions).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Enrichment config (topics, prompt instructions, prices). Default: LAYERCODE_ENRICHMENT_CONFIG.",
)
@click.option("--base-url", default=None, help="OpenAI-compatible server. Default: OPENAI_BASE_URL.")
@click.option("--concurrency", default=4, show_default=True, type=int, help="Calls analysed at once.")
@click.option(
    "--misses", "max_misses", default=10, show_default=True, type=int, help="Misses listed per field and variant."
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write one row per call and variant (.parquet, .csv or .json).",
)
def evaluate(
    labelled_path: str | None,
    provider: str,
    models: tuple[str, ...],
    prompt_versions: tuple[str, ...],
    config_file: str | None,
    base_url: str | None,
    concurrency: int,
    max_misses: int,
    output: str | None,
) -> None:
    """Measure an enrichment provider on labelled calls: accuracy per field, confusion tables,
    misses, leaked PII, cost and latency; compare models or prompt versions side by side."""
    from rich.console import Console

    from layercode_pipeline.lib.enrichment import evaluate as ev

    console = Console(width=max(Console().width, 140))
    settings = _settings()
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    if labelled_path and labelled_path != ev.REVIEWS and not os.path.isfile(labelled_path):
        raise click.BadParameter(f"{labelled_path!r} is neither a file nor `reviews`", param_hint="--labelled")
    try:
        results = ev.run_variants(
            labelled_path,
            provider=provider,
            models=list(models) or [settings.enrichment_model],
            prompt_versions=list(prompt_versions),
            config_file=config_file or settings.enrichment_config,
            api_key=key,
            base_url=base_url or settings.openai_base_url,
            concurrency=concurrency,
            serving=settings.paths.serving / "analytics.duckdb",
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    ev.print_report(results, console, max_misses=max_misses)
    if output:
        ev.write_results(results, output)
        console.print(f"Results: [bold]{output}[/] ({results.height} rows)")


@main.command()
@click.option(
    "--serving",
    "serving_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="The serving copy to read. Default: serving/analytics.duckdb under LAYERCODE_DATA_DIR.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8050, show_default=True, type=int)
@click.option(
    "--refresh-s",
    default=10.0,
    show_default=True,
    type=float,
    help="How often an open page reads the serving copy again (new publishes show without a reload).",
)
def dashboard(serving_path: str | None, host: str, port: int, refresh_s: float) -> None:
    """Serve the dashboard over the serving copy (never the warehouse): calls, minutes, turn
    latency, barge-ins, outcomes, recordings; each call's recording, transcript and enrichment;
    and, with LAYERCODE_REVIEWERS set, the review workbench (/review)."""
    from pathlib import Path

    from layercode_pipeline.config import ConfigError
    from layercode_pipeline.lib.enrichment.analysis import EnrichmentSettings
    from layercode_pipeline.lib.recording_store import recording_store
    from layercode_pipeline.lib.reviews import ReviewLog

    try:
        from layercode_pipeline.dashboard import serve
        from layercode_pipeline.dashboard.review import Workbench
    except ImportError as exc:  # the extra is not installed
        raise click.ClickException(f"{exc.name} is missing: pip install 'layercode-pipeline[dashboard]'") from None
    settings = _settings()
    serving = Path(serving_path) if serving_path else settings.paths.serving / "analytics.duckdb"
    try:
        reviewers = settings.reviewer_credentials()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    workbench = Workbench(
        serving,
        ReviewLog(settings.paths.reviews),
        reviewers,
        list(EnrichmentSettings.load(settings.enrichment_config).topics),
    )
    recordings = recording_store(settings.storage(), settings.paths.recordings)
    _check_port_free(host, port)
    click.echo(f"Dashboard over {serving} on http://{host}:{port}/ (Ctrl-C to stop)")
    if reviewers:
        click.echo(f"Review workbench: http://{host}:{port}/review ({len(reviewers)} reviewer(s))")
    else:
        click.echo("Review workbench is read-only: set LAYERCODE_REVIEWERS to let reviewers save reviews")
    serve(
        serving,
        host=host,
        port=port,
        refresh_s=refresh_s,
        workbench=workbench,
        recordings=recordings,
        hosts=settings.dashboard_hosts,
    )


def _check_port_free(host: str, port: int, holder: str = "another dashboard may be running") -> None:
    """Say so before claiming to serve on a port another process holds."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {host}:{port} ({exc.strerror}): {holder}; stop it or choose another port"
            ) from None


@main.command()
@click.option("--session-id", "session_ids", multiple=True, help="A session to forget (repeat for several).")
@click.option("--conversation-id", "conversation_ids", multiple=True, help="A call: every session of it.")
@click.option("--phone-number", "phone_numbers", multiple=True, help="A caller (E.164): every session from or to it.")
@click.option(
    "--from-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="One identifier per line: session:<id>, conversation:<id> or phone:<E.164> (a bare +... is a phone number).",
)
@click.option(
    "--allow-unmatched",
    is_flag=True,
    help="Erase what matched even when some identifiers match no session (a batch file naming callers not seen "
    "yet): their tombstones keep them out from now on.",
)
def forget(
    session_ids: tuple[str, ...],
    conversation_ids: tuple[str, ...],
    phone_numbers: tuple[str, ...],
    from_file: str | None,
    allow_unmatched: bool,
) -> None:
    """Forget callers everywhere the pipeline keeps a copy: landing, quarantine, warehouse,
    recordings, reviews, outbox and serving copy; tombstones keep them from coming back, and
    `call.erased` tells your result webhook endpoints. Prints what each identifier matched and
    what was removed per store. Exits 1, erasing nothing, when an identifier matches no session
    (unless --allow-unmatched). Run with no identifier, it finishes an erasure an earlier
    `forget` left half-done."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from layercode_pipeline.config import ConfigError, load_privacy_key
    from layercode_pipeline.landing.objects import ObjectLanding
    from layercode_pipeline.lib import privacy
    from layercode_pipeline.lib.recording_store import recording_store
    from layercode_pipeline.lib.warehouse import Warehouse

    try:
        selectors = [
            *(privacy.Selector("session", v) for v in session_ids),
            *(privacy.Selector("conversation", v) for v in conversation_ids),
            *(privacy.Selector("phone", v) for v in phone_numbers),
            *(privacy.read_selectors(Path(from_file)) if from_file else []),
        ]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = _settings()
    try:
        endpoints = settings.result_endpoints()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    paths = settings.paths
    key = settings.privacy_key.get_secret_value() if settings.privacy_key else None
    console = Console()
    try:
        reports = privacy.forget(
            warehouse=Warehouse.from_settings(settings),
            paths=paths,
            key=load_privacy_key(paths.data_dir, key),
            selectors=selectors,
            recordings=recording_store(settings.storage(), paths.recordings),
            outbox_path=settings.outbox,
            endpoints=endpoints,
            object_landing=ObjectLanding.from_settings(settings),
            dagster_home=settings.dagster_home or paths.data_dir / "dagster_home",
            requested_by="cli",
            allow_unmatched=allow_unmatched,
        )
    except privacy.UnmatchedIdentifiers as exc:
        for selector, n in exc.matched.items():
            console.print(_matched_line(selector, n), soft_wrap=True)
        console.print(
            f"Nothing was erased: {len(exc.unmatched)} identifier(s) matched no session. Check them, or pass "
            "--allow-unmatched to erase what matched and keep the others out from now on.",
            soft_wrap=True,
        )
        sys.exit(1)
    if not selectors and not reports:
        raise click.UsageError(
            "name at least one --session-id, --conversation-id, --phone-number or --from-file "
            "(no erasure was left half-done to finish)"
        )
    for report in reports:
        if report.resumed:
            console.print(
                f"erasure {report.erasure_id} (stopped half-way earlier) finished: "
                f"{len(report.sessions)} sessions forgotten",
                soft_wrap=True,
            )
        else:
            for selector, n in report.matched.items():
                console.print(_matched_line(selector, n), soft_wrap=True)
            console.print(f"erasure {report.erasure_id}: {len(report.sessions)} sessions forgotten", soft_wrap=True)
            if not report.sessions:
                console.print(
                    "No session matched: nothing was removed, and the tombstones keep them out from now on.",
                    soft_wrap=True,
                )
        table = Table()
        table.add_column("store")
        table.add_column("removed", justify="right")
        for store, n in sorted(report.removed.items()):
            table.add_row(store, str(n))
        if report.removed:
            console.print(table)


def _matched_line(selector, n: int) -> str:
    return f"{selector}: {n} session{'s' if n != 1 else ''}" if n else f"{selector}: no session matched"


@main.command()
@click.option("--dry-run", is_flag=True, help="Print what would expire; change nothing.")
@click.option(
    "--recordings-days", type=click.IntRange(min=1), default=None, help="Overrides LAYERCODE_RETENTION_RECORDINGS_DAYS."
)
@click.option("--text-days", type=click.IntRange(min=1), default=None, help="Overrides LAYERCODE_RETENTION_TEXT_DAYS.")
@click.option(
    "--landing-days", type=click.IntRange(min=1), default=None, help="Overrides LAYERCODE_RETENTION_LANDING_DAYS."
)
@click.option(
    "--reviews-days", type=click.IntRange(min=1), default=None, help="Overrides LAYERCODE_RETENTION_REVIEWS_DAYS."
)
def retention(
    dry_run: bool,
    recordings_days: int | None,
    text_days: int | None,
    landing_days: int | None,
    reviews_days: int | None,
) -> None:
    """Expire old recordings, text, landing files and reviews now, as the daily retention_job
    does (LAYERCODE_RETENTION_*_DAYS, or the options). A call's age is its call time (when it
    started). Prints what expired per class, or with --dry-run what would."""
    from layercode_pipeline.lib.recording_store import recording_store
    from layercode_pipeline.lib.retention import RetentionPolicy, apply_retention, check_policy
    from layercode_pipeline.lib.warehouse import Warehouse

    settings = _settings()
    policy = RetentionPolicy(
        recordings_days=recordings_days or settings.retention_recordings_days,
        text_days=text_days or settings.retention_text_days,
        landing_days=landing_days or settings.retention_landing_days,
        reviews_days=reviews_days or settings.retention_reviews_days,
    )
    if policy == RetentionPolicy():
        raise click.UsageError(
            "no retention is set: set LAYERCODE_RETENTION_*_DAYS, or pass --recordings-days, --text-days, "
            "--landing-days or --reviews-days"
        )
    try:
        check_policy(policy)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    done = apply_retention(
        warehouse=Warehouse.from_settings(settings),
        paths=settings.paths,
        recordings=recording_store(settings.storage(), settings.paths.recordings),
        policy=policy,
        outbox_path=settings.outbox,
        dry_run=dry_run,
    )
    verb = "would expire" if dry_run else "expired"
    labels = {
        "recordings": ("recordings", policy.recordings_days),
        "text_sessions": ("sessions' text", policy.text_days),
        "review_files": ("review files", policy.reviews_days),
        "landing_segments": ("landing segments", policy.landing_days),
    }
    for name, n in done.items():
        label, days = labels.get(name, (name.replace("_", " "), None))
        older = f" (older than {days} days)" if days else ""
        click.echo(f"{verb}: {n} {label}{older}")
    if dry_run:
        click.echo("dry run: nothing was changed")


@main.group()
def deliveries() -> None:
    """Result webhooks in the outbox: list, replay, or deliver them from this process."""


def _outbox_and_settings():
    from layercode_pipeline.config import ConfigError
    from layercode_pipeline.lib.result_webhooks.outbox import Outbox

    settings = _settings()
    try:
        settings.result_endpoints()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return Outbox(settings.outbox), settings


def _parse_since(value: str | None) -> float | None:
    from datetime import UTC, datetime

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint="--since") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


@deliveries.command("list")
@click.option("--status", type=click.Choice(["pending", "delivered", "dead"]), default=None)
@click.option("--endpoint", default=None, help="Only this endpoint URL.")
@click.option("--since", default=None, help="Only messages created at or after this ISO 8601 time.")
@click.option(
    "--limit",
    default=None,
    type=click.IntRange(min=1),
    help="At most this many rows (newest first). Default: every row with --json, 50 in the table.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def deliveries_list(
    status: str | None, endpoint: str | None, since: str | None, limit: int | None, as_json: bool
) -> None:
    """One line per message and endpoint, newest first, with the totals per endpoint."""
    import json
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    from layercode_pipeline.lib.result_webhooks.delivery import redact_url

    outbox, _ = _outbox_and_settings()
    rows = outbox.deliveries(status=status, endpoint_url=endpoint, since=_parse_since(since))

    def iso(value: float | None) -> str | None:
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds") if value is not None else None

    if as_json:  # every row unless --limit says otherwise: a pipe gets what the outbox holds
        for r in rows[:limit]:
            click.echo(
                json.dumps(
                    {
                        **r,
                        "endpoint_url": redact_url(r["endpoint_url"]),
                        **{
                            k: iso(r[k])
                            for k in (
                                "created_at",
                                "first_attempt_at",
                                "last_attempt_at",
                                "delivered_at",
                                "next_attempt_at",
                            )
                        },
                    }
                )
            )
        return
    limit = limit or 50
    # ids are never cut: the table is as wide as its widest row, whatever the terminal (or a
    # pipe's 80 columns) would allow
    console = Console(width=100_000, soft_wrap=True)
    table = Table(box=None, padding=(0, 1))
    for col in ("webhook-id", "type", "session", "endpoint", "status", "attempts", "last", "created", "next/delivered"):
        table.add_column(col, no_wrap=True, overflow="ignore")
    for r in rows[:limit]:
        last = str(r["last_status"] or r["last_error"] or "-")
        when = iso(r["delivered_at"]) if r["status"] == "delivered" else iso(r["next_attempt_at"])
        table.add_row(
            r["message_id"],
            r["type"],
            r["session_id"],
            redact_url(r["endpoint_url"]),
            r["status"],
            str(r["attempts"]),
            last[:40],
            iso(r["created_at"]) or "-",
            (when or "-") if r["status"] != "dead" else "-",
            style=None,
        )
    console.print(table, soft_wrap=True)
    totals = outbox.counts()
    for url, counts in totals.items():
        if endpoint is None or url == endpoint:
            console.print(f"{redact_url(url)}: " + ", ".join(f"{n} {s}" for s, n in counts.items()), highlight=False)
    if len(rows) > limit:
        console.print(f"({len(rows) - limit} more; --limit to see them)")


@deliveries.command("replay")
@click.option("--id", "message_ids", multiple=True, help="A message's webhook-id (repeatable).")
@click.option("--status", type=click.Choice(["pending", "delivered", "dead"]), default=None)
@click.option("--endpoint", default=None, help="Only deliveries to this endpoint URL.")
@click.option("--since", default=None, help="Messages created at or after this ISO 8601 time.")
@click.option("--now", "deliver_now", is_flag=True, help="Also deliver them from this process, now.")
def deliveries_replay(
    message_ids: tuple[str, ...], status: str | None, endpoint: str | None, since: str | None, deliver_now: bool
) -> None:
    """Send messages again, under the same webhook-id (receivers de-duplicate on it).

    They become pending and due now, with a fresh retry schedule; a disabled (410) endpoint is
    enabled again. result_webhooks_sensor sends them, or this command with --now."""
    if not (message_ids or status or since):
        raise click.UsageError("give --id, --status or --since")
    outbox, settings = _outbox_and_settings()
    n = outbox.replay(
        message_ids=list(message_ids) or None, status=status, since=_parse_since(since), endpoint_url=endpoint
    )
    click.echo(f"{n} deliveries pending again")
    if deliver_now and n:
        from layercode_pipeline.lib.result_webhooks.delivery import Dispatcher

        with Dispatcher(
            outbox,
            settings.result_endpoints(),
            timeout_s=settings.result_webhook_timeout_s,
            schedule_s=settings.result_webhook_retry_schedule_s,
        ) as dispatcher:
            click.echo(dispatcher.run_until_idle().summary())


@deliveries.command("run")
@click.option("--once", is_flag=True, help="One round, then exit.")
@click.option("--interval", default=1.0, show_default=True, type=float, help="Seconds between rounds.")
def deliveries_run(once: bool, interval: float) -> None:
    """Deliver the outbox from this process until stopped: for a host without the Dagster
    daemon (result_webhooks_sensor does the same inside Dagster). Safe beside the sensor:
    deliveries are leased, never sent by two workers at once."""
    import signal
    import time

    from layercode_pipeline.lib.result_webhooks.delivery import Dispatcher

    outbox, settings = _outbox_and_settings()
    endpoints = settings.result_endpoints()
    if not endpoints:
        raise click.ClickException("LAYERCODE_RESULT_WEBHOOKS names no endpoint")
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    with Dispatcher(
        outbox,
        endpoints,
        timeout_s=settings.result_webhook_timeout_s,
        schedule_s=settings.result_webhook_retry_schedule_s,
    ) as dispatcher:
        while True:
            stats = dispatcher.run_round(wait_s=interval)
            if stats.delivered or stats.retrying or stats.dead:
                click.echo(stats.summary(), err=True)
            if once or stop:
                break
            time.sleep(interval)


if __name__ == "__main__":
    main()
