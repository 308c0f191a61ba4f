"""A simulated batch written straight to a landing segment, as the listener would have landed
it (no HTTP on the way): for benches and tests that need many calls fast."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import orjson

from layercode_pipeline.contract.landing import build_envelope

from .generate import SimBatch


def write_segment(landing: Path, batch: SimBatch, *, received_at: datetime, name: str) -> int:
    """Every event of `batch` as one sealed segment under `landing` (its `dt=`/`hour=`
    partition from `received_at`). Returns the number of sessions."""
    part = landing / f"dt={received_at:%Y-%m-%d}" / f"hour={received_at:%H}"
    part.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in batch.sessions:
        events = [s.session_start(), *s.messages(), s.session_end()]
        update = s.session_update()
        if update:
            events.append(update)
        for e in events:
            body = orjson.dumps(e)
            lines.append(
                build_envelope(
                    received_at=received_at,
                    agent_id=s.agent_id,
                    event_type=e["type"],
                    content_sha256=hashlib.sha256(body).hexdigest(),
                    body=body,
                    headers={},
                    writer_id="simulated",
                )
            )
    (part / f"{name}.jsonl").write_bytes(b"".join(lines))
    return len(batch.sessions)
