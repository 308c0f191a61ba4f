"""Progress of long library calls, for whoever shows it (the demo's live line): a record on
the `layercode_pipeline.progress` logger whose `progress` attribute is (what, done, total).
Nothing is shown unless a handler is attached: the pipeline's runs log their counts as
metadata when a step ends."""

from __future__ import annotations

import logging

PROGRESS_LOGGER = "layercode_pipeline.progress"
_log = logging.getLogger(PROGRESS_LOGGER)


def report_progress(what: str, done: int, total: int | None = None) -> None:
    """`done` of `total` (None: not known in advance) `what` so far."""
    _log.info("%s: %s/%s", what, done, total, extra={"progress": (what, done, total)})
