"""Measure a provider on labelled calls before trusting it with history.

`layercode-pipeline evaluate` runs a provider (offline, or the OpenAI provider against any
OpenAI-compatible server) over a labelled set (`labelled_calls.yaml`, shipped, or a user's
own file in the same format) and reports per-field accuracy, confusion tables for sentiment
and outcome, the misses, PII that would have reached the provider, and cost and latency.
Each variant (a model, or a prompt version) is one run over the same calls, so two can be
compared side by side. Results are polars frames: one row per call and variant.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from layercode_pipeline.lib.enrichment.analysis import OUTCOMES, SENTIMENTS, EnrichmentSettings
from layercode_pipeline.lib.enrichment.interface import Analysis, Provider
from layercode_pipeline.lib.enrichment.redact import redact
from layercode_pipeline.lib.transcripts import TurnText, render

SHIPPED_SET = Path(__file__).with_name("labelled_calls.yaml")
FIELDS = ("caller_name", "sentiment", "outcome", "topics", "pii_redacted")
_ROLES = {"agent": "assistant", "caller": "user"}


class LabelledCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    turns: list[TurnText]
    caller_name: list[str] = []  # accepted answers, canonical first; empty: no name said
    sentiment: Literal[SENTIMENTS]  # type: ignore[valid-type]
    outcome: Literal[OUTCOMES]  # type: ignore[valid-type]
    topics: list[str] = []
    pii: list[str] = []

    @field_validator("turns", mode="before")
    @classmethod
    def _turns(cls, value: Any) -> list[TurnText]:
        if not isinstance(value, list) or not value:
            raise ValueError("turns must be a non-empty list of `agent: ...` / `caller: ...` entries")
        out = []
        for i, turn in enumerate(value):
            if not (isinstance(turn, dict) and len(turn) == 1 and next(iter(turn)) in _ROLES):
                raise ValueError(f"turn {i + 1} must be one `agent: text` or `caller: text`, got {turn!r}")
            ((role, text),) = turn.items()
            out.append(TurnText(_ROLES[role], str(text)))
        return out

    @field_validator("caller_name", mode="before")
    @classmethod
    def _names(cls, value: Any) -> list[str]:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _pii_in_transcript(self) -> LabelledCall:
        text = render(self.turns).lower()
        for item in self.pii:
            if item.lower() not in text:
                raise ValueError(f"pii {item!r} does not occur in the transcript")
        return self


def load_labelled(path: str | Path | None = None, topics: Sequence[str] | None = None) -> list[LabelledCall]:
    """The labelled calls of a file, validated, with errors that name the call."""
    path = Path(path or SHIPPED_SET)
    raw = yaml.safe_load(path.read_text())
    entries = raw.get("calls") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a mapping with a `calls:` list")
    calls, seen = [], set()
    for i, entry in enumerate(entries):
        label = entry.get("id", f"#{i + 1}") if isinstance(entry, dict) else f"#{i + 1}"
        try:
            call = LabelledCall.model_validate(entry)
        except ValidationError as exc:
            raise ValueError(f"{path}: call {label}: {exc}") from None
        if call.id in seen:
            raise ValueError(f"{path}: call id {call.id!r} appears twice")
        unknown = set(call.topics) - set(topics) if topics is not None else set()
        if unknown:
            raise ValueError(f"{path}: call {call.id}: topics {sorted(unknown)} are not in the enrichment config")
        seen.add(call.id)
        calls.append(call)
    return calls


REVIEWS = "reviews"  # `--labelled reviews`: the calls reviewed in the dashboard's workbench


def reviewed_calls(serving: Path, topics: Sequence[str] | None = None) -> list[LabelledCall]:
    """Each reviewed call as a labelled call: its latest review (marts.fct_reviews, published
    by the pipeline's run after the review was saved) is the label, its transcript the input."""
    import duckdb

    if not serving.exists():
        raise ValueError(f"no serving copy at {serving}: run the pipeline first")
    con = duckdb.connect(str(serving), read_only=True)
    try:
        try:
            reviews = con.execute(
                "select session_id, caller_name, sentiment, outcome, topics from marts.fct_reviews "
                "where is_latest order by reviewed_at"
            ).fetchall()
        except duckdb.CatalogException:
            raise ValueError("the serving copy has no reviews yet (marts.fct_reviews)") from None
        turns: dict[str, list[TurnText]] = {}
        for session_id, role, text in con.execute(
            "select session_id, role, text from marts.fct_turns "
            "where session_id in (select session_id from marts.fct_reviews where is_latest) "
            "and text is not null order by session_id, position"
        ).fetchall():
            turns.setdefault(session_id, []).append(TurnText(role, text))
    finally:
        con.close()
    calls = []
    for session_id, caller_name, sentiment, outcome, call_topics in reviews:
        if not turns.get(session_id):
            continue  # a session without transcript text has nothing to analyse
        known = [t for t in call_topics or [] if topics is None or t in topics]
        # built, not validated: the turns are already TurnText (the validator reads the YAML form)
        calls.append(
            LabelledCall.model_construct(
                id=session_id,
                turns=turns[session_id],
                caller_name=[caller_name] if caller_name else [],
                sentiment=sentiment,
                outcome=outcome,
                topics=known,
                pii=[],
            )
        )
    if not calls:
        raise ValueError("no reviewed call with a transcript in the serving copy yet")
    return calls


def _norm(name: str | None) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s'’-]", "", name or "")).strip().casefold()


def _leaks(sent: str, pii: list[str]) -> list[str]:
    """Labelled PII strings still readable in what the provider received (also by their digits)."""
    low, digits = sent.lower(), re.sub(r"\D", "", sent)
    leaked = []
    for item in pii:
        item_digits = re.sub(r"\D", "", item)
        if item.lower() in low or (len(item_digits) >= 7 and item_digits in digits):
            leaked.append(item)
    return leaked


async def evaluate_provider(
    provider: Provider,
    settings: EnrichmentSettings,
    calls: list[LabelledCall],
    *,
    variant: str,
    redact_pii: bool = True,
    concurrency: int = 4,
) -> pl.DataFrame:
    """One row per call: what was expected, what the provider said, whether each field is right."""
    sem = asyncio.Semaphore(concurrency)

    async def one(call: LabelledCall) -> dict[str, Any]:
        text = render(call.turns)
        sent = redact(text) if redact_pii else text
        async with sem:
            try:
                analysis = await provider.analyse(call.turns, sent)
            except Exception as exc:  # noqa: BLE001 - a failing call is an error row, the run goes on
                analysis = Analysis(None, error=f"{type(exc).__name__}: {str(exc)[:300]}")
        return _row(call, analysis, sent, variant, provider, settings)

    rows = await asyncio.gather(*(one(c) for c in calls))
    return pl.DataFrame(rows, schema=_SCHEMA)


_SCHEMA: dict[str, Any] = {
    "variant": pl.String,
    "provider": pl.String,
    "model": pl.String,
    "prompt_version": pl.String,
    "call_id": pl.String,
    "expected_caller_name": pl.String,
    "caller_name": pl.String,
    "expected_sentiment": pl.String,
    "sentiment": pl.String,
    "expected_outcome": pl.String,
    "outcome": pl.String,
    "expected_topics": pl.List(pl.String),
    "topics": pl.List(pl.String),
    "pii_leaked": pl.List(pl.String),
    "caller_name_correct": pl.Boolean,
    "sentiment_correct": pl.Boolean,
    "outcome_correct": pl.Boolean,
    "topics_correct": pl.Boolean,
    "topics_jaccard": pl.Float64,
    "pii_redacted_correct": pl.Boolean,
    "error": pl.String,
    "latency_ms": pl.Float64,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "cost_usd": pl.Float64,
}


def _row(
    call: LabelledCall, a: Analysis, sent: str, variant: str, provider: Provider, settings: EnrichmentSettings
) -> dict[str, Any]:
    r = a.result or {}
    expected_topics = sorted(set(call.topics))
    topics = sorted(set(r.get("topics") or []) - {"other"}) if a.result else []
    union = set(expected_topics) | set(topics)
    name = r.get("caller_name")
    leaked = _leaks(sent, call.pii)
    ok = a.result is not None
    return {
        "variant": variant,
        "provider": provider.name,
        "model": provider.model,
        "prompt_version": settings.prompt_version,
        "call_id": call.id,
        "expected_caller_name": call.caller_name[0] if call.caller_name else None,
        "caller_name": name,
        "expected_sentiment": call.sentiment,
        "sentiment": r.get("sentiment"),
        "expected_outcome": call.outcome,
        "outcome": r.get("outcome"),
        "expected_topics": expected_topics,
        "topics": topics,
        "pii_leaked": leaked,
        "caller_name_correct": ok
        and (
            _norm(name) in {_norm(n) for n in call.caller_name} if call.caller_name else name is None or not _norm(name)
        ),
        "sentiment_correct": ok and r.get("sentiment") == call.sentiment,
        "outcome_correct": ok and r.get("outcome") == call.outcome,
        "topics_correct": ok and set(topics) == set(expected_topics),
        "topics_jaccard": (len(set(topics) & set(expected_topics)) / len(union) if union else 1.0) if ok else 0.0,
        "pii_redacted_correct": not leaked,
        "error": a.error,
        "latency_ms": a.latency_ms,
        "input_tokens": a.input_tokens,
        "output_tokens": a.output_tokens,
        "cost_usd": settings.cost_usd(provider.model, a.input_tokens, a.output_tokens) or 0.0,
    }


def summary(results: pl.DataFrame) -> pl.DataFrame:
    """One row per variant: accuracy per field (an error row counts as a miss), errors, cost, latency."""
    return results.group_by("variant", "provider", "model", "prompt_version", maintain_order=True).agg(
        pl.len().alias("calls"),
        *[pl.col(f"{f}_correct").mean().alias(f"{f}_accuracy") for f in FIELDS],
        pl.col("topics_jaccard").mean().alias("topics_jaccard"),
        pl.col("error").is_not_null().sum().alias("errors"),
        pl.col("cost_usd").sum().alias("cost_usd"),
        pl.col("input_tokens").sum().alias("input_tokens"),
        pl.col("output_tokens").sum().alias("output_tokens"),
        pl.col("latency_ms").median().alias("latency_ms_p50"),
        pl.col("latency_ms").quantile(0.95, "nearest").alias("latency_ms_p95"),
    )


def confusion(results: pl.DataFrame, field: Literal["sentiment", "outcome"]) -> pl.DataFrame:
    """Rows: the expected label; columns: what the provider said (`error` when it failed)."""
    labels = SENTIMENTS if field == "sentiment" else OUTCOMES
    said = pl.col(field).fill_null("error")
    table = (
        results.with_columns(said.alias("said"))
        .group_by(f"expected_{field}", "said")
        .len()
        .pivot(on="said", index=f"expected_{field}", values="len")
        .fill_null(0)
    )
    columns = [c for c in (*labels, "error") if c in table.columns]
    order = {label: i for i, label in enumerate(labels)}
    return table.select(f"expected_{field}", *columns).sort(
        pl.col(f"expected_{field}").replace_strict(order, default=99)
    )


def misses(results: pl.DataFrame, field: str) -> pl.DataFrame:
    """The calls a variant got wrong on one field, with what was expected and what it said."""
    if field == "pii_redacted":
        return results.filter(~pl.col("pii_redacted_correct")).select("variant", "call_id", "pii_leaked")
    return results.filter(~pl.col(f"{field}_correct")).select("variant", "call_id", f"expected_{field}", field, "error")


def compare(results: pl.DataFrame) -> pl.DataFrame:
    """Calls where the variants disagree on correctness of any field, one column per variant and field."""
    variants = results["variant"].unique(maintain_order=True).to_list()
    if len(variants) < 2:
        return pl.DataFrame()
    wide = results.pivot(
        on="variant", index="call_id", values=[f"{f}_correct" for f in ("caller_name", "sentiment", "outcome")]
    )
    differs = pl.any_horizontal(
        pl.concat_list(pl.col(f"^{f}_correct_.*$")).list.n_unique() > 1 for f in ("caller_name", "sentiment", "outcome")
    )
    return wide.filter(differs)


def run_variants(
    labelled_path: str | Path | None,
    *,
    provider: str,
    models: list[str],
    prompt_versions: list[str],
    config_file: str | Path | None,
    api_key: str | None,
    base_url: str | None,
    concurrency: int = 4,
    serving: Path | None = None,
) -> pl.DataFrame:
    """Every variant (model x prompt version; one for offline per prompt version) over the same calls."""
    from layercode_pipeline.lib.enrichment.analysis import build_analysis_model
    from layercode_pipeline.lib.enrichment.providers import build_provider

    base = EnrichmentSettings.load(config_file)
    if str(labelled_path) == REVIEWS:
        if serving is None:
            raise ValueError("--labelled reviews needs the serving copy")
        calls = reviewed_calls(serving, topics=list(base.topics))
    else:
        calls = load_labelled(labelled_path, topics=list(base.topics))
    versions = prompt_versions or [base.prompt_version]
    unknown = [v for v in versions if base.prompt_instructions and v not in base.prompt_instructions]
    if unknown:
        raise ValueError(
            f"prompt version(s) {unknown} have no instructions in the config "
            f"(known: {sorted(base.prompt_instructions)})"
        )
    frames: list[pl.DataFrame] = []
    for version in versions:
        settings = base.model_copy(update={"prompt_version": version})
        schema = build_analysis_model(settings)
        for model in models:
            p = build_provider(provider, settings, schema, api_key=api_key, model=model, base_url=base_url)
            variant = f"{p.name}:{p.model}:{version}"
            if any(f["variant"][0] == variant for f in frames):
                continue  # the offline provider has no model: one run per prompt version

            async def run(p: Provider = p, settings: EnrichmentSettings = settings, variant: str = variant):
                try:
                    return await evaluate_provider(p, settings, calls, variant=variant, concurrency=concurrency)
                finally:
                    await p.aclose()

            frames.append(asyncio.run(run()))
    return pl.concat(frames)


def write_results(results: pl.DataFrame, path: str | Path) -> None:
    path = Path(path)
    if path.suffix == ".parquet":
        results.write_parquet(path)
    elif path.suffix == ".csv":  # CSV has no lists: topics and leaks as "a|b"
        results.with_columns(pl.col(pl.List(pl.String)).list.join("|")).write_csv(path)
    elif path.suffix == ".json":
        results.write_json(path)
    else:
        raise ValueError(f"{path}: write .parquet, .csv or .json")


def print_report(results: pl.DataFrame, console: Any, *, max_misses: int = 10) -> None:
    """Accuracy per field and variant, confusion tables, misses, cost and latency (rich tables)."""
    from rich.table import Table

    def table(df: pl.DataFrame, title: str) -> Table:
        t = Table(title=title, title_justify="left")
        for name in df.columns:
            t.add_column(name, justify="right" if df[name].dtype.is_numeric() else "left")
        for row in df.iter_rows():
            t.add_row(
                *(
                    ""
                    if v is None
                    else f"{v:.3f}"
                    if isinstance(v, float)
                    else ", ".join(v)
                    if isinstance(v, list)
                    else str(v)
                    for v in row
                )
            )
        return t

    stats = summary(results)
    fields = [
        *(f"{f}_accuracy" for f in FIELDS),
        "topics_jaccard",
        "errors",
        "cost_usd",
        "input_tokens",
        "output_tokens",
        "latency_ms_p50",
        "latency_ms_p95",
    ]
    acc = Table(
        title=f"Accuracy on {stats['calls'][0]} labelled calls (an error counts as a miss)", title_justify="left"
    )
    acc.add_column("measure")
    for variant in stats["variant"]:
        acc.add_column(variant, justify="right")
    for name in fields:
        values = stats[name].to_list()
        acc.add_row(
            name,
            *(
                f"{v:.1%}" if name.endswith("_accuracy") else f"{v:.3f}" if isinstance(v, float) else str(v)
                for v in values
            ),
        )
    console.print(acc)
    for variant, part in results.group_by("variant", maintain_order=True):
        for name in ("sentiment", "outcome"):
            matrix = confusion(part, name)  # type: ignore[arg-type]  # name is one of the loop's literals
            console.print(table(matrix, f"{variant[0]}: {name} (rows: expected, columns: said)"))
        for name in FIELDS:
            wrong = misses(part, name)
            if wrong.height:
                console.print(
                    table(
                        wrong.drop("variant").head(max_misses),
                        f"{variant[0]}: {name} misses ({wrong.height}, first {min(max_misses, wrong.height)})",
                    )
                )
    differs = compare(results)
    if differs.height:
        console.print(table(differs, "Calls the variants disagree on (True: right)"))
