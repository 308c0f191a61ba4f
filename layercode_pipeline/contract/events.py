"""Pydantic models of the webhook events, the SSE reply events and the REST record.

Tolerant on purpose (contract section 1): extra fields are kept, optional fields may be
missing or null, transcript timestamps may be numbers or ISO strings. Only the fields a
reply cannot do without are required.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

SESSION_START = "session.start"
MESSAGE = "message"
SESSION_END = "session.end"
SESSION_UPDATE = "session.update"
DATA = "data"

Timestamp = float | int | str | None


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    session_id: str
    conversation_id: str | None = None
    from_phone_number: str | None = None
    to_phone_number: str | None = None
    # The metadata the customer's backend gave at session authorisation: `custom_metadata` on
    # every request in the newer docs, `metadata` in older payloads; read both, prefer the first.
    custom_metadata: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class SessionStartEvent(_Event):
    type: Literal["session.start"]
    turn_id: str


class InterruptionContext(BaseModel):
    """On `message`: what happened to the immediately previous assistant turn (the platform's
    only barge-in signal)."""

    model_config = ConfigDict(extra="allow")

    previous_turn_interrupted: bool | None = None
    words_heard: float | None = None
    text_heard: str | None = None
    assistant_turn_id: str | None = None


class MessageEvent(_Event):
    type: Literal["message"]
    turn_id: str
    text: str | None = None
    interruption_context: InterruptionContext | None = None


class DataEvent(_Event):
    """Structured JSON the caller's client sent (`client.response.data`); it does not interrupt
    speech and is answered with a plain JSON 2xx."""

    type: Literal["data"]
    turn_id: str | None = None
    data: dict[str, Any] | None = None


class TranscriptItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant"] | str | None = None  # another role (or none) reads as "unknown"
    text: str | None = None
    timestamp: Timestamp = None


class SessionEndEvent(_Event):
    type: Literal["session.end"]
    agent_id: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    duration: float | None = None  # milliseconds
    transcription_duration_seconds: float | None = None
    tts_duration_seconds: float | None = None
    latency: float | None = None
    ip_address: str | None = None
    country_code: str | None = None
    recording_status: str | None = None  # enabled / disabled (the org setting)
    transcript: list[TranscriptItem] | None = None


class SessionUpdateEvent(_Event):
    type: Literal["session.update"]
    recording_status: str | None = None  # completed / failed
    recording_url: str | None = None
    recording_duration: float | None = None  # seconds
    error_message: str | None = None


@dataclass(frozen=True)
class EventType:
    """One webhook event type: its model, the body fields that (with agent, type and session)
    identify a redelivery of the same event, and whether Layercode waits for an SSE reply.
    `identity=None`: only the same bytes are the same event (content hash)."""

    name: str
    model: type[_Event]
    identity: tuple[str, ...] | None
    sse_reply: bool


# The registry: the listener, the ingest's identity SQL and the simulator read it from here.
EVENT_TYPES: dict[str, EventType] = {
    t.name: t
    for t in (
        EventType(SESSION_START, SessionStartEvent, ("turn_id",), sse_reply=True),
        EventType(MESSAGE, MessageEvent, ("turn_id",), sse_reply=True),
        EventType(SESSION_END, SessionEndEvent, (), sse_reply=False),
        EventType(SESSION_UPDATE, SessionUpdateEvent, ("recording_status",), sse_reply=False),
        # several data events may share a turn: only identical bodies are redeliveries
        EventType(DATA, DataEvent, None, sse_reply=False),
    )
}
SSE_EVENT_TYPES = tuple(t.name for t in EVENT_TYPES.values() if t.sse_reply)
IDENTITY_FIELDS = ("turn_id", "recording_status")  # the body fields the ingest extracts for identities
assert all(f in IDENTITY_FIELDS for t in EVENT_TYPES.values() for f in t.identity or ())

WebhookEvent = SessionStartEvent | MessageEvent | SessionEndEvent | SessionUpdateEvent | DataEvent
_MODELS: dict[str, type[_Event]] = {name: t.model for name, t in EVENT_TYPES.items()}


_KNOWN_JSON: TypeAdapter[WebhookEvent] = TypeAdapter(Annotated[WebhookEvent, Field(discriminator="type")])


def _escaped(part_sql: str) -> str:
    """A key part with `\\` and `|` escaped, so that parts joined by `|` give one key per tuple of
    parts (`a|b` + `c` and `a` + `b|c` were one key, and one of the two events was dropped). A
    part without either character is unchanged: keys landed before the escaping still match."""
    return f"replace(replace({part_sql}, '\\', '\\\\'), '|', '\\|')"


def event_key_sql() -> str:
    """The ingest's SQL for an event's identity (`event_key`), from the registry: a redelivery
    has the same key even when its bytes differ (Layercode may re-serialise); an event with no
    session, or a type without identity fields (unknown types included), keys on its content."""
    whens = []
    for t in EVENT_TYPES.values():
        if t.identity is None:
            continue
        parts = ", ".join(
            _escaped(p) for p in ["agent_id", "event_type", "session_id", *(f"coalesce({f}, '')" for f in t.identity)]
        )
        required = " and ".join(f"{f} is not null" for f in t.identity if f == "turn_id") or "true"
        whens.append(f"    when event_type = '{t.name}' and {required} then concat_ws('|', {parts})")
    return (
        "case\n    when session_id is null then 'sha256:' || content_sha256\n"
        + "\n".join(whens)
        + "\n    else 'sha256:' || content_sha256\nend"
    )


def event_key(agent_id: str, event_type: str, content_sha256: str, body: Mapping[str, Any]) -> str:
    """`event_key_sql` in Python, for one decoded event (the express result path reads the
    landing itself): the same registry, the same escaping, the same key."""
    session_id = body.get("session_id")
    if session_id is None:
        return "sha256:" + content_sha256
    t = EVENT_TYPES.get(event_type)
    if t is None or t.identity is None or ("turn_id" in t.identity and body.get("turn_id") is None):
        return "sha256:" + content_sha256
    parts = [agent_id, event_type, str(session_id), *(str(body.get(f) or "") for f in t.identity)]
    return "|".join(p.replace("\\", "\\\\").replace("|", "\\|") for p in parts)


def parse_event_json(body: bytes, event_type: str) -> WebhookEvent | None:
    """Validate the raw body of a known type in one pass (the listener's hot path); None for
    an unknown type, which is kept as it came. Raises `pydantic.ValidationError`."""
    if event_type not in _MODELS:
        return None
    return _KNOWN_JSON.validate_json(body)


def validation_reason(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors(include_url=False)
    )


# --- payload drift: what landed that this contract does not describe -------------------------

_JSON_TYPES = {
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
    type(None): "null",
}


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return _JSON_TYPES.get(type(value), "number" if isinstance(value, int | float) else "object")


def _allowed(annotation: Any) -> tuple[set[str] | None, type[BaseModel] | None]:
    """The JSON types a field's annotation accepts (None: any) and the model its objects or
    array items follow, if one."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return None, None
    if origin is Literal:
        return {json_type(v) for v in typing.get_args(annotation)}, None
    if origin in (typing.Union, types.UnionType):
        kinds: set[str] = set()
        nested = None
        for arg in typing.get_args(annotation):
            sub, model = _allowed(arg)
            if sub is None:
                return None, None
            kinds |= sub
            nested = nested or model
        return kinds, nested
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return {"array"}, _allowed(item)[1]
    if origin is dict or annotation is dict:
        return {"object"}, None  # free-form objects (metadata, data): any keys
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"object"}, annotation
    if annotation in (float, int):
        return {"number"}, None
    return {_JSON_TYPES.get(annotation, "object")}, None


@dataclass(frozen=True)
class Drift:
    """A place in a landed payload the contract does not describe."""

    event_type: str
    path: str  # dotted, `[]` for array items: transcript[].confidence
    kind: str  # unknown_event_type / unknown_field / unexpected_type / unreadable_transcript_entry
    json_type: str  # what arrived


def payload_drift(event_type: str, body: Any) -> list[Drift]:
    """Fields, value types and event types in one landed body that the registry's models do not
    know. Free-form objects (`metadata`, `custom_metadata`, `data`) are never drift."""
    spec = EVENT_TYPES.get(event_type)
    if spec is None:
        return [Drift(event_type, "type", "unknown_event_type", "string")]
    return model_drift(spec.model, body, event_type)


def summarise_drift(found_per_item: typing.Iterable[tuple[str | None, list[Drift]]]) -> tuple[int, list[dict]]:
    """(items with drift, one row per (type, path, kind, JSON type) with its count and up to
    three example sessions, most frequent first) over (session id, drifts) pairs."""
    found: dict[tuple, dict] = {}
    drifting = 0
    for session_id, drifts in found_per_item:
        drifting += bool(drifts)
        for d in drifts:
            entry = found.setdefault(
                (d.event_type, d.path, d.kind, d.json_type),
                {
                    "event_type": d.event_type,
                    "path": d.path,
                    "kind": d.kind,
                    "json_type": d.json_type,
                    "events": 0,
                    "example_sessions": [],
                },
            )
            entry["events"] += 1
            if len(entry["example_sessions"]) < 3 and session_id not in entry["example_sessions"]:
                entry["example_sessions"].append(session_id)
    return drifting, sorted(found.values(), key=lambda e: -e["events"])


REST_SESSION = "rest.session"  # the label of REST session records in drift reports


def rest_record_drift(record: Any) -> list[Drift]:
    """What a REST session record carries that the contract does not describe (as
    `payload_drift` for webhooks), and each transcript entry no turn can be read from: neither
    an exchange (`user_message` / `assistant_message`) nor an utterance (`role` and `text`).
    Such an entry would silently give no turns."""
    if not isinstance(record, dict):
        return [Drift(REST_SESSION, "record", "unexpected_type", json_type(record))]
    out = model_drift(RestSession, record, REST_SESSION)
    transcript = record.get("transcript")
    for entry in transcript if isinstance(transcript, list) else ():
        readable = isinstance(entry, dict) and (
            isinstance(entry.get("user_message"), str)
            or isinstance(entry.get("assistant_message"), str)
            or (isinstance(entry.get("role"), str) and isinstance(entry.get("text"), str))
        )
        if not readable:
            out.append(Drift(REST_SESSION, "transcript[]", "unreadable_transcript_entry", json_type(entry)))
    return out


def model_drift(root: type[BaseModel], body: Any, label: str) -> list[Drift]:
    """Fields and value types in `body` that `root` (and the models it nests) does not know."""
    event_type = label
    out: list[Drift] = []

    def walk(model: type[BaseModel], value: Any, prefix: str) -> None:
        if not isinstance(value, dict):
            return
        fields = {(f.alias or name): f for name, f in model.model_fields.items()}
        for key, item in value.items():
            path = f"{prefix}{key}"
            field = fields.get(key)
            if field is None:
                out.append(Drift(event_type, path, "unknown_field", json_type(item)))
                continue
            kinds, nested = _allowed(field.annotation)
            if kinds is not None and json_type(item) not in kinds:
                out.append(Drift(event_type, path, "unexpected_type", json_type(item)))
            elif nested is not None and isinstance(item, dict):
                walk(nested, item, path + ".")
            elif nested is not None and isinstance(item, list):
                for element in item:
                    walk(nested, element, path + "[].")

    walk(root, body, "")
    return out


# --- SSE reply events (contract section 2) -----------------------------------------------


class ResponseTTS(BaseModel):
    type: Literal["response.tts"] = "response.tts"
    content: str
    turn_id: str


class ResponseData(BaseModel):
    type: Literal["response.data"] = "response.data"
    content: Any
    turn_id: str


class ResponseEnd(BaseModel):
    type: Literal["response.end"] = "response.end"
    turn_id: str


class ResponseError(BaseModel):
    type: Literal["response.error"] = "response.error"
    error: str
    turn_id: str


# --- REST record (contract section 3) ------------------------------------------------------


class RestExchange(BaseModel):
    """A REST transcript entry: documented as one exchange (`user_message`, `assistant_message`,
    `latency_ms`); one published API profile describes one utterance (`role`, `text`) instead
    (contract section 6). Both are read."""

    model_config = ConfigDict(extra="allow")

    timestamp: Timestamp = None
    user_message: str | None = None
    assistant_message: str | None = None
    latency_ms: float | None = None
    role: str | None = None
    text: str | None = None


class RestSession(BaseModel):
    model_config = ConfigDict(extra="allow")

    session_id: str
    agent_id: str
    conversation_id: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    duration_ms: float | None = None
    latency_ms: float | None = None
    transcription_duration_seconds: float | None = None
    tts_duration_seconds: float | None = None
    metadata: dict[str, Any] | None = None
    from_phone_number: str | None = None
    from_phone_country: str | None = None
    to_phone_number: str | None = None
    to_phone_country: str | None = None
    ip_address: str | None = None
    country_code: str | None = None
    transcript: list[RestExchange] = Field(default_factory=list)
    recording_status: str | None = None  # not_available / in_progress / completed
    recording_url: str | None = None
