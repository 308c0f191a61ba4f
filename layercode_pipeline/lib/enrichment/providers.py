"""Providers of call analysis.

* `OpenAIProvider`: the official `openai` client, chat completions with structured
  outputs parsed into the configured pydantic model; works with any OpenAI-compatible
  server through `base_url`. The SDK retries 429/5xx honouring `Retry-After`.
* `OfflineProvider` (`offline.py`): deterministic rules and a lexicon (VADER) sentiment
  analyser, for when no key is configured. Every row it makes says `provider = 'offline'`;
  it is not an LLM and does not pretend to be one.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ValidationError

from layercode_pipeline.lib.enrichment.analysis import AnswerRejected, EnrichmentSettings, check_analysis, system_prompt
from layercode_pipeline.lib.enrichment.interface import (  # noqa: F401 - the interface, re-exported
    Analysis,
    Provider,
    elapsed_ms,
)
from layercode_pipeline.lib.transcripts import TurnText


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        settings: EnrichmentSettings,
        schema: type[BaseModel],
        *,
        api_key: str,
        model: str,
        base_url: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        max_output_tokens: int = 800,
    ):
        from openai import AsyncOpenAI

        self.settings = settings
        self.schema = schema
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.client = AsyncOpenAI(
            api_key=api_key, base_url=base_url or None, timeout=timeout_s, max_retries=max_retries
        )

    async def aclose(self) -> None:
        await self.client.close()

    async def analyse(self, turns: list[TurnText], text: str) -> Analysis:
        import openai

        started = time.perf_counter()
        try:
            completion = await self.client.chat.completions.parse(
                model=self.model,
                messages=[
                    {"role": "system", "content": system_prompt(self.settings)},
                    {"role": "user", "content": f"Transcript:\n{text}"},
                ],
                response_format=self.schema,
                max_completion_tokens=self.max_output_tokens,
            )
        except (
            ValidationError,
            ValueError,
            openai.LengthFinishReasonError,
            openai.ContentFilterFinishReasonError,
        ) as exc:
            return Analysis(
                None, latency_ms=elapsed_ms(started), error=f"malformed answer: {type(exc).__name__}: {str(exc)[:300]}"
            )
        except openai.APIStatusError as exc:
            return Analysis(
                None, latency_ms=elapsed_ms(started), error=f"API error {exc.status_code}: {type(exc).__name__}"
            )
        except openai.APIError as exc:
            return Analysis(None, latency_ms=elapsed_ms(started), error=f"API error: {type(exc).__name__}")
        usage = completion.usage
        tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        message = completion.choices[0].message
        if message.refusal:
            return Analysis(None, *tokens, elapsed_ms(started), error=f"refused: {message.refusal[:300]}")
        if message.parsed is None:
            return Analysis(None, *tokens, elapsed_ms(started), error="malformed answer: no parsed content")
        try:
            result = check_analysis(message.parsed.model_dump(mode="json"))
        except AnswerRejected as exc:
            return Analysis(None, *tokens, elapsed_ms(started), error=f"malformed answer: {exc}")
        return Analysis(result, *tokens, elapsed_ms(started))


def build_provider(
    kind: str,
    settings: EnrichmentSettings,
    schema: type[BaseModel],
    *,
    api_key: str | None,
    model: str,
    base_url: str | None = None,
    timeout_s: float = 60.0,
    max_retries: int = 4,
) -> Provider:
    """`openai`, `offline`, or `auto` (openai when a key is configured, else offline)."""
    if kind not in ("auto", "openai", "offline"):
        raise ValueError(f"unknown provider {kind!r}: use auto, openai or offline")
    if kind == "openai" and not api_key:
        raise ValueError("provider openai needs OPENAI_API_KEY")
    if kind == "openai" or (kind == "auto" and api_key):
        return OpenAIProvider(
            settings,
            schema,
            api_key=api_key or "",
            model=model,
            base_url=base_url,
            timeout_s=timeout_s,
            max_retries=max_retries,
        )
    from layercode_pipeline.lib.enrichment.offline import OfflineProvider

    return OfflineProvider(settings)
