"""Pluggable SSE responders.

A responder is any callable `responder(event, settings)` named in configuration as
`module:function` (`LAYERCODE_RESPONDER`). It returns (or is) a sync or async iterable
whose items are `str` (spoken as `response.tts`) or `Data(content)` (sent as
`response.data`). The listener adds `turn_id` to every event and always ends the stream
with `response.end`, after a `response.error` if the responder raised.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from layercode_pipeline.config import Settings
from layercode_pipeline.contract.events import DataEvent, MessageEvent, SessionStartEvent


@dataclass(frozen=True)
class Data:
    """A `response.data` item: JSON forwarded to the client UI."""

    content: Any


ResponderItem = str | Data
# A data responder answers a `data` webhook: `answer(event, settings)` returns (or awaits to)
# the JSON Layercode forwards to the caller's browser as `response.data` (contract section 6).
DataResponder = Callable[[DataEvent, Settings], Any]
Responder = Callable[
    [SessionStartEvent | MessageEvent, Settings], Iterable[ResponderItem] | AsyncIterable[ResponderItem]
]

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """Sentence-sized chunks: Layercode speaks each as it arrives."""
    return [s for s in _SENTENCE.split(text.strip()) if s]


def default_responder(event: SessionStartEvent | MessageEvent, settings: Settings) -> Iterable[ResponderItem]:
    text = settings.welcome_message if event.type == "session.start" else settings.ack_message
    yield from sentences(text)


def load_data_responder(spec: str) -> DataResponder:
    return _load(spec)


def load_responder(spec: str) -> Responder:
    return _load(spec)


def _load(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise ValueError(f"responder must be 'module:function', got {spec!r}")
    target = getattr(importlib.import_module(module_name), attr)
    if not callable(target):
        raise TypeError(f"responder {spec!r} is not callable")
    return target
