"""`layercode-pipeline demo`: the whole chain on the simulator, on loopback, no keys needed."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from pydantic import SecretStr

from layercode_pipeline.simulator import DEFAULT_FAULTS

DEMO_API_KEY = "sim_demo_api_key"
DEMO_API_FAULTS = {"rate_limit": 0.02, "server_error": 0.02}
# "results" twice: with the enrichment (what a live run does: messages before dbt), and at the
# end, for a fresh warehouse, whose staging views (the messages' facts) dbt has just created
RUN_ORDER = ("ingest", "backfill", "enrichment", "dbt", "serving", "results")
DEMO_RECEIVER_PORT = 8790  # the demo's result webhook receiver, when free (a stable endpoint across runs)
DEMO_DAYS = 30  # the demo's calls spread over the last month, as a month of production would
STAGE_LABELS = {
    "ingest": "ingesting landed webhooks",
    "backfill": "backfilling gaps and downloading recordings",
    "enrichment": "enriching transcripts",
    "dbt": "dbt build",
    "serving": "publishing for BI tools",
    "results": "sending results to the local receiver (signed webhooks)",
}


class DemoInterrupted(KeyboardInterrupt):
    """Ctrl-C during the demo: what was kept, for the one line the CLI prints."""

    def __init__(self, during: str, seed: int, acknowledged: int | None):
        super().__init__(during)
        self.during, self.seed, self.acknowledged = during, seed, acknowledged


_DBT_DONE = re.compile(r"\b\d+ of \d+ (OK|PASS|WARN|FAIL|ERROR|SKIP)\b(.*)")
_DBT_FOUND = re.compile(r"Found (\d+) models?, (\d+) data tests?")
# "3 of 38 START ...": the nodes this invocation runs (a pipeline run runs its generic tests
# inside one audit, so the project's test count is not the run's)
_DBT_SELECTED = re.compile(r"\b\d+ of (\d+) START\b")


class StageOutput(io.StringIO):
    """What a stage prints (dagster-dbt echoes dbt's log lines): kept whole, to show if the
    stage fails, and read as it arrives for dbt's progress (models and tests done)."""

    def __init__(self) -> None:
        super().__init__()
        self._partial = ""
        self.models = self.tests = self.models_total = self.tests_total = self.warned = self.failed = 0

    def write(self, s: str) -> int:
        written = super().write(s)
        lines = (self._partial + s).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._read(line)
        return written

    def _read(self, line: str) -> None:
        if found := _DBT_FOUND.search(line):
            self.models_total, self.tests_total = int(found[1]), int(found[2])
        elif selected := _DBT_SELECTED.search(line):
            if " hook" not in line:  # (a hook's own "1 of 1 START")
                self.tests_total = max(0, int(selected[1]) - self.models_total)
        elif done := _DBT_DONE.search(line):
            status, rest = done[1], done[2]
            if rest.lstrip().startswith("hook"):  # the on-run-start hook: neither a model nor a test
                return
            if " model " in rest:
                self.models += 1
            else:
                self.tests += 1
            self.warned += status == "WARN"
            self.failed += status in ("FAIL", "ERROR")

    def progress(self) -> str:
        if not (self.models or self.tests or self.models_total):
            return ""
        out = f"models {self.models}/{self.models_total or '?'}, tests {self.tests}/{self.tests_total or '?'}"
        return out + (f", {self.warned} warnings" if self.warned else "")


def _interrupted(result: Any) -> bool:
    """Whether a failed in-process run failed because of Ctrl-C (Dagster turns SIGINT into an
    error inside the step; dbt, in the same process group, is interrupted too)."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            error = event.step_failure_data.error
            while error is not None:
                if error.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
                    return True
                error = error.cause
    return False


@dataclass
class DemoResult:
    data_dir: Path
    seed: int
    batch: Any
    report: Any
    stage_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    receiver: Any = None  # the local result webhook receiver (simulator.receiver.ResultReceiver)
    receiver_url: str | None = None
    resumed: bool = False  # this run finished an interrupted one (its batch, not a new one)


def _state(data_dir: Path) -> dict[str, Any]:
    path = data_dir / ".demo_state.json"
    return json.loads(path.read_text()) if path.exists() else {"runs": 0}


def materialize_all(
    data_dir: Path,
    *,
    api_url: str | None,
    api_key: str | None,
    grace_minutes: int = 15,
    on_stage=None,
    instance=None,
    quiet_dbt: bool = True,
    warehouse_target: str | None = None,
    result_webhooks: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Materialise every asset in dependency order, stage by stage (so progress can be shown).
    Returns each materialised asset's metadata, and under `asset_checks` every check's outcome
    (`"<asset>:<check>": {"passed", "severity"}`)."""
    import dagster as dg

    from layercode_pipeline.config import Settings
    from layercode_pipeline.definitions import build_definitions
    from layercode_pipeline.defs.dbt.project import DBT_GROUPS

    defs = build_definitions()
    from layercode_pipeline.defs.resources import resources_from_settings

    # the definitions' own resources, from the environment's settings, with everything under
    # this data directory and the given (simulated) REST API
    optional: dict[str, Any] = {"api_base_url": api_url} if api_url else {}
    if result_webhooks:
        optional["result_webhooks"] = SecretStr(result_webhooks)
    settings = Settings(
        data_dir=data_dir,
        landing_dir=None,
        quarantine_dir=None,
        warehouse_target=warehouse_target,
        recordings_url=None,
        serving_dir=None,
        api_key=SecretStr(api_key) if api_key else None,
        api_backoff_initial_s=0.2,
        api_backoff_max_s=5.0,
        **optional,
    )
    resources = resources_from_settings(settings)
    all_assets = cast(list[dg.AssetsDefinition], list(defs.assets or []))
    groups = {
        "ingest": dg.AssetSelection.assets("raw_layercode_events") | dg.AssetSelection.groups("reviews"),
        "backfill": dg.AssetSelection.groups("agents", "backfill", "recordings"),
        "enrichment": dg.AssetSelection.groups("enrichment", "results"),
        "dbt": dg.AssetSelection.groups(*DBT_GROUPS),
        "serving": dg.AssetSelection.groups("serving"),
        "results": dg.AssetSelection.groups("results"),
    }
    metadata: dict[str, dict[str, Any]] = {}
    for stage in RUN_ORDER:
        if on_stage:
            on_stage(stage, "start")
        # the terminal shows progress and the summary; the full logs are in the Dagster instance
        run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
        if stage == "backfill":
            run_config["ops"] = {"layercode_session_details": {"config": {"grace_minutes": grace_minutes}}}
        # dagster-dbt echoes every dbt log line to stdout (Dagster keeps them in the run's logs),
        # in the dbt stage and in the ingest stage too (the dbt source tests are checks on the
        # raw assets); on a terminal the progress lines say enough, unless the stage fails.
        captured = StageOutput()
        if on_stage:
            on_stage(stage, "output", captured)
        with (
            contextlib.redirect_stdout(captured) if quiet_dbt else contextlib.nullcontext(),
            contextlib.redirect_stderr(captured) if quiet_dbt else contextlib.nullcontext(),
        ):
            # the tag names the stage in the UI's run list
            result = dg.materialize(
                all_assets,
                selection=groups[stage],
                resources=resources,
                instance=instance,
                run_config=run_config,
                raise_on_error=False,
                tags={"layercode/stage": stage, "layercode/launched_by": "demo"},
            )
        if not result.success:
            if _interrupted(result):
                raise KeyboardInterrupt(stage)
            sys.stdout.write(captured.getvalue())
            raise RuntimeError(f"the {stage} stage failed; see the log above")
        for event in result.get_asset_materialization_events():
            mat = event.step_materialization_data.materialization
            metadata[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
        for check in result.get_asset_check_evaluations():  # warnings do not fail a stage; keep them to show
            metadata.setdefault("asset_checks", {})[f"{check.asset_key.to_user_string()}:{check.check_name}"] = {
                "passed": check.passed,
                "severity": check.severity.value,
            }
        if on_stage:
            on_stage(stage, "done", metadata)
    return metadata


def _save_state(data_dir: Path, state: dict[str, Any]) -> None:
    path = data_dir / ".demo_state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def demo_batch(calls: int, seed: int, end: datetime):
    """The demo's calls: over the `DEMO_DAYS` days before `end`, busier on weekdays and in
    working hours, from the simulated org's agents (the same ids every run), with one agent
    answering about twice as slowly for one week (from 14 to 7 days before `end`)."""
    from layercode_pipeline.simulator import default_agents, generate_batch
    from layercode_pipeline.simulator.generate import ORG_SEED, LatencyRegression

    agents = default_agents(ORG_SEED)
    slow = LatencyRegression(agents[2].name, end - timedelta(days=14), end - timedelta(days=7), factor=2.0)
    start = end - timedelta(days=DEMO_DAYS)
    return generate_batch(calls, seed=seed, base_time=start, agents=agents, days=DEMO_DAYS, regression=slow)


def run_demo(
    data_dir: Path,
    calls: int,
    seed: int | None = None,
    *,
    faults: dict[str, float] | None = None,
    api_faults: dict[str, float] | None = None,
    console=None,
    processing_delay_s: float = 1.0,
    instance=None,
    warehouse_target: str | None = None,
    receiver_port: int = DEMO_RECEIVER_PORT,
) -> DemoResult:
    """Deliver `calls` simulated calls through a real listener and materialise every asset.
    A run that was interrupted is resumed by the next one (its calls sent again when their
    delivery was cut short: what was landed counts once), unless that one names a `seed`.
    `receiver_port`: where the demo's result webhook receiver listens when free (else any port)."""
    from layercode_pipeline.config import Settings
    from layercode_pipeline.contract.landing import DEFAULT_KEPT_HEADERS
    from layercode_pipeline.defs.dbt.project import dbt_target_path
    from layercode_pipeline.defs.dbt.warm import stop_warm_dbt
    from layercode_pipeline.lib.result_webhooks.signing import new_secret
    from layercode_pipeline.simulator import Deliverer, SimulatorAPI, listener_secrets_json
    from layercode_pipeline.simulator.deliver import deliver_with_progress
    from layercode_pipeline.simulator.generate import CUSTOM_HEADERS as SIMULATED_CUSTOM_HEADERS
    from layercode_pipeline.simulator.receiver import ResultReceiver
    from layercode_pipeline.simulator.server import BackgroundServer, free_port
    from webhook_listener.app import create_app

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    state = _state(data_dir)

    def say(msg: str) -> None:
        if console is not None:
            console.print(msg)
            console.file.flush()  # shown as it happens when the output is a pipe (tee, a log, a test)

    pending = state.get("pending") if seed is None else None
    resuming = bool(pending)
    if pending:
        run_seed, calls, end = pending["seed"], pending["calls"], datetime.fromisoformat(pending["end"])
        say(
            f"[bold]Resuming the interrupted run[/] (seed {run_seed}, {calls} calls): "
            + (
                "its calls were all landed; running the pipeline over them"
                if pending["delivered"]
                else "sending its calls again; those already landed count once"
            )
        )
    else:
        # a new seed per run adds new calls; the same seed again resends the same calls, which
        # the pipeline must (and does) count once
        run_seed = seed if seed is not None else 1000 + state["runs"]
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        pending = {"seed": run_seed, "calls": calls, "end": end.isoformat(), "delivered": False}
        say(f"[bold]New batch[/]: {calls} calls over the last {DEMO_DAYS} days (seed {run_seed})")
    state["pending"] = pending
    _save_state(data_dir, state)
    batch = demo_batch(calls, run_seed, end)
    api = SimulatorAPI(
        api_key=DEMO_API_KEY,
        seed=run_seed,
        processing_delay_s=processing_delay_s,
        faults=DEMO_API_FAULTS if api_faults is None else api_faults,
        retry_after_s=1,
    )
    api.register(batch)
    settings = Settings(
        data_dir=data_dir,
        landing_dir=None,
        quarantine_dir=None,
        webhook_secret=None,
        webhook_secrets=SecretStr(listener_secrets_json(batch)),
        segment_max_age_s=5.0,
        log_level="WARNING",
        # the simulated customer's custom headers, named to be kept (none are by default)
        kept_headers=[*DEFAULT_KEPT_HEADERS, *SIMULATED_CUSTOM_HEADERS],
    )
    listener = BackgroundServer(create_app(settings), log_level="warning")
    listener.start()
    # the customer's product: receives each analysed call as a signed webhook and verifies it
    receiver_secret = new_secret()  # a new one per run, never stored (the outbox signs with the current one)
    receiver = ResultReceiver(receiver_secret)
    try:
        receiver_server = BackgroundServer(receiver.app, port=receiver_port).start()
    except (OSError, RuntimeError):
        receiver_server = BackgroundServer(receiver.app, port=free_port()).start()
    receiver_url = receiver_server.url + "/layercode/results"
    endpoints = json.dumps([{"url": receiver_url, "secret": receiver_secret}])
    report = None
    during = "delivery"
    with contextlib.ExitStack() as stack:
        stack.callback(receiver_server.stop)
        stack.callback(listener.stop)
        # the warm dbt the runs start outlives a run by its idle time: not the demo that started it
        stack.callback(stop_warm_dbt, str(dbt_target_path("run", data_dir)))
        api_server = stack.enter_context(api.serve())
        say(f"listener on [bold]{listener.url}[/], simulated Layercode REST API on [bold]{api_server.url}/v1[/]")
        try:
            if not pending["delivered"]:
                deliverer = Deliverer(
                    batch,
                    listener.url + "/agents/{agent_id}/webhook",
                    faults=DEFAULT_FAULTS if faults is None else faults,
                    concurrency=32,
                )
                report = deliver_with_progress(deliverer, console)
                listener.stop()  # graceful: seals the open segment
                pending["delivered"] = True
                _save_state(data_dir, state)
                wait = max(0.0, processing_delay_s - report.elapsed_s)
                if wait:
                    time.sleep(wait)  # the recordings finish "processing"
            listener.stop()
            progress = StageProgress(console)

            def on_stage(stage: str, phase: str, detail: Any = None) -> None:
                nonlocal during
                during = STAGE_LABELS[stage]
                progress.on_stage(stage, phase, detail)

            with progress:
                metadata = materialize_all(
                    data_dir,
                    api_url=api_server.url + "/v1",
                    api_key=DEMO_API_KEY,
                    grace_minutes=0,
                    on_stage=on_stage,
                    instance=instance,
                    warehouse_target=warehouse_target,
                    result_webhooks=endpoints,
                )
                during = "sending results"
                deliver_results(Settings(data_dir=data_dir, result_webhooks=SecretStr(endpoints)))
        except KeyboardInterrupt:
            acknowledged = len(report.acknowledged) if report is not None else None
            raise DemoInterrupted(during, run_seed, acknowledged) from None
    state["runs"] += 1
    state.setdefault("seeds", []).append(run_seed)
    state.pop("pending", None)
    _save_state(data_dir, state)
    return DemoResult(data_dir, run_seed, batch, report, metadata, receiver, receiver_url, resumed=resuming)


class StageProgress:
    """One live line for the stage that runs (its own label, dbt's models and tests as they
    finish, the time so far), and a kept line as each stage ends, with what it did."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.stage: str | None = None
        self.output: StageOutput | None = None
        self.started = time.perf_counter()
        self.live: Any = None
        self.spinner: Any = None
        self.moving: tuple[str, int, int | None] | None = None  # (what, done, total) so far

    def __enter__(self) -> StageProgress:
        import logging

        from layercode_pipeline.lib.progress import PROGRESS_LOGGER

        progress = self

        class Moving(logging.Handler):  # the library's progress records, read into the live line
            def emit(self, record: logging.LogRecord) -> None:
                progress.moving = getattr(record, "progress", None)

        self.handler, self.logger = Moving(logging.INFO), logging.getLogger(PROGRESS_LOGGER)
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False  # shown here only, never printed as a log line
        if self.console is not None:
            from rich.live import Live
            from rich.spinner import Spinner

            self.spinner = Spinner("dots")
            # the stages' output is captured (redirect_stdout): the live line writes to the
            # terminal's own file, never to sys.stdout of the moment
            self.live = Live(
                self, console=self.console, refresh_per_second=4, transient=True, redirect_stdout=False,
                redirect_stderr=False,
            )  # fmt: skip
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        if self.live is not None:
            self.live.stop()

    def __rich__(self) -> Any:
        from rich.text import Text

        if self.stage is None or self.spinner is None:
            return Text("")
        line = f"{STAGE_LABELS[self.stage]} … {time.perf_counter() - self.started:.0f} s"
        counts = self.output.progress() if self.output is not None else ""
        if not counts and self.moving is not None:
            what, done, total = self.moving
            counts = f"{what} {done}" + (f"/{total}" if total is not None else "")
        self.spinner.update(text=Text(line + (f" · {counts}" if counts else ""), style="bold"))
        return self.spinner

    def on_stage(self, stage: str, phase: str, detail: Any = None) -> None:
        if phase == "start":
            self.stage, self.output, self.moving, self.started = stage, None, None, time.perf_counter()
        elif phase == "output":
            self.output = detail
        elif phase == "done" and self.console is not None:
            what = stage_outcome(stage, detail or {}, self.output)
            elapsed = time.perf_counter() - self.started
            self.console.print(f"[green]✓[/] {STAGE_LABELS[stage]}{': ' + what if what else ''} ({elapsed:.1f} s)")
            self.console.file.flush()


def stage_outcome(stage: str, metadata: dict[str, dict[str, Any]], output: StageOutput | None) -> str:
    """What a finished stage did, from its assets' metadata (counts for this run only)."""

    def m(asset: str, key: str) -> Any:
        return metadata.get(asset, {}).get(key)

    if stage == "ingest":
        return (
            f"{m('raw_layercode_events', 'rows_inserted') or 0} new events, "
            f"{m('raw_layercode_events', 'duplicates_dropped') or 0} duplicates dropped"
        )
    if stage == "backfill":
        return (
            f"{m('layercode_session_details', 'found') or 0} session records fetched, "
            f"{m('layercode_recordings', 'this_run_downloaded') or 0} WAVs kept"
        )
    if stage == "enrichment":
        return (
            f"{m('session_enrichments', 'enriched') or 0} sessions analysed by "
            f"{m('session_enrichments', 'provider') or '-'}, {m('session_enrichments', 'cached') or 0} from the cache"
        )
    if stage == "dbt" and output is not None:
        return output.progress()
    return ""


def deliver_results(settings, deadline_s: float = 60.0) -> None:
    """Finish what the results stage started: every due message attempted (a live pipeline
    leaves this to result_webhooks_sensor)."""
    from layercode_pipeline.lib.result_webhooks.delivery import Dispatcher
    from layercode_pipeline.lib.result_webhooks.outbox import Outbox

    with Dispatcher(
        Outbox(settings.outbox),
        settings.result_endpoints(),
        timeout_s=settings.result_webhook_timeout_s,
        schedule_s=settings.result_webhook_retry_schedule_s,
    ) as dispatcher:
        dispatcher.run_until_idle(deadline_s)


def print_summary(result: DemoResult, console, elapsed_s: float) -> None:
    """The closing summary, read back from the serving copy a BI tool would open."""
    import duckdb
    from rich.panel import Panel
    from rich.table import Table

    serving = result.data_dir / "serving" / "analytics.duckdb"
    con = duckdb.connect(str(serving), read_only=True)
    try:
        sessions, conversations, turns, recordings, backfilled = con.execute("""
            select (select count(*) from marts.fct_sessions), (select count(*) from marts.fct_conversations),
                   (select count(*) from marts.fct_turns),
                   (select count(*) from marts.fct_sessions where has_recording),
                   (select count(*) from marts.fct_sessions where ended_by = 'backfill')""").fetchall()[0]
        providers = con.execute(
            "select coalesce(enrichment_provider, 'none'), count(*) from marts.fct_sessions group by 1 order by 2 desc"
        ).fetchall()
        interruptions, interrupted_sessions, data_events, observable, total, formats = con.execute("""
            select sum(interruptions), count(*) filter (where interruptions > 0), sum(data_events),
                   count(*) filter (where barge_ins_observable), count(*),
                   string_agg(distinct recording_sample_rate // 1000 || ' kHz ' || recording_encoding, ', '
                              order by recording_sample_rate // 1000 || ' kHz ' || recording_encoding)
            from marts.fct_sessions""").fetchall()[0]
        # the last week of the daily mart (the dashboard shows the whole month)
        daily = con.execute("""
            select call_date, coalesce(agent_name, agent_id), calls, sessions, round(duration_ms_p50 / 1000, 1),
                   round(latency_ms_p95)::int, round(interruption_rate * 100), round(recording_coverage * 100),
                   sentiment_positive || '/' || sentiment_neutral || '/' || sentiment_negative || '/' ||
                   sentiment_mixed, round(quality_score_avg, 1)
            from marts.agg_daily_call_metrics
            where call_date > (select max(call_date) from marts.agg_daily_call_metrics) - interval 7 day
            order by 1, 2""").fetchall()
        # per agent: reply latency as session.end reports it (every session has it), the slowest
        # week's p95 (a regression stands out), and barge-ins over every observable turn
        per_agent = con.execute("""
            with s as (
                select coalesce(agent_name, agent_id) as agent, session_id, conversation_id, latency_ms,
                       date_trunc('week', started_at)::date as week
                from marts.fct_sessions),
            weekly as (select agent, week, quantile_cont(latency_ms, 0.95) as p95 from s group by all),
            slowest as (select agent, arg_max(week, p95) as week, max(p95) as p95 from weekly group by agent),
            barge as (
                select coalesce(s.agent_name, s.agent_id) as agent,
                       100.0 * count(*) filter (where t.interrupted)
                       / nullif(count(*) filter (where t.role = 'assistant' and t.interrupted is not null), 0) as rate
                from marts.fct_sessions s join marts.fct_turns t using (session_id) group by 1)
            select s.agent, count(distinct s.conversation_id), round(quantile_cont(s.latency_ms, 0.5))::int,
                   round(quantile_cont(s.latency_ms, 0.95))::int,
                   any_value(strftime(slowest.week, '%b %d') || ': ' || round(slowest.p95)::int),
                   round(any_value(barge.rate), 1)
            from s left join slowest using (agent) left join barge using (agent) group by 1 order by 1""").fetchall()
        audio = con.execute("""
            select count(*) filter (where download_status = 'downloaded'), count(*) filter (where is_silent),
                   count(*) filter (where is_clipped), count(*) filter (where length_mismatch),
                   round(median(silence_share) * 100), round(median(loudness_dbfs), 1),
                   min(recording_uri) filter (where recording_uri is not null)
            from marts.fct_recordings""").fetchall()[0]
    finally:
        con.close()
    meta = result.stage_metadata
    facts = Table.grid(padding=(0, 2))
    if result.report is not None:
        rep = result.report.summary()
        facts.add_row(
            "webhooks",
            f"{rep['sent']} sent, {rep['acknowledged']} acknowledged, {rep['failed']} failed, "
            f"{rep['sse_complete']}/{rep['sse_replies']} SSE replies complete "
            f"({rep['sse_torn_by_barge_in']} torn by a barge-in), "
            f"{rep['dropped_by_fault']} dropped on purpose",
        )
    else:
        facts.add_row("webhooks", "none sent: this run resumed an interrupted one whose calls were all landed")
    ing = meta.get("raw_layercode_events", {})
    facts.add_row(
        "this run",
        f"{ing.get('rows_inserted', 0)} new events ingested, {ing.get('duplicates_dropped', 0)} duplicates "
        f"dropped, {ing.get('rejects', 0)} rejects",
    )
    facts.add_row("warehouse", f"in all: {conversations} calls, {sessions} sessions, {turns} turns")
    facts.add_row("backfill", f"{backfilled} sessions completed from the REST API (their session.end never came)")
    facts.add_row(
        "barge-ins",
        f"{interruptions or 0} assistant turns interrupted, in {interrupted_sessions} sessions "
        f"(observable in {observable} of {total}: hosted agents send no message webhooks); "
        f"{data_events or 0} data events from web clients",
    )
    facts.add_row(
        "recordings", f"{recordings} WAV files kept ({formats or 'none'}), fetched through redirects to signed storage"
    )
    kept, silent, clipped, short, silence_pct, loudness, example_uri = audio
    store = str(example_uri).split("/agent=")[0] if example_uri else "none kept"
    facts.add_row(
        "audio checks",
        f"{kept} recordings measured in {store}: {silent} silent, {clipped} clipped, {short} of the wrong length; "
        f"median silence {silence_pct if silence_pct is not None else '-'} %, "
        f"median loudness {loudness if loudness is not None else '-'} dBFS",
    )
    facts.add_row("enrichment", ", ".join(f"{n} by {p}" for p, n in providers))
    if result.receiver is not None:
        from layercode_pipeline.lib.result_webhooks.messages import CALL_ANALYZED, CALL_RECORDING_READY

        r = result.receiver
        facts.add_row(
            "results",
            f"{len(r.unique(CALL_ANALYZED))} analysed calls and "
            f"{len(r.unique(CALL_RECORDING_READY))} recordings pushed to {result.receiver_url}, "
            f"every signature verified ({r.rejected} rejected)",
        )
    facts.add_row("time", f"{elapsed_s:.1f} s")
    console.print(Panel(facts, title=f"layercode-pipeline demo (seed {result.seed})", expand=False))
    table = Table(
        title="marts.agg_daily_call_metrics, the last 7 days",
        caption="calls: conversations; sessions: their connections (a reconnect is a second session, and the "
        "figures after it count sessions); dur: median session length; p95: 95th percentile reply latency "
        "(session.end); barge: agent turns interrupted; rec: recording coverage; sentiment: "
        "positive/neutral/negative/mixed sessions; qual: quality 1-5",
        caption_justify="left",
        box=None,
        padding=(0, 1),
        title_justify="left",
    )
    for col in ("date", "agent", "calls", "sessions", "dur s", "p95 ms", "barge%", "rec%", "sentiment", "qual"):
        table.add_column(col, no_wrap=col != "agent", overflow="fold", min_width=12 if col == "agent" else None)
    for row in daily:
        table.add_row(*("-" if v is None else str(v) for v in row))
    console.print(table)
    agents = Table(
        title="per agent, the whole period: reply latency (session.end) and interruption rate",
        box=None,
        padding=(0, 1),
        title_justify="left",
    )
    for col in ("agent", "calls", "p50 ms", "p95 ms", "slowest week: p95 ms", "barge%"):
        agents.add_column(col, no_wrap=col != "agent", overflow="fold", min_width=12 if col == "agent" else None)
    for row in per_agent:
        agents.add_row(*("-" if v is None else str(v) for v in row))
    console.print(agents)
    d = result.data_dir
    console.print(f"""[bold]Files[/]
  landing     {d / "landing"}
  warehouse   {d / "warehouse.duckdb"}
  recordings  {d / "recordings"}
  serving     {serving}   (open this one from BI tools)
""")
    for line in next_steps(d, serving):
        # soft_wrap: a command is printed on one line whatever the terminal's width, so a pasted
        # copy keeps every variable
        console.print(line, soft_wrap=True, highlight=False, markup=line.startswith("[bold]"))


def next_steps(d: Path, serving: Path) -> list[str]:
    """The demo's closing hints: each command whole, on one line."""
    env = f"DAGSTER_HOME={d / 'dagster_home'} LAYERCODE_DATA_DIR={d}"
    api = "LAYERCODE_API_BASE_URL=http://127.0.0.1:8788/v1 LAYERCODE_API_KEY=sim_api_key"
    return [
        "[bold]Next[/] (one command per line; the last three each in their own terminal)",
        "  The dashboard over the serving copy, with the review workbench at http://127.0.0.1:8050/review "
        "(choose your own reviewer name and token):",
        f'  LAYERCODE_DATA_DIR={d} LAYERCODE_REVIEWERS=\'{{"me": "choose-a-long-token"}}\' '
        ".venv/bin/layercode-pipeline dashboard",
        "  The marts, from the serving copy:",
        f"  .venv/bin/python -c \"import duckdb; print(duckdb.connect('{serving}', read_only=True)"
        ".sql('from marts.agg_daily_call_metrics'))\"",
        "  Dagster's UI over these runs (from this directory), its sensors and automation on, the REST API "
        "pointed at the simulator's:",
        f"  {env} {api} .venv/bin/dg dev",
        "  A listener that accepts the simulator's agents:",
        f'  LAYERCODE_DATA_DIR={d} LAYERCODE_WEBHOOK_SECRETS="$(.venv/bin/layercode-pipeline simulate '
        '--print-secrets)" .venv/bin/layercode-pipeline listen',
        "  Calls to it, and the simulated REST API on port 8788 (the marts follow in about 30 s):",
        "  .venv/bin/layercode-pipeline simulate --calls 50 --pace 0.2 --api-port 8788",
    ]
