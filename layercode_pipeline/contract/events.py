"""Pydantic models of the webhook events, the SSE reply events and the REST record.

Tolerant on purpose (contract section 1): extra fields are kept, optional fields may be
missing or null, transcript timestamps may be numbers or ISO strings. Only the fields a
reply cannot do without are required.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

SESSION_START = "session.start"
MESSAGE = "message"
SESSION_END = "session.end"
SESSION_UPDATE = "session.update"
SSE_EVENT_TYPES = (SESSION_START, MESSAGE)

Timestamp = float | int | str | None


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    session_id: str
    conversation_id: str | None = None
    from_phone_number: str | None = None
    to_phone_number: str | None = None
    metadata: dict[str, Any] | None = None


class SessionStartEvent(_Event):
    type: Literal["session.start"]
    turn_id: str


class MessageEvent(_Event):
    type: Literal["message"]
    turn_id: str
    text: str | None = None


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


WebhookEvent = SessionStartEvent | MessageEvent | SessionEndEvent | SessionUpdateEvent
_MODELS: dict[str, type[_Event]] = {
    SESSION_START: SessionStartEvent,
    MESSAGE: MessageEvent,
    SESSION_END: SessionEndEvent,
    SESSION_UPDATE: SessionUpdateEvent,
}


_KNOWN_JSON = TypeAdapter(Annotated[WebhookEvent, Field(discriminator="type")])


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
    model_config = ConfigDict(extra="allow")

    timestamp: Timestamp = None
    user_message: str | None = None
    assistant_message: str | None = None
    latency_ms: float | None = None


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
