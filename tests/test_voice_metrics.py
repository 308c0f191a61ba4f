"""Voice metrics to the unit: three sessions with known per-turn timestamps, REST per-exchange
latencies, a barge-in and speech seconds, landed as the listener lands them, ingested, and
built by the real `dbt build` (the Dagster dbt asset). Every figure below is worked out by hand
from the inputs, in the comments."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import dagster as dg
import duckdb
import pytest

from layercode_pipeline.contract.landing import build_envelope
from layercode_pipeline.defs.dbt.assets import dbt_resource, layercode_dbt_models
from layercode_pipeline.defs.ingest.assets import raw_layercode_events
from layercode_pipeline.defs.resources import StorageResource
from layercode_pipeline.lib.agents import store_agents
from layercode_pipeline.lib.backfill import DetailOutcome, DetailRequest, store_details
from layercode_pipeline.lib.enrichment.store import COLUMNS, write_enrichments
from layercode_pipeline.lib.layercode_client import SessionFetch

DAY = "2026-11-20"


def ts(seconds: float, day: str = DAY, hour: int = 10) -> str:
    base = datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00")
    return datetime.fromtimestamp(base.timestamp() + seconds, UTC).isoformat().replace("+00:00", "Z")


def epoch(seconds: float, day: str = DAY, hour: int = 10) -> float:
    return datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00").timestamp() + seconds


def message(
    sid: str, turn: str, text: str, interrupted: bool, words_heard: int | None = None, heard: str | None = None
):
    context = {"previous_turn_interrupted": interrupted}
    if interrupted:
        context |= {"words_heard": words_heard, "text_heard": heard, "assistant_turn_id": f"{turn}-prev"}
    return {
        "type": "message",
        "session_id": sid,
        "conversation_id": f"conv_{sid}",
        "turn_id": turn,
        "text": text,
        "interruption_context": context,
    }


def session_end(
    sid: str,
    agent: str,
    items: list[tuple[str, str, float]],
    talk: tuple[float, float],
    duration_ms: int,
    start: float = 0,
):
    return {
        "type": "session.end",
        "session_id": sid,
        "agent_id": agent,
        "conversation_id": f"conv_{sid}",
        "started_at": ts(start),
        "ended_at": ts(start + duration_ms / 1000),
        "duration": duration_ms,
        "latency": 0.5,
        "transcription_duration_seconds": talk[0],
        "tts_duration_seconds": talk[1],
        "transcript": [{"role": r, "text": t, "timestamp": epoch(s)} for r, t, s in items],
    }


# Session A (ag_a): the greeting at 0.5 s, three replies; the caller barges into the first reply.
A_ITEMS = [
    ("assistant", "Hello, how can I help?", 0.5),
    ("user", "I need help with my order please", 3.0),
    ("assistant", "Sure, what is the order number?", 4.2),  # reply 1: gap 1200 ms; interrupted
    ("user", "It is one two three", 8.0),
    ("assistant", "Thanks, it ships tomorrow.", 8.9),  # reply 2: gap 900 ms
    ("user", "Great thanks", 15.0),  # 6100 ms after the reply: longest gap
    ("assistant", "Goodbye!", 15.6),
]  # reply 3: gap 600 ms
# Its REST record: a greeting-only exchange (no caller message: not a reply), then three
# exchanges whose latencies are the replies' latencies, in order.
A_REST = {
    "session_id": "sess_a",
    "agent_id": "ag_a",
    "conversation_id": "conv_sess_a",
    "started_at": ts(0),
    "ended_at": ts(16),
    "duration_ms": 16000,
    "latency_ms": 600,
    "transcription_duration_seconds": 6,
    "tts_duration_seconds": 4,
    "transcript": [
        {"assistant_message": "Hello, how can I help?", "timestamp": ts(0.5)},
        {
            "user_message": "I need help with my order please",
            "assistant_message": "Sure, what is the order number?",
            "latency_ms": 800,
            "timestamp": ts(3.0),
        },
        {
            "user_message": "It is one two three",
            "assistant_message": "Thanks, it ships tomorrow.",
            "latency_ms": 650,
            "timestamp": ts(8.0),
        },
        {"user_message": "Great thanks", "assistant_message": "Goodbye!", "latency_ms": 400, "timestamp": ts(15.0)},
    ],
}
# Session B (ag_a, same hour): webhooks only, so no turn latency (never guessed).
B_ITEMS = [("assistant", "Hi there!", 0.0), ("user", "What time do you open", 2.0), ("assistant", "At nine.", 3.0)]
# Session C (ag_b, the next day at 09:00): known only from its REST record (session.end lost).
C_REST = {
    "session_id": "sess_c",
    "agent_id": "ag_b",
    "conversation_id": "conv_sess_c",
    "started_at": ts(0, "2026-11-21", 9),
    "ended_at": ts(5, "2026-11-21", 9),
    "duration_ms": 5000,
    "latency_ms": 1000,
    "transcription_duration_seconds": 1,
    "tts_duration_seconds": 3,
    "transcript": [
        {
            "user_message": "hi",
            "assistant_message": "hello, how can I help",
            "latency_ms": 1000,
            "timestamp": ts(1, "2026-11-21", 9),
        }
    ],
}


def envelope(body: dict, at: float, agent: str) -> bytes:
    raw = json.dumps(body).encode()
    return build_envelope(
        received_at=datetime.fromtimestamp(epoch(at), UTC),
        agent_id=agent,
        event_type=body["type"],
        content_sha256=hashlib.sha256(raw).hexdigest(),
        body=raw,
        headers={},
        writer_id="wtest",
    )


def enrichment(sid: str, agent: str, outcome: str, cost: float) -> dict:
    row = dict.fromkeys(COLUMNS)
    return row | {
        "session_id": sid,
        "agent_id": agent,
        "cache_key": f"k-{sid}",
        "transcript_sha256": "x",
        "provider": "offline",
        "model": "offline-rules-v2",
        "prompt_version": "v1",
        "schema_version": "s",
        "sentiment": "neutral",
        "outcome": outcome,
        "quality_score": 4,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": cost,
        "latency_ms": 1.0,
    }


def voice_events() -> list[bytes]:
    """Sessions A and B as the listener lands them (C is known only through REST)."""
    return [
        envelope(
            {"type": "session.start", "session_id": "sess_a", "conversation_id": "conv_sess_a", "turn_id": "a0"},
            0,
            "ag_a",
        ),
        envelope(message("sess_a", "a1", "I need help with my order please", False), 3.0, "ag_a"),
        envelope(message("sess_a", "a2", "It is one two three", True, 3, "Sure, what is"), 8.0, "ag_a"),
        envelope(message("sess_a", "a3", "Great thanks", False), 15.0, "ag_a"),
        # A: 6 s of caller speech, 4 s of agent speech -> talk share 0.6
        envelope(session_end("sess_a", "ag_a", A_ITEMS, (6, 4), 16000), 16.0, "ag_a"),
        envelope(
            {"type": "session.start", "session_id": "sess_b", "conversation_id": "conv_sess_b", "turn_id": "b0"},
            100,
            "ag_a",
        ),
        envelope(message("sess_b", "b1", "What time do you open", False), 102, "ag_a"),
        # B: 2 s and 2 s -> talk share 0.5
        envelope(
            session_end("sess_b", "ag_a", [(r, t, 100 + s) for r, t, s in B_ITEMS], (2, 2), 4000, start=100),
            104,
            "ag_a",
        ),
    ]


VOICE_REST = [A_REST, C_REST]
VOICE_AGENTS = [{"id": "ag_a", "name": "Support Bot"}, {"id": "ag_b", "name": "Sales Bot"}]
VOICE_ENRICHMENTS = [
    enrichment("sess_a", "ag_a", "escalated", 0.01),
    enrichment("sess_b", "ag_a", "resolved", 0.02),
    enrichment("sess_c", "ag_b", "resolved", 0.0),
]


def build_warehouse(
    data, segments: list[list[bytes]], rest: list[dict], agents: list[dict], enrichments: list[dict], **storage_options
) -> StorageResource:
    """Segments landed as the listener lands them, ingested, REST records, agents and
    enrichments stored, and `dbt build` run."""
    part = data / "landing" / f"dt={DAY}" / "hour=10"
    part.mkdir(parents=True, exist_ok=True)
    for i, lines in enumerate(segments, start=1):
        (part / f"wtest-{i:06d}.jsonl").write_bytes(b"".join(lines))
    storage = StorageResource(data_dir=str(data), **storage_options)
    assert dg.materialize([raw_layercode_events], resources={"storage": storage}).success
    with storage.connect() as con:
        store_details(
            con,
            [
                DetailOutcome(
                    DetailRequest(r["agent_id"], r["session_id"], "requested"),
                    SessionFetch(r["agent_id"], r["session_id"], 200, r),
                )
                for r in rest
            ],
        )
        store_agents(con, agents)
        write_enrichments(con, enrichments)
    result = dg.materialize([layercode_dbt_models], resources={"storage": storage, "dbt": dbt_resource()})
    assert result.success
    return storage


def build_voice_warehouse(data) -> StorageResource:
    """The three sessions alone (the dashboard's warehouse: its figures count these)."""
    return build_warehouse(data, [voice_events()], VOICE_REST, VOICE_AGENTS, VOICE_ENRICHMENTS)


@pytest.fixture(scope="module")
def marts(shared_marts):
    """The session's one shared build (tests/conftest.py): these sessions and those of
    test_trustworthy_numbers, whose agents differ, so each module's figures are its own."""
    con = duckdb.connect(str(shared_marts.warehouse.path), read_only=True)
    yield con
    con.close()


def rows(con, sql: str) -> list[dict]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def test_turns(marts):
    turns = {(r["session_id"], r["position"]): r for r in rows(marts, "select * from marts.fct_turns")}
    a = [turns[("sess_a", p)] for p in range(1, 8)]
    assert [t["role"] for t in a] == ["assistant", "user"] * 3 + ["assistant"]
    # the REST exchanges' latencies land on the replies in order; the greeting has none
    assert [t["latency_ms"] for t in a if t["role"] == "assistant"] == [None, 800, 650, 400]
    assert [t["response_gap_ms"] for t in a if t["role"] == "assistant"] == [None, 1200, 900, 600]
    assert [t["interrupted"] for t in a] == [False, None, True, None, False, None, False]
    assert (a[2]["words_heard"], a[2]["text_heard"]) == (3, "Sure, what is")
    assert a[4]["words_heard"] is None
    assert [t["gap_before_ms"] for t in a] == [None, 2500, 1200, 3800, 900, 6100, 600]
    assert a[0]["offset_ms"] == 500
    # webhooks only: the gap is known, the latency is not guessed
    assert (turns[("sess_b", 3)]["response_gap_ms"], turns[("sess_b", 3)]["latency_ms"]) == (1000, None)
    # REST-only: the exchange splits into a caller turn and its reply, spoken latency_ms later
    c = [turns[("sess_c", p)] for p in (1, 2)]
    assert [(t["role"], t["latency_ms"], t["response_gap_ms"]) for t in c] == [
        ("user", None, None),
        ("assistant", 1000, 1000),
    ]


def test_sessions(marts):
    s = {r["session_id"]: r for r in rows(marts, "select * from marts.fct_sessions")}
    a, b, c = s["sess_a"], s["sess_b"], s["sess_c"]
    assert a["interruptions"] == 1 and b["interruptions"] == 0
    assert a["caller_talk_share"] == pytest.approx(0.6) and b["caller_talk_share"] == pytest.approx(0.5)
    assert c["caller_talk_share"] == pytest.approx(0.25)
    assert (a["first_response_ms"], b["first_response_ms"], c["first_response_ms"]) == (500, 0, 2000)
    assert (a["longest_gap_ms"], b["longest_gap_ms"], c["longest_gap_ms"]) == (6100, 2000, 1000)
    # the interrupted reply (800 ms) is left out: p50 of [650, 400] = 525, p95 = 400 + 0.95 * 250
    assert a["turn_latency_ms_p50"] == pytest.approx(525) and a["turn_latency_ms_p95"] == pytest.approx(637.5)
    assert b["turn_latency_ms_p50"] is None and c["turn_latency_ms_p50"] == pytest.approx(1000)
    assert (a["agent_name"], c["agent_name"]) == ("Support Bot", "Sales Bot")


@pytest.mark.parametrize(
    "table,period", [("agg_daily_call_metrics", "call_date"), ("agg_hourly_call_metrics", "call_hour")]
)
def test_daily_and_hourly(marts, table, period):
    got = {r["agent_id"]: r for r in rows(marts, f"select * from marts.{table} where agent_id in ('ag_a', 'ag_b')")}
    assert set(got) == {"ag_a", "ag_b"}
    a = got["ag_a"]
    assert str(a[period]).startswith("2026-11-20") and str(got["ag_b"][period]).startswith("2026-11-21")
    assert (a["agent_name"], a["calls"], a["sessions"]) == ("Support Bot", 2, 2)
    # turns, not sessions: A's replies 650 and 400 (800 interrupted), B's none
    assert a["turns_with_latency"] == 2
    assert a["turn_latency_ms_p50"] == pytest.approx(525)
    assert a["turn_latency_ms_p95"] == pytest.approx(637.5)
    assert a["turn_latency_ms_p99"] == pytest.approx(647.5)
    # 1 interrupted of 6 assistant turns (A: 4, B: 2)
    assert (a["assistant_turns"], a["interrupted_turns"]) == (6, 1)
    assert a["interruption_rate"] == pytest.approx(1 / 6)
    assert a["caller_talk_share_avg"] == pytest.approx(0.55)
    assert a["speech_minutes"] == pytest.approx((6 + 4 + 2 + 2) / 60)
    assert (a["sessions_analysed"], a["escalation_rate"], a["containment_rate"]) == (2, 0.5, 0.5)
    assert a["estimated_cost_usd"] == pytest.approx(0.03)
    b = got["ag_b"]
    assert (b["turn_latency_ms_p99"], b["containment_rate"], b["escalation_rate"]) == (1000, 1.0, 0.0)
    assert b["speech_minutes"] == pytest.approx(4 / 60)


def test_dbt_docs_generate_and_every_column_is_described(marts, tmp_path):
    """`dbt docs generate` works, and every column the warehouse has in a staging, intermediate
    or mart model carries a description (the glossary's docs blocks rendered into it)."""
    import shutil
    import subprocess

    from layercode_pipeline.defs.dbt.assets import DBT_EXECUTABLE, DBT_PROJECT_DIR

    (source,) = marts.execute("select path from duckdb_databases() where database_name = current_database()").fetchone()
    copy = tmp_path / "warehouse.duckdb"  # the fixture holds the warehouse open read-only
    shutil.copy(source, copy)
    target = tmp_path / "docs"
    generated = subprocess.run(
        [
            DBT_EXECUTABLE,
            "docs",
            "generate",
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target-path",
            str(target),
            "--log-path",
            str(tmp_path / "logs"),
            "--vars",
            json.dumps({"warehouse_path": str(copy)}),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert generated.returncode == 0, generated.stdout[-3000:]
    catalog = json.loads((target / "catalog.json").read_text())["nodes"]
    manifest = json.loads((target / "manifest.json").read_text())["nodes"]
    undescribed = []
    for uid, node in catalog.items():
        if node["metadata"]["schema"] not in ("staging", "intermediate", "marts"):
            continue
        documented = manifest[uid]["columns"]
        assert manifest[uid]["description"], uid
        for column in node["columns"]:
            if not documented.get(column, {}).get("description"):
                undescribed.append(f"{uid}.{column}")
    assert undescribed == []
    # the glossary's definitions reach the columns that cite them
    turn = manifest["model.layercode_analytics.fct_turns"]["columns"]
    assert "never estimated from timestamps" in turn["latency_ms"]["description"]
    assert len(catalog) >= 20
