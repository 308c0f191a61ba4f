"""Providers of call analysis.

* `OpenAIProvider`: the official `openai` client, chat completions with structured
  outputs parsed into the configured pydantic model; works with any OpenAI-compatible
  server through `base_url`. The SDK retries 429/5xx honouring `Retry-After`.
* `OfflineProvider`: deterministic rules and a lexicon (VADER) sentiment analyser, for
  when no key is configured. Every row it makes says `provider = 'offline'`; it is not an
  LLM and does not pretend to be one.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from layercode_pipeline.lib.enrichment.analysis import (AnswerRejected, EnrichmentSettings, check_analysis,
                                                        system_prompt)
from layercode_pipeline.lib.enrichment.redact import CARD_NUMBER
from layercode_pipeline.lib.transcripts import TurnText

OFFLINE_MODEL = "offline-rules-v1"


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


class OpenAIProvider:
    name = "openai"

    def __init__(self, settings: EnrichmentSettings, schema: type[BaseModel], *, api_key: str, model: str,
                 base_url: str | None = None, timeout_s: float = 60.0, max_retries: int = 4,
                 max_output_tokens: int = 800):
        from openai import AsyncOpenAI

        self.settings = settings
        self.schema = schema
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.client = AsyncOpenAI(api_key=api_key, base_url=base_url or None, timeout=timeout_s,
                                  max_retries=max_retries)

    async def aclose(self) -> None:
        await self.client.close()

    async def analyse(self, turns: list[TurnText], text: str) -> Analysis:
        import openai

        started = time.perf_counter()
        try:
            completion = await self.client.chat.completions.parse(
                model=self.model,
                messages=[{"role": "system", "content": system_prompt(self.settings)},
                          {"role": "user", "content": f"Transcript:\n{text}"}],
                response_format=self.schema,
                max_completion_tokens=self.max_output_tokens,
            )
        except (ValidationError, ValueError, openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError) as exc:
            return Analysis(None, latency_ms=_ms(started), error=f"malformed answer: {type(exc).__name__}: {str(exc)[:300]}")
        except openai.APIStatusError as exc:
            return Analysis(None, latency_ms=_ms(started), error=f"API error {exc.status_code}: {type(exc).__name__}")
        except openai.APIError as exc:
            return Analysis(None, latency_ms=_ms(started), error=f"API error: {type(exc).__name__}")
        usage = completion.usage
        tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        message = completion.choices[0].message
        if message.refusal:
            return Analysis(None, *tokens, _ms(started), error=f"refused: {message.refusal[:300]}")
        if message.parsed is None:
            return Analysis(None, *tokens, _ms(started), error="malformed answer: no parsed content")
        try:
            result = check_analysis(message.parsed.model_dump(mode="json"))
        except AnswerRejected as exc:
            return Analysis(None, *tokens, _ms(started), error=f"malformed answer: {exc}")
        return Analysis(result, *tokens, _ms(started))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


# --- offline -----------------------------------------------------------------------------

_NAME = re.compile(r"\b(?:my name is|my name's|this is|i am|i'm)\s+([A-Z][a-z'’-]+(?:\s+[A-Z][a-z'’-]+)?)")
_NOT_NAMES = {"Calling", "Just", "Sorry", "Here", "Fine", "Good", "Okay", "Not", "Very", "So", "Really", "The"}
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-zA-Z']+")
_STOP = set("a an the and or but if to of in on for with at by from is are was were be been it this that i you we "
            "he she they me my your our us can will would could should do does did have has had not no so just "
            "please thanks thank okay ok hi hello yes".split())


class OfflineProvider:
    """Rules and a lexicon, deterministic, free, and honest about what it is."""

    name = "offline"
    model = OFFLINE_MODEL

    def __init__(self, settings: EnrichmentSettings):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.settings = settings
        self.vader = SentimentIntensityAnalyzer()

    async def aclose(self) -> None:
        return None

    async def analyse(self, turns: list[TurnText], text: str) -> Analysis:
        started = time.perf_counter()
        user = [t.text for t in turns if t.role == "user"]
        agent = [t.text for t in turns if t.role == "assistant"]
        everything = " ".join(t.text for t in turns).lower()
        scores = [self.vader.polarity_scores(u)["compound"] for u in user]
        score = sum(scores) / len(scores) if scores else 0.0
        if scores and max(scores) >= 0.4 and min(scores) <= -0.4:
            sentiment = "mixed"
        elif score >= 0.25:
            sentiment = "positive"
        elif score <= -0.25:
            sentiment = "negative"
        else:
            sentiment = "neutral"
        outcome = self._outcome(user, agent, everything)
        topics = [name for name, words in self.settings.topics.items() if any(w in everything for w in words)] or \
            (["other"] if "other" in self.settings.topics else [])
        result: dict[str, Any] = {
            "summary": self._summary(turns),
            "caller_name": self._caller_name(user),
            "sentiment": sentiment,
            "sentiment_score": round(score, 4),
            "outcome": outcome,
            "topics": topics,
            "quality_score": self._quality(sentiment, outcome, agent),
            "quality_rationale": f"rule-based: outcome {outcome}, caller sentiment {sentiment}",
            "compliance_flags": {c.name: self._check(c, turns) for c in self.settings.compliance_checks},
            "action_items": self._actions(outcome, everything),
        }
        if self.settings.custom_fields:
            result["custom_fields"] = {f.name: self._custom(f, user, everything) for f in self.settings.custom_fields}
        return Analysis(check_analysis(result), latency_ms=_ms(started))

    @staticmethod
    def _caller_name(user: list[str]) -> str | None:
        for text in user:
            match = _NAME.search(text)
            if match and match.group(1).split()[0] not in _NOT_NAMES:
                return match.group(1)
        return None

    @staticmethod
    def _outcome(user: list[str], agent: list[str], everything: str) -> str:
        if any(k in everything for k in ("voicemail", "leave a message", "after the tone")):
            return "voicemail"
        if any(k in everything for k in ("transfer you", "transferring you", "human agent", "escalat")):
            return "escalated"
        if len(user) <= 1 and sum(len(u.split()) for u in user) <= 3:
            return "abandoned"
        last_agent = " ".join(agent[-2:]).lower()
        if any(k in last_agent for k in ("please don't", "use the app", "call back later", "can't help", "cannot help")):
            return "unresolved"
        return "resolved"

    @staticmethod
    def _quality(sentiment: str, outcome: str, agent: list[str]) -> int:
        score = {"resolved": 4, "escalated": 3, "unresolved": 2, "abandoned": 3, "voicemail": 3}[outcome]
        score += {"positive": 1, "negative": -1}.get(sentiment, 0)
        return max(1, min(5, score))

    @staticmethod
    def _summary(turns: list[TurnText]) -> str:
        """Extractive: the highest-scoring caller and agent sentences, in order, at most three."""
        sentences = [(i, t.role, s) for i, t in enumerate(turns) for s in _SENTENCE.split(t.text) if s.strip()]
        if not sentences:
            return "No conversation took place."
        freq = Counter(w for _, _, s in sentences for w in _WORD.findall(s.lower()) if w not in _STOP)

        def weight(s: str) -> float:
            words = [w for w in _WORD.findall(s.lower()) if w not in _STOP]
            return sum(freq[w] for w in words) / (len(words) + 1) if words else 0.0

        candidates = [x for x in sentences if not (x[0] == 0 and x[1] == "assistant")] or sentences
        best = sorted(candidates, key=lambda x: -weight(x[2]))[:3]
        return " ".join(f"{'Caller' if r == 'user' else 'Agent'}: {s.strip()}" for _, r, s in sorted(best))

    @staticmethod
    def _check(check: Any, turns: list[TurnText]) -> bool:
        texts = [t.text for t in turns if check.speaker == "any" or t.role == check.speaker]
        if check.detect == "card_number":
            return any(CARD_NUMBER.search(t) for t in texts)
        return any(k.lower() in t.lower() for t in texts for k in check.keywords)

    @staticmethod
    def _actions(outcome: str, everything: str) -> list[str]:
        actions = []
        if outcome == "escalated":
            actions.append("Follow up on the escalation to a human agent.")
        if "refund" in everything:
            actions.append("Confirm the refund was processed.")
        if "technician" in everything:
            actions.append("Schedule the technician visit.")
        return actions

    @staticmethod
    def _custom(f: Any, user: list[str], everything: str) -> Any:
        if f.type == "boolean" and f.keywords:
            return any(k in everything for k in f.keywords)
        if f.allowed_values and set(f.allowed_values) >= {"english", "spanish"}:
            spanish = sum(w in " ".join(user).lower().split() for w in ("hola", "gracias", "quiero", "pedido", "buenos"))
            return "spanish" if spanish >= 2 else "english"
        return None  # the offline provider cannot answer free-form custom fields
