"""The enrichment interface: what a provider is and what it answers. The providers
(`providers.OpenAIProvider`, `offline.OfflineProvider`) sit beside it, the factory
(`providers.build_provider`) above them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from layercode_pipeline.lib.transcripts import TurnText


@dataclass
class Analysis:
    result: dict[str, Any] | None
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    name: str
    model: str

    async def analyse(self, turns: list[TurnText], text: str) -> Analysis: ...

    async def aclose(self) -> None: ...


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
