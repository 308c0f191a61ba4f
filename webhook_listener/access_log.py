"""One structured JSON line per request, handed to logging in batches.

Creating a `logging.LogRecord` per request cost about a tenth of the listener's throughput
(py-spy under bench/listener_bench.py), so lines are serialised on the request path and
emitted through the `webhook_listener.access` logger as one record of up to `max_lines`
lines: every second, when the batch is full, and at shutdown. With the CLI's formatter
(`%(message)s`) the output is still exactly one JSON object per line.
"""

from __future__ import annotations

import logging
import time

import orjson

access_logger = logging.getLogger("webhook_listener.access")


class AccessLog:
    def __init__(self, logger: logging.Logger = access_logger, max_lines: int = 512):
        self.logger = logger
        self.max_lines = max_lines
        self._lines: list[bytes] = []

    def record(
        self,
        started: float,
        agent_id: str,
        event_type: str | None,
        session_id: str | None,
        status: int,
        error: str | None = None,
    ) -> None:
        """Never a body, a header or a secret: only what identifies the request and its outcome."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self._lines.append(
            orjson.dumps(
                {
                    "ts": time.time(),
                    "agent_id": agent_id,
                    "type": event_type,
                    "session_id": session_id,
                    "status": status,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                    "error": error,
                }
            )
        )
        if len(self._lines) >= self.max_lines:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        self.logger.info(b"\n".join(lines).decode())
        for handler in self.logger.handlers:
            handler.flush()
