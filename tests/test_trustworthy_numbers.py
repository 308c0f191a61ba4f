"""Numbers on the platform as it is deployed (contract section 6), built by the real `dbt build`
over sessions landed as the listener lands them: barge-ins unknown where `message` webhooks never
arrive (never zero), messages tied to transcript turns by what was said (a lost, a typed, a
reworded message), REST transcripts in either shape, latency in an unknown unit set aside, dates
that make sense, the platform's recording facts, each agent's backend, and a metadata key
promoted after the sessions were built."""

from __future__ import annotations

import asyncio

import dagster as dg
import duckdb
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from layercode_pipeline.contract.events import rest_record_drift
from layercode_pipeline.defs.backfill.assets import layercode_session_details
from layercode_pipeline.defs.dbt.assets import dbt_resource, layercode_dbt_models
from layercode_pipeline.defs.resources import LayercodeAPIResource, StorageResource
from layercode_pipeline.lib.layercode_client import LayercodeClient
from layercode_pipeline.simulator import SimulatorAPI, generate_batch
from layercode_pipeline.simulator.server import BackgroundServer

from .test_voice_metrics import build_warehouse, envelope, epoch, rows, ts

YEAR_S = 365 * 24 * 3600


def end(
    sid: str,
    agent: str,
    items: list[tuple[str, str, float]],
    *,
    start: float | None = 0,
    latency=None,
    duration_ms: int = 25000,
) -> dict:
    body = {
        "type": "session.end",
        "session_id": sid,
        "agent_id": agent,
        "conversation_id": f"conv_{sid}",
        "duration": duration_ms,
        "transcript": [{"role": r, "text": t, "timestamp": epoch(x)} for r, t, x in items],
    }
    if start is not None:
        body |= {"started_at": ts(start), "ended_at": ts(start + duration_ms / 1000)}
    if latency is not None:
        body["latency"] = latency
    return body


def msg(sid: str, turn: str, text: str, interrupted: bool | None = None, about: str | None = None) -> dict:
    body = {"type": "message", "session_id": sid, "turn_id": turn, "text": text}
    if interrupted is not None:
        ctx = {
            "previous_turn_interrupted": interrupted,
            "words_heard": 2 if interrupted else 9,
            "text_heard": "Sure, can" if interrupted else "all of it",
        }
        if about:
            ctx["assistant_turn_id"] = about
        body["interruption_context"] = ctx
    return body


# s_match: nine turns; the first caller turn's message is lost, a typed message arrives, one
# message is reworded, one names the interrupted reply by turn id, one barge-in fits nothing.
MATCH = [
    ("assistant", "Hello, how can I help you today?", 0.5),  # 1: the welcome (w0)
    ("user", "I would like to check my order status", 3.0),  # 2: its message is lost
    ("assistant", "Sure, can you give me the order number please?", 5.0),  # 3: interrupted
    ("user", "It is four five six seven", 9.0),  # 4: message m4, reworded
    ("assistant", "Thanks, I found it, it ships on Monday.", 11.0),  # 5: interrupted (named: m4)
    ("user", "Can you send me a confirmation email", 16.0),  # 6: message m6
    ("assistant", "Done, anything else?", 18.0),  # 7
    ("user", "No that is all", 21.0),  # 8: message m8
    ("assistant", "Goodbye!", 22.0),
]  # 9
EVENTS = [
    (
        {"type": "session.start", "session_id": "s_match", "turn_id": "w0", "custom_metadata": {"tenant_id": "acme"}},
        0,
        "ag_w",
    ),
    # old code: the 1st message is tied to the 1st caller turn, and marks the welcome interrupted
    (msg("s_match", "m4", "um it is four five six seven", True), 9.1, "ag_w"),
    (msg("s_match", "m6", "can you send me a confirmation email", True, about="m4"), 16.1, "ag_w"),
    (msg("s_match", "t1", "my email is jo@example.com"), 17.0, "ag_w"),  # typed in the web client
    (msg("s_match", "m8", "no that's all", False), 21.1, "ag_w"),
    (msg("s_match", "mx", "zzz qqq xxx", True, about="nope"), 21.5, "ag_w"),  # placed nowhere: counted
    (end("s_match", "ag_w", MATCH), 25, "ag_w"),
    # a session webhook only (session.start/end/update): barge-ins unobservable
    ({"type": "session.start", "session_id": "s_swh", "turn_id": "w1"}, 100, "ag_w"),
    (
        end(
            "s_swh",
            "ag_w",
            [("assistant", "Hi!", 100.5), ("user", "I need a refund", 103), ("assistant", "Sure", 104)],
            start=100,
            duration_ms=5000,
        ),
        105,
        "ag_w",
    ),
    # an agent whose unit for session.end latency is not learned: 0.85 is set aside
    (end("s_lat", "ag_new", [("assistant", "Hi", 200.5)], start=200, latency=0.85, duration_ms=2000), 202, "ag_new"),
    # no started_at: dated by its first transcript timestamp (before the receive time)
    (end("s_nostart", "ag_w", [("assistant", "Hi", 300), ("user", "Hello", 302)], start=None), 360, "ag_w"),
    # the docs' own example: transcript timestamps a year before started_at
    (
        end(
            "s_yearoff",
            "ag_w",
            [("assistant", "Hi", 400.5 - YEAR_S), ("user", "Hey", 402 - YEAR_S), ("assistant", "Yes?", 403 - YEAR_S)],
            start=400,
            duration_ms=4000,
        ),
        404,
        "ag_w",
    ),
    (
        {
            "type": "session.update",
            "session_id": "s_swh",
            "recording_status": "failed",
            "error_message": "recording processing failed",
        },
        106,
        "ag_w",
    ),
    (
        {
            "type": "session.update",
            "session_id": "s_yearoff",
            "recording_status": "completed",
            "recording_duration": 12.5,
            "recording_url": "https://api.layercode.com/v1/x",
        },
        405,
        "ag_w",
    ),
]
# known only through REST, its transcript in the {role, text, timestamp} shape
REST_UTTERANCES = {
    "session_id": "s_rest",
    "agent_id": "ag_w",
    "started_at": ts(500),
    "ended_at": ts(505),
    "duration_ms": 5000,
    "latency_ms": 700,
    "transcript": [
        {"role": "assistant", "text": "Hi there", "timestamp": ts(500.5)},
        {"role": "user", "text": "What are your hours", "timestamp": ts(502)},
        {"role": "assistant", "text": "Nine to five", "timestamp": ts(503)},
    ],
}


NUMBERS_AGENTS = [
    {"id": "ag_w", "name": "Web", "config": {"plugins": [{"use": "stt.deepgram"}, {"use": "agent.webhook"}]}},
    {"id": "ag_new", "name": "Hosted", "config": {"plugins": [{"use": "agent.llm"}]}},
    {"id": "ag_legacy", "name": "Legacy", "config": {"endpoint": "https://x.example/hook"}},
    {"id": "ag_bare", "name": "Listed only"},
]


def numbers_events() -> list[bytes]:
    return [envelope(b, at, a) for b, at, a in EVENTS]


@pytest.fixture(scope="module")
def marts(shared_marts):
    """The session's one shared build (tests/conftest.py): these sessions and those of
    test_voice_metrics, whose agents differ, so each module's figures are its own."""
    con = duckdb.connect(str(shared_marts.warehouse.path), read_only=True)
    yield con
    con.close()


def sessions(con) -> dict[str, dict]:
    return {r["session_id"]: r for r in rows(con, "select * from marts.fct_sessions")}


def test_barge_ins_are_null_where_no_message_webhook_arrives(marts):
    con = marts
    s = sessions(con)
    for sid in ("s_swh", "s_rest", "s_lat"):  # session webhook only, REST only, no caller turn
        assert (s[sid]["barge_ins_observable"], s[sid]["interruptions"], s[sid]["unplaced_interruptions"]) == (
            False,
            None,
            None,
        ), sid
    interrupted = {
        r[0]
        for r in con.execute(
            "select distinct interrupted from marts.fct_turns where role = 'assistant' and session_id = 's_swh'"
        ).fetchall()
    }
    assert interrupted == {None}
    assert s["s_match"]["barge_ins_observable"] is True


def test_barge_ins_are_placed_by_what_was_said_not_by_position(marts):
    con = marts
    turns = {r["position"]: r for r in rows(con, "select * from marts.fct_turns where session_id = 's_match'")}
    assert [p for p, t in sorted(turns.items()) if t["interrupted"]] == [3, 5]
    assert turns[3]["words_heard"] == 2 and turns[1]["interrupted"] is False  # never the welcome
    s = sessions(con)["s_match"]
    assert (s["interruptions"], s["unplaced_interruptions"]) == (3, 1)  # the one that fits nothing is counted
    warned = con.execute("select count(*) from marts.fct_sessions where unplaced_interruptions > 0").fetchone()[0]
    assert warned == 1


def test_rates_leave_unobservable_sessions_out(marts):
    con = marts
    day = rows(con, "select * from marts.agg_daily_call_metrics where agent_id = 'ag_w'")
    observed = [r for r in day if r["sessions_barge_ins_observable"]]
    [a] = observed
    # s_match's five assistant turns are the only ones observed; two were interrupted
    assert (a["assistant_turns_observed"], a["interrupted_turns"]) == (5, 2)
    assert a["interruption_rate"] == pytest.approx(0.4)
    assert a["assistant_turns"] > a["assistant_turns_observed"]
    hosted = rows(con, "select * from marts.agg_daily_call_metrics where agent_id = 'ag_new'")
    assert [(r["interrupted_turns"], r["interruption_rate"], r["interruptions"]) for r in hosted] == [
        (None, None, None)
    ]


def test_rest_transcripts_in_the_role_text_shape_are_read(marts):
    con = marts
    got = rows(
        con, "select role, text, transcript_source from marts.fct_turns where session_id = 's_rest' order by position"
    )
    assert [(r["role"], r["text"]) for r in got] == [
        ("assistant", "Hi there"),
        ("user", "What are your hours"),
        ("assistant", "Nine to five"),
    ]
    assert {r["transcript_source"] for r in got} == {"rest"}


def test_latency_under_10_in_an_unknown_unit_is_set_aside(marts):
    con = marts
    s = sessions(con)["s_lat"]
    assert (s["latency_ms"], s["latency_source"], s["webhook_latency_reported"], s["webhook_latency_unit_unknown"]) == (
        None,
        None,
        0.85,
        True,
    )
    assert sessions(con)["s_match"]["webhook_latency_unit_unknown"] is None  # no latency sent at all


def test_dates_make_sense(marts):
    con = marts
    s = sessions(con)
    assert s["s_nostart"]["started_at"] is None
    assert s["s_nostart"]["session_date_at"].timestamp() == pytest.approx(epoch(300))  # not its receive time
    year_off = s["s_yearoff"]
    assert year_off["first_response_ms"] is None and year_off["turns_dated_before_start"] == 3
    flags = {
        r[0]
        for r in con.execute(
            "select spoken_before_start from marts.fct_turns where session_id = 's_yearoff'"
        ).fetchall()
    }
    assert flags == {True}
    assert s["s_match"]["first_response_ms"] == 500 and s["s_match"]["turns_dated_before_start"] == 0


def test_platform_facts_reach_the_marts(marts):
    con = marts
    s = sessions(con)
    assert (s["s_swh"]["recording_error"], s["s_swh"]["recording_state"]) == ("recording processing failed", "failed")
    assert s["s_yearoff"]["reported_recording_duration_s"] == 12.5 and s["s_yearoff"]["recording_error"] is None
    backends = dict(
        con.execute("select agent_id, backend from marts.dim_agents where agent_id not in ('ag_a', 'ag_b')").fetchall()
    )
    assert backends == {"ag_w": "agent.webhook", "ag_new": "agent.llm", "ag_legacy": "agent.webhook", "ag_bare": None}


@pytest.mark.slow  # a build of its own, then a second one
def test_a_metadata_key_promoted_later_fills_the_sessions_already_built(tmp_path):
    data = tmp_path / "data"
    build_warehouse(data, [numbers_events()], [REST_UTTERANCES], NUMBERS_AGENTS, [])
    promoted = StorageResource(data_dir=str(data), promoted_metadata_keys="tenant_id")
    assert dg.materialize([layercode_dbt_models], resources={"storage": promoted, "dbt": dbt_resource()}).success
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    try:
        got = dict(con.execute("select session_id, metadata_tenant_id from marts.fct_sessions").fetchall())
    finally:
        con.close()
    assert got["s_match"] == "acme" and len(got) == 6


# --- REST shapes: the agents list, and the session record's drift check ----------------------------


def test_the_agents_list_is_read_as_an_array_or_an_object_with_id_or_agent_id():
    batch = generate_batch(3, seed=5)
    for shape in ("object", "array"):
        api = SimulatorAPI(api_key="sk", agents_list_shape=shape)
        api.register(batch)
        with api.serve() as server:

            async def listed():
                async with LayercodeClient("sk", server.url + "/v1") as client:
                    return await client.list_agents(), await client.get_agent(batch.agents[-1].agent_id)

            agents, detail = asyncio.run(listed())
        assert [a["id"] for a in agents] == [a.agent_id for a in batch.agents], shape
        assert detail["id"] == batch.agents[-1].agent_id and detail["config"]["plugins"]


def test_rest_records_are_checked_for_drift(tmp_path):
    """A transcript in the documented shape or the {role, text} shape is readable; any other
    shape fails the backfill's no_rest_shape_drift check instead of silently giving 0 turns."""
    assert rest_record_drift(REST_UTTERANCES) == []
    odd = {
        **REST_UTTERANCES,
        "session_id": "s_odd",
        "transcript": [{"speaker": "caller", "words": "hi"}],
        "sentiment": "happy",
    }
    assert {(d.path, d.kind) for d in rest_record_drift(odd)} >= {
        ("transcript[]", "unreadable_transcript_entry"),
        ("sentiment", "unknown_field"),
    }

    async def record(request: Request) -> Response:
        sid = request.path_params["sid"]
        return JSONResponse({**REST_UTTERANCES, "session_id": sid} if sid == "s_rest" else {**odd, "session_id": sid})

    api = BackgroundServer(Starlette(routes=[Route("/v1/agents/{aid}/sessions/{sid}", record)])).start()
    storage = StorageResource(data_dir=str(tmp_path / "data"))
    try:
        result = dg.materialize(
            [layercode_session_details],
            resources={
                "storage": storage,
                "layercode_api": LayercodeAPIResource(base_url=api.url + "/v1", api_key="sk"),
            },
            run_config={
                "ops": {
                    "layercode_session_details": {
                        "config": {"agent_id": "ag_w", "session_ids": ["s_rest", "s_odd"], "automatic": False}
                    }
                }
            },
        )
    finally:
        api.stop()
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    shape = checks["no_rest_shape_drift"]
    assert not shape.passed and shape.metadata["records_with_drift"].value == 1
    kinds = {(d["path"], d["kind"]) for d in shape.metadata["drift"].value}
    assert ("transcript[]", "unreadable_transcript_entry") in kinds
    assert all(d["example_sessions"] == ["s_odd"] for d in shape.metadata["drift"].value)
