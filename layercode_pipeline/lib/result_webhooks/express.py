"""`call.analyzed` straight from the landing: the express result path.

A call's message must not wait for the warehouse: DuckDB has one writer, and under steady
traffic the run in flight holds it for its dbt build, so a message built from the warehouse
waited for that build and then for a run of its own (issue 26). This path reads what the
listener landed (sealed segments on the local disk), and for each new `session.end` with a
transcript:

* collects the session's other events from the segments since it started (duplicates
  collapse on the ingest's own event identity, `contract.events.event_key`);
* states the session's facts as `messages.FACTS_SQL` states them from the staging views,
  from the same events (what needs the REST record or a kept recording is not known yet, as
  it is not for the warehouse path at that moment);
* analyses the transcript with the run's provider, settings and cache key, keeps the answer
  in the `AnswerCache` (the next enrichment run writes it to the warehouse instead of asking
  again), and records the message in the outbox. Its id is the warehouse path's id for the
  same analysis, so the run that follows adds nothing, and a re-analysis is still a new one.

A session whose events may still sit in a segment a writer has not sealed (one opened before
its `session.end` arrived) waits for the next round. A session this path cannot state (no
transcript, a provider error, its `session.start` not in the landing any more) is left to the
warehouse path, which sends it after the run's enrichment, as before.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from layercode_pipeline.config import ResultEndpoint
from layercode_pipeline.contract.events import MESSAGE, SESSION_END, SESSION_START, SESSION_UPDATE, event_key
from layercode_pipeline.contract.landing import OPEN_SUFFIX, SEALED_SUFFIX
from layercode_pipeline.landing.segments import partition_dirs
from layercode_pipeline.lib.enrichment.analysis import EnrichmentSettings
from layercode_pipeline.lib.enrichment.answer_cache import AnswerCache
from layercode_pipeline.lib.enrichment.interface import Analysis, Provider
from layercode_pipeline.lib.enrichment.redact import redact
from layercode_pipeline.lib.enrichment.run import SessionTranscript, cache_key, enrichment_row
from layercode_pipeline.lib.result_webhooks.messages import CALL_ANALYZED, Message, analysis_object
from layercode_pipeline.lib.result_webhooks.outbox import Outbox
from layercode_pipeline.lib.transcripts import render, transcript_sha256, turns_from_session_end

MARK = "express_sealed_since_ns"
# how far before a session's start its events are looked for (clock skew between the
# platform's started_at and the listener's receive times)
START_SLACK = timedelta(minutes=5)
# a session.end with no readable started_at: its events are looked for this far back
DEFAULT_LOOKBACK = timedelta(hours=2)


@dataclass
class ExpressStats:
    seen: int = 0  # session.end events read
    sent: int = 0  # messages recorded in the outbox
    deferred: int = 0  # waiting for a writer's open segment
    left: int = 0  # left to the warehouse path (no transcript, no session.start, provider error)
    erased: int = 0  # of an erased session, conversation or number: never sent
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"express: {self.seen} session.end read, {self.sent} call.analyzed recorded, "
            f"{self.deferred} waiting for an open segment, {self.left} left to the warehouse path"
            + (f", {self.erased} of erased callers dropped" if self.erased else "")
        )


@dataclass(frozen=True)
class Landed:
    """One landed envelope, decoded."""

    received_at: datetime
    agent_id: str
    event_type: str
    key: str
    body: dict[str, Any]


def _decode(line: bytes) -> Landed | None:
    try:
        env = orjson.loads(line)
        body = orjson.loads(env["body"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None  # the ingest records it as a reject
    if env.get("error") is not None or not isinstance(body, dict) or not body.get("session_id"):
        return None  # kept by the listener as invalid: not in the staging views either
    received_at = _parse_time(env.get("received_at"))
    if received_at is None:
        return None
    return Landed(
        received_at=received_at,
        agent_id=env["agent_id"],
        event_type=env["event_type"],
        key=event_key(env["agent_id"], env["event_type"], env["content_sha256"], body),
        body=body,
    )


def _recent_partitions(landing: Path, since: datetime, extra_hours: int = 1) -> list[Path]:
    """The partitions (by receive hour) that can hold what was written since `since` (a
    segment sealed now may sit in the previous hour's partition: `extra_hours`)."""
    floor = (since.astimezone(UTC) - timedelta(hours=extra_hours)).strftime("dt=%Y-%m-%d/hour=%H")
    return [p for p in partition_dirs(landing) if f"{p.parent.name}/{p.name}" >= floor]


def _segments(partitions: list[Path], suffix: str) -> Iterator[tuple[Path, os.stat_result]]:
    for part in partitions:
        try:
            entries = list(os.scandir(part))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.endswith(suffix):
                try:
                    yield Path(entry.path), entry.stat()
                except FileNotFoundError:
                    continue


def _lines(path: Path, needle: bytes | None = None) -> Iterator[bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    for line in data.splitlines():
        if line and (needle is None or needle in line):
            yield line


def _first_received(path: Path) -> datetime | None:
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
        return _parse_time(orjson.loads(first)["received_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _measure(value: Any, upper: float) -> float | None:
    """The dbt macro `measure`: a number in [0, upper], else null."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number <= upper else None


def _parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time, in UTC; one without an offset is taken as UTC (as the staging views
    take it), never compared naive with an aware one."""
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _timestamp(value: Any) -> str | None:
    parsed = _parse_time(value)
    return parsed.isoformat() if parsed else None


def _metadata(body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """(0 for custom_metadata, 1 for metadata, the object), as stg_webhook_events reads it."""
    for rank, name in enumerate(("custom_metadata", "metadata")):
        if isinstance(body.get(name), dict):
            return rank, body[name]
    return None


def session_facts(end: Landed, events: list[Landed], agent_names: dict[str, str]) -> dict[str, Any]:
    """The facts `messages.FACTS_SQL` states for a session, from its landed events (no REST
    record and no kept recording yet)."""
    body = end.body
    ordered = sorted(events, key=lambda e: e.received_at)
    messages = [e for e in ordered if e.event_type == MESSAGE]
    interrupted = sum(
        1
        for e in messages
        if str((e.body.get("interruption_context") or {}).get("previous_turn_interrupted")).lower() == "true"
    )
    updates = [e for e in ordered if e.event_type == SESSION_UPDATE]
    update_status = updates[-1].body.get("recording_status") if updates else None
    setting = body.get("recording_status")
    if update_status in ("completed", "failed"):
        recording_state = update_status
    elif setting == "disabled":
        recording_state = "disabled"
    elif setting == "enabled":
        recording_state = "in_progress"
    else:
        recording_state = "unknown"
    found = [(m[0], e.received_at, m[1]) for e in ordered if (m := _metadata(e.body)) is not None]
    metadata = min(found, key=lambda f: (f[0], f[1]))[2] if found else None
    transcript = body.get("transcript")
    agent_id = end.agent_id
    return {
        "session_id": body["session_id"],
        "agent_id": agent_id,
        "agent_name": agent_names.get(agent_id),
        "conversation_id": body.get("conversation_id")
        or min((e.body["conversation_id"] for e in ordered if e.body.get("conversation_id")), default=None),
        "started_at": _timestamp(body.get("started_at")),
        "ended_at": _timestamp(body.get("ended_at")),
        "duration_ms": _round(_measure(body.get("duration"), 604800000)),
        "latency_ms": None,  # the REST record's (documented milliseconds): fetched later
        "turns": len(transcript) if isinstance(transcript, list) else None,
        "barge_ins_observable": bool(messages),
        "interruptions": interrupted if messages else None,
        "turn_latency_ms_p50": None,  # from the REST record's exchanges
        "turn_latency_ms_p95": None,
        "recording_state": recording_state,
        "metadata": metadata,
        "from_phone_number": body.get("from_phone_number"),
        "to_phone_number": body.get("to_phone_number"),
    }


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def express_round(
    landing: Path,
    outbox: Outbox,
    endpoints: list[ResultEndpoint],
    make_provider: Callable[[], Provider],
    settings: EnrichmentSettings,
    schema_version: str,
    answers: AnswerCache,
    *,
    agent_names: Callable[[], dict[str, str]] = dict,
    erased: Callable[[dict[str, Any]], bool] = lambda body: False,
    redact_pii: bool = True,
    max_sessions: int = 200,
    concurrency: int = 8,
    now: datetime | None = None,
) -> ExpressStats:
    """One round: every session.end sealed since the outbox's mark becomes a recorded
    `call.analyzed` (or waits, or is left to the warehouse path). `erased` is true for the body
    of an erased session, conversation or number (the erasure ledger's tombstones): such a
    call is never analysed nor sent, landed before the erasure or after it.

    A round takes whole segments, at least one, up to `max_sessions` session.ends past the
    first: the mark moves past every segment it took, so a segment of any size is done in one
    round (a mark set inside a segment of more than `max_sessions` made every round take the
    same ones again)."""
    stats = ExpressStats()
    now = now or datetime.now(UTC)
    mark = outbox.mark(MARK)
    if mark is None:  # the first round: from now on (the warehouse path has sent the past)
        outbox.set_mark(MARK, str(int(now.timestamp() * 1e9)))
        return stats
    since_ns = int(mark)
    partitions = _recent_partitions(landing, datetime.fromtimestamp(since_ns / 1e9, UTC))
    sealed = sorted(
        ((st.st_ctime_ns, path) for path, st in _segments(partitions, SEALED_SUFFIX) if st.st_ctime_ns > since_ns),
        key=lambda t: t[0],
    )
    ends: list[tuple[int, Landed]] = []
    for ctime, path in sealed:
        for line in _lines(path, SESSION_END.encode()):
            landed = _decode(line)
            if landed is not None and landed.event_type == SESSION_END:
                ends.append((ctime, landed))
    stats.seen = len(ends)
    if not ends:
        if sealed:
            outbox.set_mark(MARK, str(sealed[-1][0]))
        return stats
    # a writer's open segment may hold a session's earlier events: those sessions wait for it.
    # Handling a session.end again is harmless (the same answer from the cache, the same
    # message id), so the mark may stop before a segment whose session.ends were half handled.
    open_since = [t for path, _ in _segments(partitions, OPEN_SUFFIX) if (t := _first_received(path)) is not None]
    oldest_open = min(open_since, default=None)
    todo: list[tuple[Landed, list[Landed]]] = []
    new_mark = sealed[-1][0]
    first_ctime = ends[0][0]
    for i, (ctime, end) in enumerate(ends):
        if i >= max_sessions and ctime != first_ctime and ctime != ends[i - 1][0]:
            new_mark = ends[i - 1][0]  # every segment up to the previous one was taken whole
            break
        if oldest_open is not None and oldest_open <= end.received_at:
            stats.deferred = len(ends) - i
            new_mark = ctime - 1
            break
        if erased(end.body):
            stats.erased += 1
            continue
        todo.append((end, []))
    events = _session_events(landing, [end for end, _ in todo])
    ready = []
    for end, _ in todo:
        sid = end.body["session_id"]
        if sid not in events or not isinstance(end.body.get("transcript"), list):
            stats.left += 1
            continue
        if any(erased(e.body) for e in events[sid]):  # its number may be on another event only
            stats.erased += 1
            continue
        ready.append((end, events[sid]))
    todo = ready
    if todo:
        messages = asyncio.run(
            _analyse_all(
                todo,
                make_provider,
                settings,
                schema_version,
                answers,
                agent_names(),
                redact_pii,
                concurrency,
                stats,
                outbox.has_message,
            )
        )
        stats.sent = len(messages)
        if messages:
            outbox.enqueue(messages, endpoints)
    outbox.set_mark(MARK, str(max(since_ns, new_mark)))
    return stats


# a session id inside an envelope line (the body is an escaped JSON string there)
_SESSION_ID = re.compile(rb'\\"session_id\\"\s*:\s*\\"([^"\\]+)\\"')


def _session_events(landing: Path, ends: list[Landed]) -> dict[str, list[Landed]]:
    """Every landed event (deduplicated) of each session of `ends`, in one pass over the
    segments written since the earliest of them started; a session whose session.start is
    not among its events (pruned landing, a start before the lookback) is absent."""
    starts: dict[str, datetime] = {}
    for end in ends:
        start = _parse_time(end.body.get("started_at")) or end.received_at - DEFAULT_LOOKBACK
        # events arrive after the start: a start stamped after the session.end arrived is a
        # clock's error, not a reason to look in the future
        starts[end.body["session_id"]] = min(start, end.received_at) - START_SLACK
    if not starts:
        return {}
    floor = min(starts.values())
    found: dict[str, dict[str, Landed]] = {sid: {} for sid in starts}
    for path, st in _segments(_recent_partitions(landing, floor, extra_hours=0), SEALED_SUFFIX):
        if st.st_mtime_ns < floor.timestamp() * 1e9:
            continue  # written to for the last time before any of these sessions began
        for line in _lines(path):
            match = _SESSION_ID.search(line)
            if match is None or match.group(1).decode() not in found:
                continue
            landed = _decode(line)
            if landed is None or landed.body.get("session_id") not in found:
                continue
            seen = found[landed.body["session_id"]]
            first = seen.get(landed.key)
            if first is None or landed.received_at < first.received_at:
                seen[landed.key] = landed
    return {
        sid: list(events.values())
        for sid, events in found.items()
        if any(e.event_type == SESSION_START for e in events.values())
    }


async def _analyse_all(
    todo: list[tuple[Landed, list[Landed]]],
    make_provider: Callable[[], Provider],
    settings: EnrichmentSettings,
    schema_version: str,
    answers: AnswerCache,
    names: dict[str, str],
    redact_pii: bool,
    concurrency: int,
    stats: ExpressStats,
    recorded: Callable[[str], bool] = lambda message_id: False,
) -> list[Message]:
    sem = asyncio.Semaphore(concurrency)
    provider = make_provider()  # in this event loop: a client is bound to the loop it is used in
    kept: dict[str, dict[str, Any]] = {}
    messages: list[Message] = []

    async def one(end: Landed, events: list[Landed]) -> None:
        sid = end.body["session_id"]
        turns = turns_from_session_end(end.body["transcript"])
        t_hash = transcript_sha256(turns)
        key = cache_key(t_hash, settings.prompt_version, schema_version, provider.name, provider.model)
        if recorded(Message.id_for(CALL_ANALYZED, (sid, key))):
            return  # recorded already (a segment read again after `forget` rewrote it): not analysed twice
        row = answers.get([key]).get(key)
        if row is None:
            text = render(turns)
            async with sem:
                try:
                    result = await provider.analyse(turns, redact(text) if redact_pii else text)
                except Exception as exc:  # noqa: BLE001 - left to the warehouse path, which records it
                    result = Analysis(None, error=f"{type(exc).__name__}: {str(exc)[:300]}")
            if result.error:
                stats.left += 1
                stats.errors.append(f"{sid}: {result.error}")
                return
            cost = settings.cost_usd(provider.model, result.input_tokens, result.output_tokens)
            transcript = SessionTranscript(sid, end.agent_id, turns)
            row = enrichment_row(transcript, t_hash, key, provider, settings, schema_version, result, cost)
            kept[key] = row
        data = session_facts(end, events, names)
        data["analysis"] = analysis_object(row, datetime.now(UTC))
        messages.append(Message.build(CALL_ANALYZED, (sid, key), data))

    async def isolated(end: Landed, events: list[Landed]) -> None:
        try:
            await one(end, events)
        except Exception as exc:  # noqa: BLE001 - one odd session is left to the warehouse path, never the round
            stats.left += 1
            stats.errors.append(f"{end.body.get('session_id')}: {type(exc).__name__}: {str(exc)[:200]}")

    try:
        await asyncio.gather(*(isolated(end, events) for end, events in todo))
    finally:
        await provider.aclose()
    if kept:
        answers.put(kept)
    return messages
