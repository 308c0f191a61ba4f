"""Enrichment: the real openai client against a local OpenAI-compatible server, and offline."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import dagster as dg
import duckdb
import pytest

from layercode_pipeline.defs.enrichment.assets import session_enrichments
from layercode_pipeline.defs.ingest.assets import raw_layercode_events
from layercode_pipeline.defs.resources import OpenAIResource, StorageResource
from layercode_pipeline.lib.enrichment.offline import OFFLINE_MODEL
from layercode_pipeline.lib.enrichment.redact import redact
from layercode_pipeline.simulator import deliver, generate_batch, listener_secrets_json
from layercode_pipeline.simulator.llm import OpenAIStub
from layercode_pipeline.simulator.server import BackgroundServer

KEY = "sk-test-enrichment"


@pytest.fixture(scope="module")
def warehouse_template(tmp_path_factory):
    """Raw events of a simulated batch, landed by the real listener and ingested."""
    from .conftest import ListenerProcess

    base = tmp_path_factory.mktemp("enrich")
    batch = generate_batch(40, seed=33)  # a seed whose calls include card numbers and emails to redact
    listener = ListenerProcess(base, env={"LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(batch)})
    deliver(batch, listener.url + "/agents/{agent_id}/webhook", concurrency=8)
    listener.stop()
    storage = StorageResource(data_dir=str(base))
    assert dg.materialize([raw_layercode_events], resources={"storage": storage}).success
    return batch, storage.warehouse.path


@pytest.fixture
def env(warehouse_template, tmp_path):
    batch, template = warehouse_template
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(template, data / "warehouse.duckdb")
    stub = OpenAIStub(
        api_key=KEY,
        answer=lambda body, content: {
            "sentiment": "negative" if "furious" in body["messages"][1]["content"] else "positive"
        },
    )
    server = BackgroundServer(stub.app).start()
    yield {
        "batch": batch,
        "stub": stub,
        "storage": StorageResource(data_dir=str(data)),
        "openai": OpenAIResource(api_key=KEY, base_url=server.url + "/v1", model="gpt-5-mini", max_retries=3),
    }
    server.stop()


def distinct_transcripts(batch) -> int:
    return len({json.dumps(s.truth()["turn_texts"]) for s in batch.sessions})


def enrich(env, config: dict | None = None, openai: OpenAIResource | None = None) -> dict:
    result = dg.materialize(
        [session_enrichments],
        resources={"storage": env["storage"], "openai": openai or env["openai"]},
        run_config={"ops": {"session_enrichments": {"config": config or {}}}},
    )
    assert result.success
    (mat,) = result.asset_materializations_for_node("session_enrichments")
    return {k: v.value for k, v in mat.metadata.items()}


def rows(env, sql: str):
    con = duckdb.connect(str(env["storage"].warehouse.path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_openai_structured_output_with_redacted_text(env):
    n, calls = len(env["batch"].sessions), distinct_transcripts(env["batch"])
    assert calls < n  # some calls share a transcript: asked once, answer reused
    meta = enrich(env)
    assert (meta["provider"], meta["model"], meta["enriched"], meta["failed"]) == ("openai", "gpt-5-mini", n, 0)
    requests = env["stub"].requests
    assert len(requests) == meta["llm_calls"] == calls
    for body in requests:
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
        props = fmt["json_schema"]["schema"]["properties"]
        assert {
            "summary",
            "caller_name",
            "sentiment",
            "outcome",
            "topics",
            "quality_score",
            "compliance_flags",
            "action_items",
            "custom_fields",
        } <= set(props)
        assert body["model"] == "gpt-5-mini"
        text = body["messages"][1]["content"]
        assert not re.search(r"\d{4} \d{4} \d{4} \d{4}", text) and "@example.com" not in text
    sent = "\n".join(b["messages"][1]["content"] for b in requests)
    assert "[CARD]" in sent and "[EMAIL]" in sent and ("[PHONE]" in sent or "[NUMBER]" in sent)
    # the raw transcript in the warehouse is untouched
    assert rows(env, "select count(*) from raw.layercode_events where body::varchar like '%@example.com%'")[0][0] > 0
    got = dict(rows(env, "select session_id, sentiment from enrichment.session_enrichments"))
    for s in env["batch"].sessions:
        assert got[s.session_id] == ("negative" if s.scenario == "angry_caller" else "positive")
    tokens, cost, provider = rows(
        env, "select sum(input_tokens), sum(cost_usd), min(provider) from enrichment.session_enrichments"
    )[0]
    in_tok, out_tok = rows(env, "select sum(input_tokens), sum(output_tokens) from enrichment.session_enrichments")[0]
    assert tokens > 0 and provider == "openai"
    assert cost == pytest.approx(in_tok / 1e6 * 0.25 + out_tok / 1e6 * 2.0)
    assert meta["cost_usd"] == pytest.approx(cost, abs=1e-6)


def test_cache_then_version_bump_then_model_change(env):
    n, calls = len(env["batch"].sessions), distinct_transcripts(env["batch"])
    enrich(env)
    before = len(env["stub"].requests)
    meta = enrich(env)
    assert len(env["stub"].requests) == before  # zero requests
    # nothing new landed and every session has its answer: the run looks at no session at all
    # (its cost follows the new data, not the history)
    assert (meta["candidates"], meta["cached"], meta["enriched"], meta["llm_calls"]) == (0, 0, 0, 0)
    meta = enrich(env, {"prompt_version": "v2"})
    assert meta["enriched"] == n and len(env["stub"].requests) == before + calls
    other = OpenAIResource(api_key=KEY, base_url=env["openai"].base_url, model="gpt-5-nano")
    assert enrich(env, openai=other)["enriched"] == n
    assert sorted(
        rows(env, "select prompt_version, model, count(*) from enrichment.session_enrichments group by all")
    ) == [("v1", "gpt-5-mini", n), ("v1", "gpt-5-nano", n), ("v2", "gpt-5-mini", n)]


def test_rate_limit_then_success(env):
    env["stub"].script("rate_limit", "server_error")
    meta = enrich(env)
    assert meta["failed"] == 0 and meta["enriched"] == len(env["batch"].sessions)
    assert len(env["stub"].requests) == distinct_transcripts(env["batch"]) + 2


def test_malformed_and_refused_answers_are_error_rows_and_the_run_goes_on(env):
    env["stub"].script("malformed", "refusal")
    meta = enrich(env, {"concurrency": 1})
    n = len(env["batch"].sessions)
    failed = meta["failed"]
    assert failed >= 2 and meta["enriched"] == n - failed  # (a shared transcript fails for all its sessions)
    errors = [r[0] for r in rows(env, "select error from enrichment.session_enrichments where error is not null")]
    assert len(errors) == failed and any("malformed" in e for e in errors) and any("refused" in e for e in errors)
    calls = len(env["stub"].requests)
    meta = enrich(env)  # the failures are retried; the answered sessions are not looked at again
    assert (meta["candidates"], meta["enriched"], meta["cached"], meta["failed"]) == (failed, failed, 0, 0)
    assert len(env["stub"].requests) == calls + 2


def test_budget_stops_cleanly(env):
    n = len(env["batch"].sessions)
    meta = enrich(env, {"max_calls": 5})
    first = meta["enriched"]
    assert meta["llm_calls"] == len(env["stub"].requests) == 5
    assert first >= 5 and meta["skipped_budget"] == n - first
    meta = enrich(env, {"max_usd": 0.0})
    assert (meta["llm_calls"], meta["skipped_budget"]) == (0, n - first)
    meta = enrich(env, {"max_usd": 0.01})  # a few cents' worth, not all
    assert 0 < meta["llm_calls"] < distinct_transcripts(env["batch"]) - 5 and meta["cost_usd"] <= 0.01
    answered_before = rows(
        env, "select count(distinct session_id) from enrichment.session_enrichments where error is null"
    )[0][0]
    meta = enrich(env)  # no budget: the sessions still without an answer, and only those
    assert meta["candidates"] == n - answered_before and meta["skipped_budget"] == 0
    assert rows(env, "select count(distinct session_id) from enrichment.session_enrichments where error is null") == [
        (n,)
    ]


def test_offline_provider_on_the_simulator_scenarios(env):
    meta = enrich(env, openai=OpenAIResource())  # no key: offline
    assert (meta["provider"], meta["model"]) == ("offline", OFFLINE_MODEL)
    assert env["stub"].requests == []
    got = {
        r[0]: r[1:]
        for r in rows(
            env,
            "select session_id, provider, sentiment, caller_name, outcome, summary, "
            "compliance_flags, custom_fields, topics from enrichment.session_enrichments",
        )
    }
    seen = set()
    for s in env["batch"].sessions:
        provider, sentiment, caller_name, outcome, summary, flags, custom, topics = got[s.session_id]
        assert provider == "offline"
        assert len(re.split(r"(?<=[.!?])\s+", summary)) <= 3 * 2  # at most three picked sentences (+ role labels)
        assert caller_name == s.caller_name, s.scenario
        if s.scenario == "angry_caller":
            assert sentiment == "negative" and outcome == "escalated"
        if s.scenario == "happy_caller":
            assert sentiment == "positive"
        if s.scenario == "short_call":
            assert outcome == "abandoned"
        if s.scenario == "payment_update":
            assert json.loads(flags)["caller_shared_payment_details"] is True
        if s.scenario == "multilingual":
            assert json.loads(custom)["language"] == "spanish"
        if s.scenario == "order_status":
            assert "order_status" in json.loads(topics)
        seen.add(s.scenario)
    assert {"angry_caller", "named_caller", "short_call", "happy_caller"} <= seen


def test_custom_fields_from_a_config_file(env, tmp_path):
    cfg = tmp_path / "enrichment.yaml"
    cfg.write_text("""
prompt_version: custom-1
topics: {orders: [order], other: []}
compliance_checks: []
custom_fields:
  - name: product_line
    type: string
    description: Which product the caller asked about.
    allowed_values: [internet, mobile, tv]
  - name: order_number
    type: integer
    description: The order number the caller gave, if any.
prices: {gpt-5-mini: {input: 1.0, output: 1.0}}
""")
    enrich(env, {"config_file": str(cfg), "max_calls": 2})
    schema = env["stub"].requests[0]["response_format"]["json_schema"]["schema"]
    custom = schema["$defs"]["CustomFields"]["properties"]
    assert custom["product_line"]["anyOf"][0]["enum"] == ["internet", "mobile", "tv"]
    assert custom["order_number"]["anyOf"][0]["type"] == "integer"
    assert "orders" in json.dumps(schema["properties"]["topics"])
    (value,) = rows(env, "select distinct custom_fields from enrichment.session_enrichments")[0]
    assert json.loads(value) == {"product_line": "internet", "order_number": 3}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("call me on +1 415-555-0100", "call me on [PHONE]"),
        ("my number is (020) 7946 0958.", "my number is [PHONE]."),
        ("It's five five five one two three four nine nine zero.", "It's [NUMBER]."),
        ("card 4111 1111 1111 1111 please", "card [CARD] please"),
        ("4111-1111-1111-1111", "[CARD]"),
        ("mail me: jane.doe+x@mail.example.org", "mail me: [EMAIL]"),
        ("order 61093 costs 49.99", "order 61093 costs 49.99"),
        ("see you at 9 on Friday, room 12", "see you at 9 on Friday, room 12"),
    ],
)
def test_redaction(text, expected):
    assert redact(text) == expected


def test_a_new_prompt_version_keeps_old_rows_and_the_comparison_view_shows_both(env, tmp_path):
    from layercode_pipeline.defs.dbt.assets import DBT_EXECUTABLE, DBT_PROJECT_DIR

    n = len(env["batch"].sessions)
    enrich(env, {"prompt_version": "v1"})
    enrich(env, {"prompt_version": "v2"})
    assert rows(env, "select count(*) from enrichment.session_enrichments where error is null")[0][0] == 2 * n
    build = subprocess.run(
        [
            DBT_EXECUTABLE,
            "build",
            "--select",
            "stg_session_enrichments",
            "enrichment_version_comparison",
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target-path",
            str(tmp_path / "target"),
            "--log-path",
            str(tmp_path / "logs"),
            "--vars",
            env["storage"].dbt_vars(),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-3000:]
    pairs = rows(
        env,
        "select current_prompt_version, other_prompt_version, count(*), count(distinct session_id) "
        "from marts.enrichment_version_comparison group by all",
    )
    assert pairs == [("v2", "v1", n, n)]  # the newest version is current; the old one sits beside it
    current = rows(
        env, "select prompt_version, count(*) from staging.stg_session_enrichments where is_latest group by all"
    )
    assert current == [("v2", n)]  # what the marts read


def test_enrichment_checks_fail_on_error_rows_and_gaps(env):
    env["stub"].script("malformed", "malformed")
    result = dg.materialize(
        [session_enrichments],
        resources={"storage": env["storage"], "openai": env["openai"]},
        run_config={"ops": {"session_enrichments": {"config": {"concurrency": 1}}}},
    )
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    errors, coverage = checks["no_enrichment_errors"], checks["enrichment_coverage"]
    assert not errors.passed and errors.severity == dg.AssetCheckSeverity.WARN
    assert errors.metadata["errors"].value == len(errors.metadata["examples"].value) > 0
    assert all("malformed answer" in e for e in errors.metadata["examples"].value)
    assert not coverage.passed and 0 < coverage.metadata["coverage"].value < 1
    # the next run asks again for the failed ones only: both checks pass
    result = dg.materialize([session_enrichments], resources={"storage": env["storage"], "openai": env["openai"]})
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["no_enrichment_errors"].passed and checks["enrichment_coverage"].passed
    assert checks["enrichment_coverage"].metadata["coverage"].value == 1.0
