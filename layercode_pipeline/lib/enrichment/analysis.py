"""What is asked of a provider: the configured analysis schema and the prompt."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model

DEFAULT_CONFIG = Path(__file__).with_name("default_config.yaml")
SENTIMENTS = ("positive", "neutral", "negative", "mixed")
OUTCOMES = ("resolved", "unresolved", "escalated", "abandoned", "voicemail")
FIELD_TYPES: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool}


class ComplianceCheck(BaseModel):
    name: str
    description: str
    speaker: Literal["user", "assistant", "any"] = "any"
    keywords: list[str] = []
    detect: Literal["card_number"] | None = None


class CustomField(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    type: Literal["string", "integer", "number", "boolean"] = "string"
    description: str
    allowed_values: list[str] | None = None
    keywords: list[str] = []  # used by the offline provider only


class EnrichmentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_version: str = "v1"
    # instructions per prompt version, added to the system prompt: write a v2 beside v1 and
    # compare them with `layercode-pipeline evaluate --prompt-version v1 --prompt-version v2`
    prompt_instructions: dict[str, str] = {}
    topics: dict[str, list[str]]
    compliance_checks: list[ComplianceCheck] = []
    custom_fields: list[CustomField] = []
    prices: dict[str, dict[str, float]] = {}

    @classmethod
    def load(cls, path: str | Path | None = None) -> EnrichmentSettings:
        return cls.model_validate(yaml.safe_load(Path(path or DEFAULT_CONFIG).read_text()))

    def cost_usd(self, model: str, input_tokens: int, output_tokens: int) -> float | None:
        price = self.prices.get(model)
        if price is None:
            return None
        return round(input_tokens / 1e6 * price.get("input", 0) + output_tokens / 1e6 * price.get("output", 0), 8)


def build_analysis_model(settings: EnrichmentSettings) -> type[BaseModel]:
    """The pydantic model sent as the structured-output schema (strict: every field required,
    nullable where 'unknown' is a valid answer)."""
    strict = ConfigDict(extra="forbid")
    # Literals built at run time from the configuration: mypy checks what they are used in
    topic: Any = Literal[tuple(settings.topics)] if settings.topics else str
    # models built at run time from the configuration: fields mypy cannot see
    checks = create_model(
        "ComplianceFlags",
        __config__=strict,
        **{  # type: ignore[call-overload]
            c.name: (bool, Field(description=c.description)) for c in settings.compliance_checks
        },
    )
    fields: dict[str, Any] = {
        "summary": (str, Field(description="What the call was about and how it ended, in at most three sentences.")),
        "caller_name": (str | None, Field(description="The caller's name if they said it, else null.")),
        "sentiment": (Literal[SENTIMENTS], Field(description="The caller's overall sentiment.")),
        "sentiment_score": (float, Field(description="-1 (very negative) to 1 (very positive).")),
        "outcome": (
            Literal[OUTCOMES],
            Field(
                description="resolved, unresolved, escalated (to a human), abandoned (caller left early) or voicemail."
            ),
        ),
        "topics": (list[topic], Field(description="Topics discussed, from the allowed list.")),
        "quality_score": (int, Field(description="The agent's performance from 1 (poor) to 5 (excellent).")),
        "quality_rationale": (str, Field(description="One line explaining the quality score.")),
        "compliance_flags": (checks, Field(description="One boolean per compliance check.")),
        "action_items": (list[str], Field(description="Follow-ups someone must do after the call.")),
    }
    if settings.custom_fields:
        custom: dict[str, Any] = {}
        for f in settings.custom_fields:
            base: Any = Literal[tuple(f.allowed_values)] if f.allowed_values else FIELD_TYPES[f.type]
            custom[f.name] = (base | None, Field(description=f.description))
        fields["custom_fields"] = (
            create_model("CustomFields", __config__=strict, **custom),
            Field(description="Extra fields; null when the call does not say."),
        )
    return create_model("SessionAnalysis", __config__=strict, **fields)


def schema_version(model: type[BaseModel]) -> str:
    return hashlib.sha256(json.dumps(model.model_json_schema(), sort_keys=True).encode()).hexdigest()[:12]


class AnswerRejected(ValueError):
    """The provider answered, but not within the schema's rules."""


def check_analysis(analysis: dict[str, Any]) -> dict[str, Any]:
    """Rules a JSON schema cannot state for every provider."""
    if not 1 <= analysis["quality_score"] <= 5:
        raise AnswerRejected(f"quality_score {analysis['quality_score']} is outside 1..5")
    if not -1 <= analysis["sentiment_score"] <= 1:
        raise AnswerRejected(f"sentiment_score {analysis['sentiment_score']} is outside -1..1")
    return analysis


def system_prompt(settings: EnrichmentSettings) -> str:
    checks = "\n".join(f"- {c.name}: {c.description}" for c in settings.compliance_checks) or "- (none)"
    custom = "\n".join(f"- {f.name}: {f.description}" for f in settings.custom_fields) or "- (none)"
    instructions = settings.prompt_instructions.get(settings.prompt_version)
    return (
        "You analyse transcripts of phone and web calls between a caller and a voice agent.\n"
        "Answer only from the transcript. Personal data was replaced by placeholders: [PHONE], [EMAIL], [CARD], [NUMBER].\n"
        f"Allowed topics: {', '.join(settings.topics)}.\n"
        f"Compliance checks (true when the statement holds):\n{checks}\n"
        f"Custom fields:\n{custom}\n"
        + (f"Instructions:\n{instructions.strip()}\n" if instructions else "")
        + f"Prompt version: {settings.prompt_version}."
    )
