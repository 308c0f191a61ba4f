"""One turn list per session from either transcript form (contract section 4).

The dbt model `int_transcript_turns` does the same in SQL for the warehouse; a test checks
that both give the same turns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class TurnText:
    role: str
    text: str


def turns_from_session_end(transcript: list[dict[str, Any]] | None) -> list[TurnText]:
    return [
        TurnText(str(t.get("role") or "unknown"), str(t.get("text")))
        for t in transcript or []
        if isinstance(t, dict) and t.get("text")
    ]


def turns_from_rest(transcript: list[dict[str, Any]] | None) -> list[TurnText]:
    """A REST exchange splits into a user turn then an assistant turn."""
    out: list[TurnText] = []
    for exchange in transcript or []:
        if not isinstance(exchange, dict):
            continue
        if exchange.get("user_message"):
            out.append(TurnText("user", str(exchange["user_message"])))
        if exchange.get("assistant_message"):
            out.append(TurnText("assistant", str(exchange["assistant_message"])))
    return out


def transcript_sha256(turns: list[TurnText]) -> str:
    return hashlib.sha256(orjson.dumps([[t.role, t.text] for t in turns])).hexdigest()


def render(turns: list[TurnText]) -> str:
    return "\n".join(
        f"{'Caller' if t.role == 'user' else 'Agent' if t.role == 'assistant' else t.role}: {t.text}" for t in turns
    )
