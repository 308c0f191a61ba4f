"""An OpenAI-compatible chat-completions server for tests and benchmarks. It is not an LLM.

`POST /v1/chat/completions` answers with a JSON object that fits the request's
`response_format.json_schema` (built from the schema itself, or by a callable you give),
after an optional delay; it records every request so tests can check what was sent.
Scripted outcomes per request: `rate_limit` (429 + Retry-After), `server_error`,
`malformed` (content that does not fit the schema), `refusal`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def example_for(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """A value that satisfies `schema` (the subset structured outputs use)."""
    root = root or schema
    if "$ref" in schema:
        ref = schema["$ref"].split("/")[-1]
        return example_for(root["$defs"][ref], root)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"] or schema["anyOf"]
        return example_for(options[0], root)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: example_for(v, root) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return []
    if kind == "integer":
        return 3
    if kind == "number":
        return 0.0
    if kind == "boolean":
        return False
    return "stub answer"


class OpenAIStub:
    def __init__(
        self,
        api_key: str = "sk-test",
        delay_s: float = 0.0,
        answer: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
    ):
        self.api_key = api_key
        self.delay_s = delay_s
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._completions, methods=["POST"])])

    def script(self, *outcomes: str) -> None:
        with self._lock:
            self._script.extend(outcomes)

    async def _completions(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"error": {"message": "Incorrect API key", "type": "invalid_request_error"}}, 401)
        body = await request.json()
        with self._lock:
            self.requests.append(body)
            outcome = self._script.popleft() if self._script else "ok"
        if outcome == "rate_limit":
            return JSONResponse(
                {"error": {"message": "Rate limit reached", "type": "requests"}}, 429, headers={"retry-after": "0.2"}
            )
        if outcome == "server_error":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, 500)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if outcome == "refusal":
            message["refusal"] = "I can't help with that."
        elif outcome == "malformed":
            message["content"] = json.dumps({"summary": 42, "sentiment": "ecstatic"})
        else:
            content = example_for(schema) if schema else {}
            if self.answer is not None:
                content.update(self.answer(body, content))
            message["content"] = json.dumps(content)
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
        completion = len(message["content"] or "") // 4
        return JSONResponse(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "system_fingerprint": "stub",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
        )
