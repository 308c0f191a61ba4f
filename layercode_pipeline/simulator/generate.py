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

from .scenarios import pick_script

COUNTRIES = [("US", "+1", 40), ("GB", "+44", 15), ("DE", "+49", 10), ("IN", "+91", 10), ("BR", "+55", 8),
             ("JP", "+81", 7), ("ES", "+34", 5), ("AU", "+61", 5)]
SAMPLE_RATE = 8000  # telephony-grade mono 16-bit PCM


@dataclass
class SimAgent:
    agent_id: str
    secret: str
    records_sessions: bool


@dataclass
class Turn:
    role: str
    text: str
    offset_ms: int  # from session start
    turn_id: str


@dataclass
class SimSession:
    session_id: str
    conversation_id: str
    agent_id: str
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

    @property
    def ended_at(self) -> datetime:
        return self.started_at + timedelta(milliseconds=self.duration_ms)

    @property
    def channel(self) -> str:
        return "phone" if self.from_phone_number else "web"

    def iso(self, dt: datetime) -> str:
        return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    # --- webhook payloads (contract section 1) ----------------------------------------
    def _common(self) -> dict[str, Any]:
        out: dict[str, Any] = {"session_id": self.session_id, "conversation_id": self.conversation_id}
        if self.from_phone_number:
            out["from_phone_number"] = self.from_phone_number
            out["to_phone_number"] = self.to_phone_number
        return out

    def session_start(self) -> dict[str, Any]:
        return {"type": "session.start", **self._common(), "turn_id": self.welcome_turn_id, "metadata": self.metadata}

    def messages(self) -> list[dict[str, Any]]:
        return [{"type": "message", **self._common(), "turn_id": t.turn_id, "text": t.text}
                for t in self.turns if t.role == "user"]

    def session_end(self) -> dict[str, Any]:
        return {
            "type": "session.end", **self._common(), "agent_id": self.agent_id,
            "started_at": self.iso(self.started_at), "ended_at": self.iso(self.ended_at),
            "duration": self.duration_ms, "transcription_duration_seconds": self.transcription_duration_seconds,
            "tts_duration_seconds": self.tts_duration_seconds, "latency": self.latency_ms,
            "ip_address": self.ip_address, "country_code": self.country_code,
            "recording_status": "enabled" if self.recording_enabled else "disabled",
            "transcript": [{"role": t.role, "text": t.text,
                            "timestamp": int(self.started_at.timestamp() * 1000) + t.offset_ms}
                           for t in self.turns],
            "metadata": self.metadata,
        }

    def session_update(self) -> dict[str, Any] | None:
        if self.recording_outcome is None:
            return None
        body: dict[str, Any] = {"type": "session.update", **self._common(), "recording_status": self.recording_outcome,
                                "metadata": self.metadata}
        if self.recording_outcome == "completed":
            body["recording_url"] = f"https://api.layercode.com/v1/agents/{self.agent_id}/sessions/{self.session_id}/recording"
            body["recording_duration"] = round(self.duration_ms / 1000, 3)
        else:
            body["error_message"] = "recording processing failed"
        return body

    # --- REST record (contract section 3) ----------------------------------------------
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
            "session_id": self.session_id, "agent_id": self.agent_id, "conversation_id": self.conversation_id,
            "started_at": self.iso(self.started_at), "ended_at": self.iso(self.ended_at),
            "duration_ms": self.duration_ms, "latency_ms": self.latency_ms,
            "transcription_duration_seconds": self.transcription_duration_seconds,
            "tts_duration_seconds": self.tts_duration_seconds, "metadata": self.metadata,
            "ip_address": self.ip_address, "country_code": self.country_code,
            "transcript": exchanges, "recording_status": status,
        }
        if self.from_phone_number:
            rec.update(from_phone_number=self.from_phone_number, from_phone_country=self.from_phone_country,
                       to_phone_number=self.to_phone_number, to_phone_country=self.to_phone_country)
        if status == "completed":
            rec["recording_url"] = f"/v1/agents/{self.agent_id}/sessions/{self.session_id}/recording"
        return rec

    def _exchange(self, user: Turn | None, assistant: Turn | None) -> dict[str, Any]:
        first = user or assistant
        assert first is not None
        return {"timestamp": self.iso(self.started_at + timedelta(milliseconds=first.offset_ms)),
                "user_message": user.text if user else None,
                "assistant_message": assistant.text if assistant else None,
                "latency_ms": round(self.latency_ms, 1) if user and assistant else None}

    # --- the recording -----------------------------------------------------------------
    @property
    def recording_samples(self) -> int:
        return self.duration_ms * SAMPLE_RATE // 1000

    # --- ground truth --------------------------------------------------------------------
    def truth(self) -> dict[str, Any]:
        turns = self.turns
        words = {r: sum(len(t.text.split()) for t in turns if t.role == r) for r in ("user", "assistant")}
        return {
            "session_id": self.session_id, "conversation_id": self.conversation_id, "agent_id": self.agent_id,
            "scenario": self.scenario, "channel": self.channel,
            "started_at": self.iso(self.started_at), "ended_at": self.iso(self.ended_at),
            "duration_ms": self.duration_ms, "latency_ms": self.latency_ms,
            "transcription_duration_seconds": self.transcription_duration_seconds,
            "tts_duration_seconds": self.tts_duration_seconds,
            "country_code": self.country_code, "from_phone_number": self.from_phone_number,
            "to_phone_number": self.to_phone_number,
            "turns": len(turns), "user_turns": sum(t.role == "user" for t in turns),
            "assistant_turns": sum(t.role == "assistant" for t in turns),
            "user_words": words["user"], "assistant_words": words["assistant"],
            "turn_texts": [[t.role, t.text] for t in turns],
            "recording_state": self.recording_outcome or ("disabled" if not self.recording_enabled else "in_progress"),
            "recording_duration_s": round(self.recording_samples / SAMPLE_RATE, 3) if self.recording_outcome == "completed" else None,
            "expected_sentiment": self.expected_sentiment, "expected_outcome": self.expected_outcome,
            "caller_name": self.caller_name, "metadata": self.metadata,
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
            c = conversations.setdefault(s.conversation_id, {
                "conversation_id": s.conversation_id, "agent_id": s.agent_id, "sessions": 0,
                "started_at": s.iso(s.started_at), "ended_at": s.iso(s.ended_at), "duration_ms": 0, "turns": 0})
            c["sessions"] += 1
            c["ended_at"] = max(c["ended_at"], s.iso(s.ended_at))
            c["duration_ms"] += s.duration_ms
            c["turns"] += len(s.turns)
        return {"seed": self.seed,
                "agents": [{"agent_id": a.agent_id, "records_sessions": a.records_sessions} for a in self.agents],
                "sessions": sessions, "conversations": list(conversations.values())}


def _id(r: random.Random, prefix: str) -> str:
    return f"{prefix}_{r.getrandbits(96):024x}"


def _phone(r: random.Random, prefix: str) -> str:
    return prefix + "".join(str(r.randint(0, 9)) for _ in range(10 if prefix == "+1" else 9))


def default_agents(seed: int, count: int = 3) -> list[SimAgent]:
    r = random.Random(f"agents-{seed}")
    return [SimAgent(agent_id=f"ag_{name}", secret=hashlib.sha256(f"{seed}-{name}-{r.random()}".encode()).hexdigest()[:40],
                     records_sessions=(i != count - 1))
            for i, name in enumerate(["support", "sales", "booking", "billing", "intake"][:count])]


def generate_batch(calls: int, *, seed: int = 0, base_time: datetime | None = None,
                   agents: list[SimAgent] | None = None, reconnect_rate: float = 0.12,
                   recording_failure_rate: float = 0.08) -> SimBatch:
    """`calls` conversations; some reconnect (a second session, same conversation_id)."""
    r = random.Random(seed)
    base = (base_time or datetime(2026, 11, 20, 9, 0, tzinfo=UTC)).astimezone(UTC)
    base = base.replace(microsecond=base.microsecond // 1000 * 1000)  # the wire carries milliseconds
    batch = SimBatch(seed=seed, agents=agents or default_agents(seed))
    for _ in range(calls):
        agent = r.choices(batch.agents, weights=[5, 3, 2, 2, 1][: len(batch.agents)])[0]
        conversation_id = _id(r, "conv")
        start = base + timedelta(milliseconds=r.randint(0, 8 * 3600 * 1000))
        n_sessions = 2 if r.random() < reconnect_rate else 1
        telephony = r.random() < 0.55
        country, dial, _ = r.choices(COUNTRIES, weights=[c[2] for c in COUNTRIES])[0]
        from_phone = _phone(r, dial) if telephony else None
        to_phone = _phone(r, "+1") if telephony else None
        metadata = {"customer_tier": r.choice(["free", "pro", "enterprise"]), "campaign": r.choice(["organic", "spring_promo"])}
        for seq in range(n_sessions):
            welcome, script = pick_script(r)
            turns_spec = [("assistant", welcome if seq == 0 else "Welcome back. Let's continue."), *script.turns]
            offset = 0
            turns: list[Turn] = []
            for role, text in turns_spec:
                turns.append(Turn(role, text, offset, _id(r, "turn")))
                offset += int(len(text.split()) / 2.6 * 1000) + r.randint(400, 2500)
            duration_ms = max(offset + r.randint(500, 4000), 1500)
            if script.scenario == "short_call":
                duration_ms = r.randint(1500, 6000)
                offset = 0
                for t in turns:
                    t.offset_ms = min(t.offset_ms, duration_ms - 500)
            user_words = sum(len(t.text.split()) for t in turns if t.role == "user")
            asst_words = sum(len(t.text.split()) for t in turns if t.role == "assistant")
            recorded = agent.records_sessions
            outcome = None
            if recorded:
                outcome = "failed" if r.random() < recording_failure_rate else "completed"
            session = SimSession(
                session_id=_id(r, "sess"), conversation_id=conversation_id, agent_id=agent.agent_id, sequence=seq,
                scenario=script.scenario, started_at=start, duration_ms=duration_ms,
                latency_ms=round(math.exp(r.gauss(math.log(650), 0.35)), 1),
                transcription_duration_seconds=round(user_words / 2.6 + r.uniform(0.2, 1.5), 2),
                tts_duration_seconds=round(asst_words / 2.8, 2),
                ip_address=None if telephony else f"203.0.113.{r.randint(1, 254)}",
                country_code=country, from_phone_number=from_phone, to_phone_number=to_phone,
                from_phone_country=country if telephony else None, to_phone_country="US" if telephony else None,
                metadata=metadata, welcome_turn_id=turns[0].turn_id, turns=turns,
                recording_enabled=recorded, recording_outcome=outcome,
                expected_sentiment=script.sentiment, expected_outcome=script.outcome, caller_name=script.caller_name)
            batch.sessions.append(session)
            start = session.ended_at + timedelta(milliseconds=r.randint(2000, 20000))
    return batch


__all__ = ["SimAgent", "SimBatch", "SimSession", "Turn", "generate_batch", "default_agents"]
