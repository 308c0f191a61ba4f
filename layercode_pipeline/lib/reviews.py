"""Reviews: what a person confirmed or corrected about a call, kept durably, then ingested.

The dashboard appends each review as one JSON line to `<data>/reviews/reviews-<date>.jsonl`
and fsyncs it before the page says saved: like the landing, the files are only ever appended
to, one whole `write` per line, so a crash leaves at most a partial last line, which the
ingest never reads (it reads up to the last newline and resumes there). The `raw_reviews`
asset copies new lines into `raw.reviews` (a line it cannot use into `raw.review_rejects`),
and dbt publishes them as `marts.fct_reviews`.
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from layercode_pipeline.landing.durable import fsync_dir, write_whole
from layercode_pipeline.lib.enrichment.analysis import OUTCOMES, SENTIMENTS

MAX_COMMENT = 2000


class ReviewRefused(ValueError):
    """A review that cannot be kept: the message says why, for the reviewer."""


class FlaggedTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    position: int = Field(ge=1)
    comment: str = Field(default="", max_length=MAX_COMMENT)


# what a review keeps of the enrichment the reviewer was shown (dashboard/review.py's shown_from)
SHOWN_KEYS = frozenset(
    {"provider", "model", "prompt_version", "caller_name", "outcome", "sentiment", "topics", "quality_score"}
)
MAX_SHOWN_BYTES = 4096


class Review(BaseModel):
    """One review of one session. `shown` is the enrichment the reviewer was shown (provider,
    model and its answers), so agreement is measured against what they judged."""

    model_config = ConfigDict(extra="forbid")

    review_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    session_id: str = Field(min_length=1, max_length=200)
    reviewer: str = Field(min_length=1, max_length=100)
    reviewed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    caller_name: str | None = Field(default=None, max_length=200)
    outcome: Literal[OUTCOMES]  # type: ignore[valid-type]
    sentiment: Literal[SENTIMENTS]  # type: ignore[valid-type]
    topics: list[str] = []
    quality_score: int = Field(ge=1, le=5)
    comment: str = Field(default="", max_length=MAX_COMMENT)
    flagged_turns: list[FlaggedTurn] = []
    shown: dict[str, Any] = {}

    @field_validator("shown")
    @classmethod
    def _shown_is_small(cls, value: dict[str, Any]) -> dict[str, Any]:
        """What the enrichment said: its known keys only, and small (a client could send anything)."""
        unknown = sorted(set(value) - SHOWN_KEYS)
        if unknown:
            raise ValueError(f"unknown keys {unknown[:5]}")
        if len(orjson.dumps(value)) > MAX_SHOWN_BYTES:
            raise ValueError(f"over {MAX_SHOWN_BYTES} bytes")
        return value

    @field_validator("caller_name", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return value.strip() or None if isinstance(value, str) else value


def build_review(values: dict[str, Any], *, known_sessions: set[str] | None, topics: list[str]) -> Review:
    """A review from a form's values, or ReviewRefused naming what is wrong."""
    try:
        review = Review.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'review'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ReviewRefused(f"not saved: {problems}") from None
    if known_sessions is not None and review.session_id not in known_sessions:
        raise ReviewRefused(f"not saved: no session {review.session_id!r} in the warehouse's serving copy")
    unknown = sorted(set(review.topics) - set(topics))
    if unknown:
        raise ReviewRefused(f"not saved: topics {unknown} are not in the enrichment config's topics")
    return review


class ReviewLog:
    """The append-only review files of one data directory."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._lock = threading.Lock()

    def append(self, review: Review) -> Path:
        """Write the review as one line and fsync it (and a new file's directory entry)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"reviews-{review.reviewed_at:%Y-%m-%d}.jsonl"
        line = orjson.dumps(review.model_dump(mode="json")) + b"\n"
        with self._lock:
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # another dashboard process appending to the same file
                write_whole(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.directory)
        return path

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("reviews-*.jsonl")) if self.directory.is_dir() else []

    def reviews(self, session_id: str | None = None) -> Iterator[Review]:
        """Every whole, valid line (the dashboard's history; the ingest reads by offset)."""
        for path in self.files():
            for line in path.read_bytes().split(b"\n")[:-1]:
                try:
                    review = Review.model_validate(orjson.loads(line))
                except (orjson.JSONDecodeError, ValidationError):
                    continue
                if session_id is None or review.session_id == session_id:
                    yield review


def ingest_reviews(con: duckdb.DuckDBPyConnection, log: ReviewLog) -> dict[str, int]:
    """Copy the review lines written since the last ingest into raw.reviews. Idempotent: a
    review already there (its id) is not inserted again."""
    offsets = dict(con.execute("select source_file, bytes_read from raw.review_files").fetchall())
    now = datetime.now(UTC)
    counts = {"reviews": 0, "rejected": 0, "files_read": 0}
    rows: list[tuple[Any, ...]] = []
    rejects: list[tuple[Any, ...]] = []
    progress: list[tuple[str, int]] = []
    for path in log.files():
        start = offsets.get(path.name, 0)
        with path.open("rb") as fh:
            fh.seek(start)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # whole lines only: a line being written is read next time
        if end <= 0:
            continue
        counts["files_read"] += 1
        pos = start
        for line in data[:end].split(b"\n")[:-1]:
            try:
                review = Review.model_validate(orjson.loads(line))
                rows.append(
                    (
                        review.review_id,
                        review.session_id,
                        review.reviewer,
                        review.reviewed_at,
                        review.caller_name,
                        review.outcome,
                        review.sentiment,
                        review.topics,
                        review.quality_score,
                        review.comment or None,
                        orjson.dumps([t.model_dump() for t in review.flagged_turns]).decode(),
                        orjson.dumps(review.shown).decode(),
                        path.name,
                        now,
                    )
                )
            except (orjson.JSONDecodeError, ValidationError) as exc:
                rejects.append(
                    (path.name, pos, str(exc).splitlines()[0][:500], line[:2000].decode(errors="replace"), now)
                )
            pos += len(line) + 1
        progress.append((path.name, start + end))
    con.execute("begin transaction")
    try:
        if rows:
            before = con.execute("select count(*) from raw.reviews").fetchone()[0]  # type: ignore[index]
            con.executemany(
                "insert into raw.reviews values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict do nothing", rows
            )
            counts["reviews"] = con.execute("select count(*) from raw.reviews").fetchone()[0] - before  # type: ignore[index]
        if rejects:
            con.executemany("insert into raw.review_rejects values (?, ?, ?, ?, ?)", rejects)
            counts["rejected"] = len(rejects)
        for name, read in progress:
            con.execute(
                "insert or replace into raw.review_files values (?, ?, ?)",
                [name, read, now],
            )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return counts
