"""Reviews as the workbench keeps them: refused with a clear message when they cannot be kept,
appended and fsynced, and ingested exactly once, a bad or half-written line never stopping
the rest."""

from __future__ import annotations

import pytest

from layercode_pipeline.defs.resources import StorageResource
from layercode_pipeline.lib.reviews import ReviewLog, ReviewRefused, build_review, ingest_reviews

TOPICS = ["billing", "order_status"]


def values(**overrides):
    return {
        "session_id": "sess_1",
        "reviewer": "ana",
        "outcome": "resolved",
        "sentiment": "neutral",
        "topics": ["billing"],
        "quality_score": 4,
        **overrides,
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"session_id": "sess_unknown"}, "no session 'sess_unknown'"),
        ({"outcome": "happy"}, "outcome: Input should be"),
        ({"sentiment": "furious"}, "sentiment: Input should be"),
        ({"quality_score": 9}, "quality_score: Input should be less than or equal to 5"),
        ({"topics": ["weather"]}, "topics ['weather'] are not in the enrichment config"),
        ({"comment": "x" * 3000}, "comment: String should have at most 2000 characters"),
    ],
)
def test_a_review_that_cannot_be_kept_is_refused_with_why(overrides, message):
    with pytest.raises(ReviewRefused, match="not saved") as refused:
        build_review(values(**overrides), known_sessions={"sess_1"}, topics=TOPICS)
    assert message in str(refused.value)


def test_reviews_are_ingested_once_and_a_bad_line_is_recorded_not_fatal(tmp_path):
    storage = StorageResource(data_dir=str(tmp_path / "data"))
    log = ReviewLog(storage.paths.reviews)
    first = build_review(values(caller_name="  "), known_sessions=None, topics=TOPICS)
    assert first.caller_name is None  # a blank name is no name
    path = log.append(first)
    with storage.connect() as con:
        assert ingest_reviews(con, log)["reviews"] == 1
        assert ingest_reviews(con, log)["reviews"] == 0  # read from where it stopped
    # a hand-edited bad line, a good one, and a line still being written (no newline yet)
    second = build_review(values(session_id="sess_2", outcome="escalated"), known_sessions=None, topics=TOPICS)
    with path.open("ab") as fh:
        fh.write(b'{"not": "a review"}\n')
    log.append(second)
    with path.open("ab") as fh:
        fh.write(b'{"review_id": "half')
    with storage.connect() as con:
        counts = ingest_reviews(con, log)
        assert (counts["reviews"], counts["rejected"]) == (1, 1)
        assert sorted(con.execute("select session_id, outcome from raw.reviews").fetchall()) == [
            ("sess_1", "resolved"),
            ("sess_2", "escalated"),
        ]
        (error,) = con.execute("select error from raw.review_rejects").fetchone()
        assert "validation error" in error
        # the half-written line is read once it is whole
        with path.open("ab") as fh:
            fh.write(b'"}\n')
        assert ingest_reviews(con, log)["rejected"] == 1
        # the offsets moved past it: nothing read twice
        assert ingest_reviews(con, log) == {"reviews": 0, "rejected": 0, "files_read": 0}
    assert [r.session_id for r in log.reviews()] == ["sess_1", "sess_2"]
