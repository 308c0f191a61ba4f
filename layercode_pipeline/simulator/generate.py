"""Seeded, reproducible calls and the payloads Layercode would send or serve for them.

The same seed and `base_time` always give the same batch, byte for byte. The manifest
(`SimBatch.manifest()`) is the ground truth a correct warehouse must reproduce.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from layercode_pipeline.contract.events import DATA, MESSAGE, SESSION_END, SESSION_START, SESSION_UPDATE

from .scenarios import pick_script

COUNTRIES = [
    ("US", "+1", 40),
    ("GB", "+44", 15),
    ("DE", "+49", 10),
    ("IN", "+91", 10),
    ("BR", "+55", 8),
    ("JP", "+81", 7),
    ("ES", "+34", 5),
    ("AU", "+61", 5),
]
PHONE_RATE = 8000  # telephony recordings
WEB_RATE = 16000  # browser recordings
# the custom headers the simulated customer has Layercode append to every webhook
CUSTOM_HEADERS = ("x-tenant-id", "x-request-source")
PLACEHOLDERS = (0, 0xFFFFFFFF)  # what a streaming WAV writer puts where it does not know a size yet
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
TYPED_TEXTS = ["my email is jo@example.com", "order 55512", "can I get a callback tomorrow?"]
DATA_EVENTS: list[dict[str, Any]] = [
    {"event": "form_submitted", "form": "contact", "fields": ["email"]},
    {"event": "button_clicked", "button": "talk_to_human"},
    {"event": "page_viewed", "path": "/pricing"},
    {"event": "cart_updated", "items": 2, "total": 59.9},
]


@dataclass
class SimAgent:
    agent_id: str
    secret: str
    records_sessions: bool
    name: str = "Agent"
    agent_type: str = "voice"
    template_id: str | None = None
    created_at: str = "2026-01-15T10:00:00.000Z"
    phone_numbers: list[str] = field(default_factory=list)
    # Older agents' payloads call the customer's metadata `metadata`; newer ones `custom_metadata`
    # (contract section 5). `both`: a newer payload that still carries a stale legacy field too.
    metadata_field: str = "custom_metadata"
    latency_unit: str = "ms"  # "s": this agent's session.end `latency` is in seconds (undocumented)
    sends_custom_headers: bool = False
    # `agent.webhook`: the customer's webhook gets `message` and `data`; `agent.llm`: Layercode's
    # hosted LLM answers, and only the session webhook's events reach us (contract section 6)
    backend: str = "agent.webhook"

    def api_record(self) -> dict[str, Any]:
        """The agent as `GET /v1/agents` lists it (contract section 5)."""
        return {
            "id": self.agent_id,
            "name": self.name,
            "type": self.agent_type,
            "agent_template_id": self.template_id,
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "assigned_phone_numbers": [
                {
                    "phone_number": n,
                    "twilio_sid": "PN" + hashlib.sha256(n.encode()).hexdigest()[:32],
                    "friendly_name": f"{self.name} line {i + 1}",
                    "assigned_at": self.created_at,
                }
                for i, n in enumerate(self.phone_numbers)
            ],
        }

    def detail_record(self) -> dict[str, Any]:
        """The agent as `GET /v1/agents/{id}` answers: the list entry and its configuration,
        whose plugins name the backend (contract section 6)."""
        plugin: dict[str, Any] = {"use": self.backend}
        if self.backend == "agent.webhook":
            plugin["options"] = {"url": f"https://backend.example.com/agents/{self.agent_id}/webhook"}
        return {**self.api_record(), "config": {"plugins": [{"use": "stt.deepgram"}, plugin, {"use": "tts.rime"}]}}


@dataclass
class Turn:
    role: str
    text: str
    offset_ms: int  # from session start
    turn_id: str
    latency_ms: float | None = None  # assistant turns answering a caller: the platform's per-exchange latency
    words_heard: int | None = None  # assistant turns the caller barged into: how many words were heard

    @property
    def interrupted(self) -> bool:
        return self.words_heard is not None

    @property
    def text_heard(self) -> str | None:
        return None if self.words_heard is None else " ".join(self.text.split()[: self.words_heard])


@dataclass
class SimSession:
    session_id: str
    conversation_id: str
    agent: SimAgent
    sequence: int  # position of this session within its conversation (0 = first)
    scenario: str
    started_at: datetime
    duration_ms: int
    latency_ms: float
    transcription_duration_seconds: float
    tts_duration_seconds: float
    ip_address: str | None
    country_code: str | None
    from_phone_number: str | None
    to_phone_number: str | None
    from_phone_country: str | None
    to_phone_country: str | None
    metadata: dict[str, Any]
    welcome_turn_id: str
    turns: list[Turn]
    recording_enabled: bool
    recording_outcome: str | None  # completed / failed / None (not recorded)
    expected_sentiment: str
    expected_outcome: str
    caller_name: str | None
    headers: dict[str, str] = field(default_factory=dict)  # the customer's custom headers, on every request
    data_events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (user turn id, data)
    sample_rate: int = PHONE_RATE
    wav_format: str = "pcm"  # or "mulaw"
    wav_placeholder: int | None = None  # a streamed WAV whose header sizes are placeholders
    # what is wrong with the recording's audio: None, "clipped" (speech driven past full scale),
    # "silent" (line noise only), "cut_short" (the file stops at 60% of the call it reports)
    audio_defect: str | None = None

    @property
    def agent_id(self) -> str:
        return self.agent.agent_id

    @property
    def barge_ins_observable(self) -> bool:
        """Whether a `message` webhook reaches the customer for this session."""
        return self.agent.backend == "agent.webhook" and any(t.role == "user" for t in self.turns)

    @property
    def ended_at(self) -> datetime:
        return self.started_at + timedelta(milliseconds=self.duration_ms)

    @property
    def channel(self) -> str:
        return "phone" if self.from_phone_number else "web"

    def iso(self, dt: datetime) -> str:
        return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    # --- webhook payloads (contract sections 1 and 5) -----------------------------------
    def _common(self, event_type: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": event_type,
            "session_id": self.session_id,
            "conversation_id": self.conversation_id,
        }
        if self.from_phone_number:
            out["from_phone_number"] = self.from_phone_number
            out["to_phone_number"] = self.to_phone_number
        field_ = self.agent.metadata_field
        if field_ in ("custom_metadata", "both"):
            out["custom_metadata"] = self.metadata  # on every request
            if field_ == "both" and event_type in (SESSION_START, SESSION_END):
                out["metadata"] = {"source": "legacy", "customer_tier": "unknown"}  # stale: custom_metadata wins
        elif event_type in (SESSION_START, SESSION_END):
            out["metadata"] = self.metadata  # older payloads: only on the session events
        return out

    def session_start(self) -> dict[str, Any]:
        return {**self._common(SESSION_START), "turn_id": self.welcome_turn_id}

    def messages(self) -> list[dict[str, Any]]:
        """One `message` per caller turn, with the previous assistant turn's `interruption_context`;
        none for a hosted (`agent.llm`) agent. As on the platform (contract section 6), a message's
        words are not always the transcript's (another recogniser pass: case, punctuation, a filler
        word), and a web caller's typed text arrives as a `message` no transcript turn matches."""
        if self.agent.backend != "agent.webhook":
            return []
        r = random.Random(f"messages-{self.session_id}")
        out = []
        for i, t in enumerate(self.turns):
            if t.role != "user":
                continue
            if self.channel == "web" and r.random() < 0.1:
                out.append({**self._common(MESSAGE), "turn_id": _id(r), "text": r.choice(TYPED_TEXTS)})
            said = t.text
            if r.random() < 0.3:  # the message's own wording
                said = said.lower().rstrip(".!?")
                if r.random() < 0.5:
                    said = "um " + said
            body = {**self._common(MESSAGE), "turn_id": t.turn_id, "text": said}
            prev = self.turns[i - 1] if i else None
            if prev is not None and prev.role == "assistant":
                heard = prev.words_heard if prev.interrupted else len(prev.text.split())
                ctx: dict[str, Any] = {
                    "previous_turn_interrupted": prev.interrupted,
                    "words_heard": heard,
                    "text_heard": prev.text_heard if prev.interrupted else prev.text,
                }
                if self.agent.metadata_field != "metadata":  # newer payloads name the turn (optional field)
                    ctx["assistant_turn_id"] = prev.turn_id
                body["interruption_context"] = ctx
            out.append(body)
        return out

    def data(self) -> list[dict[str, Any]]:
        if self.agent.backend != "agent.webhook":
            return []  # a hosted agent's data events go to Layercode's LLM, not to us
        return [{**self._common(DATA), "turn_id": turn_id, "data": data} for turn_id, data in self.data_events]

    def conversation_events(self) -> list[dict[str, Any]]:
        """session.start, then each caller turn's `message` followed by its `data` events."""
        data_by_turn: dict[str, list[dict[str, Any]]] = {}
        for body in self.data():
            data_by_turn.setdefault(body["turn_id"], []).append(body)
        out = [self.session_start()]
        for message in self.messages():
            out += [message, *data_by_turn.get(message["turn_id"], [])]
        return out

    def torn_replies(self) -> set[str]:
        """Turn ids of the events whose SSE reply the caller tore by barging in: the reply that
        spoke an interrupted assistant turn (the welcome: session.start's; later: the message's)."""
        out: set[str] = set()
        if self.agent.backend != "agent.webhook":
            return out  # the hosted LLM speaks: no reply of ours is on the line to tear
        trigger = self.welcome_turn_id
        for t in self.turns:
            if t.role == "user":
                trigger = t.turn_id
            elif t.interrupted:
                out.add(trigger)
        return out

    @property
    def webhook_latency(self) -> float:
        return round(self.latency_ms / 1000, 4) if self.agent.latency_unit == "s" else self.latency_ms

    def session_end(self) -> dict[str, Any]:
        return {
            **self._common(SESSION_END),
            "agent_id": self.agent_id,
            "started_at": self.iso(self.started_at),
            "ended_at": self.iso(self.ended_at),
            "duration": self.duration_ms,
            "transcription_duration_seconds": self.transcription_duration_seconds,
            "tts_duration_seconds": self.tts_duration_seconds,
            "latency": self.webhook_latency,
            "ip_address": self.ip_address,
            "country_code": self.country_code,
            "recording_status": "enabled" if self.recording_enabled else "disabled",
            "transcript": [
                {"role": t.role, "text": t.text, "timestamp": int(self.started_at.timestamp() * 1000) + t.offset_ms}
                for t in self.turns
            ],
        }

    def session_update(self) -> dict[str, Any] | None:
        if self.recording_outcome is None:
            return None
        body: dict[str, Any] = {**self._common(SESSION_UPDATE), "recording_status": self.recording_outcome}
        if self.recording_outcome == "completed":
            body["recording_url"] = (
                f"https://api.layercode.com/v1/agents/{self.agent_id}/sessions/{self.session_id}/recording"
            )
            body["recording_duration"] = round(self.duration_ms / 1000, 3)
        else:
            body["error_message"] = "recording processing failed"
        return body

    # --- REST record (contract sections 3 and 5: no conversation_id) --------------------
    def rest_record(self, recording_ready: bool) -> dict[str, Any]:
        exchanges: list[dict[str, Any]] = []
        pending_user: Turn | None = None
        for t in self.turns:
            if t.role == "user":
                if pending_user is not None:  # two user turns in a row: an exchange with no answer
                    exchanges.append(self._exchange(pending_user, None))
                pending_user = t
            else:
                exchanges.append(self._exchange(pending_user, t))
                pending_user = None
        if pending_user is not None:
            exchanges.append(self._exchange(pending_user, None))
        if self.recording_outcome == "completed":
            status = "completed" if recording_ready else "in_progress"
        elif self.recording_enabled and self.recording_outcome is None:
            status = "in_progress"
        else:
            status = "not_available"
        rec: dict[str, Any] = {
            "session_id": self.session_id,
            "agent_id": self.agent_id,
            "started_at": self.iso(self.started_at),
            "ended_at": self.iso(self.ended_at),
            "duration_ms": self.duration_ms,
            "latency_ms": self.latency_ms,
            "transcription_duration_seconds": self.transcription_duration_seconds,
            "tts_duration_seconds": self.tts_duration_seconds,
            "metadata": self.metadata,
            "ip_address": self.ip_address,
            "country_code": self.country_code,
            "transcript": exchanges,
            "recording_status": status,
        }
        if self.from_phone_number:
            rec.update(
                from_phone_number=self.from_phone_number,
                from_phone_country=self.from_phone_country,
                to_phone_number=self.to_phone_number,
                to_phone_country=self.to_phone_country,
            )
        if status == "completed":
            rec["recording_url"] = f"/v1/agents/{self.agent_id}/sessions/{self.session_id}/recording"
        return rec

    def _exchange(self, user: Turn | None, assistant: Turn | None) -> dict[str, Any]:
        first = user or assistant
        assert first is not None
        return {
            "timestamp": self.iso(self.started_at + timedelta(milliseconds=first.offset_ms)),
            "user_message": user.text if user else None,
            "assistant_message": assistant.text if assistant else None,
            "latency_ms": assistant.latency_ms if user and assistant else None,
        }

    # --- the recording -----------------------------------------------------------------
    @property
    def recording_samples(self) -> int:
        duration_ms = self.duration_ms * 6 // 10 if self.audio_defect == "cut_short" else self.duration_ms
        return duration_ms * self.sample_rate // 1000

    @property
    def recording_bytes_per_sample(self) -> int:
        return 1 if self.wav_format == "mulaw" else 2

    @property
    def recording_data_bytes(self) -> int:
        return self.recording_samples * self.recording_bytes_per_sample

    # --- ground truth --------------------------------------------------------------------
    def truth(self) -> dict[str, Any]:
        turns = self.turns
        words = {r: sum(len(t.text.split()) for t in turns if t.role == r) for r in ("user", "assistant")}
        return {
            "session_id": self.session_id,
            "conversation_id": self.conversation_id,
            "agent_id": self.agent_id,
            "agent_name": self.agent.name,
            "scenario": self.scenario,
            "channel": self.channel,
            "started_at": self.iso(self.started_at),
            "ended_at": self.iso(self.ended_at),
            "duration_ms": self.duration_ms,
            "latency_ms": self.latency_ms,
            "webhook_latency": self.webhook_latency,
            "webhook_latency_unit": self.agent.latency_unit,
            "transcription_duration_seconds": self.transcription_duration_seconds,
            "tts_duration_seconds": self.tts_duration_seconds,
            "country_code": self.country_code,
            "from_phone_number": self.from_phone_number,
            "to_phone_number": self.to_phone_number,
            "turns": len(turns),
            "user_turns": sum(t.role == "user" for t in turns),
            "assistant_turns": sum(t.role == "assistant" for t in turns),
            "user_words": words["user"],
            "assistant_words": words["assistant"],
            "turn_texts": [[t.role, t.text] for t in turns],
            "barge_ins_observable": self.barge_ins_observable,
            "interruptions": sum(t.interrupted for t in turns) if self.barge_ins_observable else None,
            # (position, words heard, text heard) of each assistant turn the caller barged into
            "interrupted_turns": [
                [i + 1, t.words_heard, t.text_heard]
                for i, t in enumerate(turns)
                if t.interrupted and self.barge_ins_observable
            ],
            "turn_latency_ms": [t.latency_ms for t in turns],
            "data_events": [d for _, d in self.data_events] if self.agent.backend == "agent.webhook" else [],
            "custom_headers": self.headers,
            "metadata_field": self.agent.metadata_field,
            "recording_state": self.recording_outcome or ("disabled" if not self.recording_enabled else "in_progress"),
            "recording_duration_s": round(self.recording_samples / self.sample_rate, 3)
            if self.recording_outcome == "completed"
            else None,
            "audio_defect": self.audio_defect if self.recording_outcome == "completed" else None,
            "recording_format": {
                "sample_rate": self.sample_rate,
                "encoding": self.wav_format,
                "placeholder_sizes": self.wav_placeholder is not None,
            },
            "expected_sentiment": self.expected_sentiment,
            "expected_outcome": self.expected_outcome,
            "caller_name": self.caller_name,
            "metadata": self.metadata,
        }


@dataclass
class SimBatch:
    seed: int
    agents: list[SimAgent]
    sessions: list[SimSession] = field(default_factory=list)

    def agent(self, agent_id: str) -> SimAgent:
        return next(a for a in self.agents if a.agent_id == agent_id)

    def manifest(self) -> dict[str, Any]:
        sessions = [s.truth() for s in self.sessions]
        conversations: dict[str, dict[str, Any]] = {}
        for s in sorted(self.sessions, key=lambda s: (s.conversation_id, s.sequence)):
            c = conversations.setdefault(
                s.conversation_id,
                {
                    "conversation_id": s.conversation_id,
                    "agent_id": s.agent_id,
                    "sessions": 0,
                    "started_at": s.iso(s.started_at),
                    "ended_at": s.iso(s.ended_at),
                    "duration_ms": 0,
                    "turns": 0,
                },
            )
            c["sessions"] += 1
            c["ended_at"] = max(c["ended_at"], s.iso(s.ended_at))
            c["duration_ms"] += s.duration_ms
            c["turns"] += len(s.turns)
        return {
            "seed": self.seed,
            "agents": [
                {
                    "agent_id": a.agent_id,
                    "name": a.name,
                    "records_sessions": a.records_sessions,
                    "metadata_field": a.metadata_field,
                    "latency_unit": a.latency_unit,
                    "phone_numbers": a.phone_numbers,
                }
                for a in self.agents
            ],
            "sessions": sessions,
            "conversations": list(conversations.values()),
        }


def _id(r: random.Random, length: int = 24) -> str:
    """A production-shaped id: lower-case letters and digits, no type prefix (contract section 5)."""
    return "".join(r.choice(ID_ALPHABET) for _ in range(length))


def _phone(r: random.Random, prefix: str) -> str:
    return prefix + "".join(str(r.randint(0, 9)) for _ in range(10 if prefix == "+1" else 9))


# (name, metadata field, latency unit of session.end, custom headers, backend): the agents differ
# the way an org's agents built at different times do; one runs on Layercode's hosted LLM, so
# only its session webhook reaches us (no `message`, no `data`: barge-ins unobservable).
AGENT_STYLES = [
    ("Acme Support", "custom_metadata", "ms", True, "agent.webhook"),
    ("Acme Sales", "metadata", "s", False, "agent.webhook"),
    ("Acme Booking", "both", "ms", True, "agent.webhook"),
    ("Acme Billing", "custom_metadata", "ms", False, "agent.llm"),
    ("Acme Intake", "metadata", "ms", False, "agent.webhook"),
]


ORG_SEED = 7  # the simulated org: `simulate` and the demo make calls from its agents (same ids and secrets)


def default_agents(seed: int, count: int = 4) -> list[SimAgent]:
    r = random.Random(f"agents-{seed}")
    agents = []
    for i, (name, metadata_field, latency_unit, headers, backend) in enumerate(AGENT_STYLES[:count]):
        agent_id = _id(r, 8)
        agents.append(
            SimAgent(
                agent_id=agent_id,
                secret=hashlib.sha256(f"{seed}-{name}-{r.random()}".encode()).hexdigest()[:40],
                records_sessions=(i != count - 1),
                name=name,
                template_id=_id(r, 8) if i % 2 == 0 else None,
                created_at=f"2026-0{1 + i}-1{i}T09:30:00.000Z",
                phone_numbers=[_phone(r, "+1") for _ in range(1 + i % 2)],
                metadata_field=metadata_field,
                latency_unit=latency_unit,
                sends_custom_headers=headers,
                backend=backend,
            )
        )
    return agents


def _interrupt_and_time(r: random.Random, turns: list[Turn], latency_ms: float) -> None:
    """Barge-ins (an assistant turn the caller spoke over) and per-exchange latencies."""
    for i, t in enumerate(turns):
        if t.role != "assistant":
            continue
        if i and turns[i - 1].role == "user":
            t.latency_ms = round(math.exp(r.gauss(math.log(latency_ms), 0.25)), 1)
        words = len(t.text.split())
        if i + 1 < len(turns) and turns[i + 1].role == "user" and words > 2 and r.random() < 0.18:
            t.words_heard = r.randint(1, words - 1)


# when calls arrive over weeks (`generate_batch(days=...)`): weekdays busier than weekends, and
# the hours (UTC) of a team whose callers are in Europe and the Americas
WEEKDAY_WEIGHTS = (1.0, 1.05, 1.0, 0.95, 0.9, 0.45, 0.3)
HOUR_WEIGHTS = (
    0.15, 0.1, 0.08, 0.08, 0.1, 0.2, 0.4, 0.8, 1.2, 1.5, 1.6, 1.5,
    1.4, 1.6, 1.9, 2.0, 1.9, 1.7, 1.4, 1.1, 0.8, 0.55, 0.35, 0.2,
)  # fmt: skip


@dataclass(frozen=True)
class LatencyRegression:
    """One agent answers slower for a while (a model or prompt change gone wrong, then rolled
    back): its exchanges' latency is multiplied by `factor` for calls started in [since, until)."""

    agent_name: str
    since: datetime
    until: datetime
    factor: float = 2.0

    def applies(self, agent: SimAgent, start: datetime) -> bool:
        return agent.name == self.agent_name and self.since <= start < self.until


def _spread_start(r: random.Random, base: datetime, days: int) -> datetime:
    """A start time in the `days` days from `base`, weighted by weekday and hour (the first and
    last calendar days are partial: a draw outside the window is drawn again)."""
    first = base.replace(hour=0, minute=0, second=0, microsecond=0)
    end = base + timedelta(days=days)
    day_weights = [WEEKDAY_WEIGHTS[(first + timedelta(days=d)).weekday()] for d in range(days + 1)]
    while True:
        day = r.choices(range(days + 1), weights=day_weights)[0]
        hour = r.choices(range(24), weights=HOUR_WEIGHTS)[0]
        start = first + timedelta(days=day, hours=hour, milliseconds=r.randint(0, 3600 * 1000 - 1))
        if base <= start < end:
            return start


def generate_batch(
    calls: int,
    *,
    seed: int = 0,
    base_time: datetime | None = None,
    agents: list[SimAgent] | None = None,
    reconnect_rate: float = 0.12,
    recording_failure_rate: float = 0.08,
    days: int | None = None,
    regression: LatencyRegression | None = None,
) -> SimBatch:
    """`calls` conversations; some reconnect (a second session, same conversation_id). They
    start within 8 hours of `base_time`, or, with `days`, over that many days from it, busier
    on weekdays and in working hours. `regression`: one agent slower for a while."""
    r = random.Random(seed)
    base = (base_time or datetime(2026, 11, 20, 9, 0, tzinfo=UTC)).astimezone(UTC)
    base = base.replace(microsecond=base.microsecond // 1000 * 1000)  # the wire carries milliseconds
    batch = SimBatch(seed=seed, agents=agents or default_agents(seed))
    for _ in range(calls):
        agent = r.choices(batch.agents, weights=[5, 3, 2, 2, 1][: len(batch.agents)])[0]
        conversation_id = _id(r)
        start = _spread_start(r, base, days) if days else base + timedelta(milliseconds=r.randint(0, 8 * 3600 * 1000))
        slow = regression.factor if regression is not None and regression.applies(agent, start) else 1.0
        n_sessions = 2 if r.random() < reconnect_rate else 1
        telephony = r.random() < 0.55
        country, dial, _ = r.choices(COUNTRIES, weights=[c[2] for c in COUNTRIES])[0]
        from_phone = _phone(r, dial) if telephony else None
        to_phone = (r.choice(agent.phone_numbers) if agent.phone_numbers else _phone(r, "+1")) if telephony else None
        metadata = {
            "tenant_id": f"t-{r.randint(100, 999)}",
            "crm_id": f"crm_{r.getrandbits(32):08x}",
            "customer_tier": r.choice(["free", "pro", "enterprise"]),
            "campaign": r.choice(["organic", "spring_promo"]),
        }
        headers = (
            dict(zip(CUSTOM_HEADERS, (metadata["tenant_id"], r.choice(["ivr", "website"])), strict=True))
            if agent.sends_custom_headers
            else {}
        )
        for seq in range(n_sessions):
            # wording from the call's own generator: a seeded batch's other draws do not depend on it
            welcome, script = pick_script(r, random.Random(f"wording:{seed}:{conversation_id}:{seq}"))
            turns_spec = [("assistant", welcome if seq == 0 else "Welcome back. Let's continue."), *script.turns]
            offset = 0
            turns: list[Turn] = []
            for role, text in turns_spec:
                turns.append(Turn(role, text, offset, _id(r)))
                if role == "assistant" and len(turns) > 1 and turns[-2].role == "user":
                    # a reply carries the turn id of the request it answers (the caller's message)
                    turns[-1].turn_id = turns[-2].turn_id
                offset += int(len(text.split()) / 2.6 * 1000) + r.randint(400, 2500)
            duration_ms = max(offset + r.randint(500, 4000), 1500)
            if script.scenario == "short_call":
                duration_ms = r.randint(1500, 6000)
                offset = 0
                for t in turns:
                    t.offset_ms = min(t.offset_ms, duration_ms - 500)
            session_latency = round(math.exp(r.gauss(math.log(650), 0.35)) * slow, 1)
            _interrupt_and_time(r, turns, session_latency)
            answered = [t.latency_ms for t in turns if t.latency_ms is not None]
            if answered:  # the session's figure is the mean over its exchanges
                session_latency = round(sum(answered) / len(answered), 1)
            user_words = sum(len(t.text.split()) for t in turns if t.role == "user")
            asst_words = sum(len(t.text.split()) for t in turns if t.role == "assistant")
            recorded = agent.records_sessions
            outcome = None
            if recorded:
                outcome = "failed" if r.random() < recording_failure_rate else "completed"
            data_events: list[tuple[str, dict[str, Any]]] = (
                []
                if telephony
                else [(t.turn_id, r.choice(DATA_EVENTS)) for t in turns if t.role == "user" and r.random() < 0.3]
            )
            session = SimSession(
                session_id=_id(r),
                conversation_id=conversation_id,
                agent=agent,
                sequence=seq,
                scenario=script.scenario,
                started_at=start,
                duration_ms=duration_ms,
                latency_ms=session_latency,
                transcription_duration_seconds=round(user_words / 2.6 + r.uniform(0.2, 1.5), 2),
                tts_duration_seconds=round(asst_words / 2.8, 2),
                ip_address=None if telephony else f"203.0.113.{r.randint(1, 254)}",
                country_code=country,
                from_phone_number=from_phone,
                to_phone_number=to_phone,
                from_phone_country=country if telephony else None,
                to_phone_country="US" if telephony else None,
                metadata=metadata,
                welcome_turn_id=turns[0].turn_id,
                turns=turns,
                recording_enabled=recorded,
                recording_outcome=outcome,
                expected_sentiment=script.sentiment,
                expected_outcome=script.outcome,
                caller_name=script.caller_name,
                headers=headers,
                data_events=data_events,
                sample_rate=PHONE_RATE if telephony else WEB_RATE,
                wav_format="mulaw" if telephony and r.random() < 0.4 else "pcm",
                wav_placeholder=r.choice(PLACEHOLDERS) if r.random() < 0.25 else None,
            )
            batch.sessions.append(session)
            start = session.ended_at + timedelta(milliseconds=r.randint(2000, 20000))
    _assign_audio_defects(batch.sessions)
    return batch


AUDIO_DEFECTS = (("clipped", 0.06), ("silent", 0.03), ("cut_short", 0.05))


def _assign_audio_defects(sessions: list[SimSession]) -> None:
    """Some recordings are clipped, silent or cut short, drawn from each session id's hash (not
    from the batch's generator, so every other field of a seeded batch stays as it was); a batch
    with completed recordings always has at least one silent one."""
    recorded = [s for s in sessions if s.recording_outcome == "completed"]
    for s in recorded:
        draw = int(hashlib.sha256(f"audio:{s.session_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        for defect, rate in AUDIO_DEFECTS:
            if draw < rate:
                s.audio_defect = defect
                break
            draw -= rate
    if recorded and not any(s.audio_defect == "silent" for s in recorded):
        recorded[-1].audio_defect = "silent"


__all__ = [
    "LatencyRegression",
    "SimAgent",
    "SimBatch",
    "SimSession",
    "Turn",
    "generate_batch",
    "default_agents",
]
