"""What the Dagster UI shows of each asset, job, sensor and schedule: its description is Markdown
there, where a bare `<placeholder>` is taken for an HTML tag and eaten (issue 42)."""

from __future__ import annotations

import re

from layercode_pipeline.definitions import build_definitions

PLACEHOLDER = re.compile(r"<[A-Za-z_][^<>\s]*>")


def outside_code(text: str) -> str:
    """The text with its `code spans` removed."""
    return re.sub(r"`[^`]*`", "", text)


def test_no_description_has_a_placeholder_markdown_would_eat():
    defs = build_definitions()
    described = [(str(spec.key), spec.description or "") for a in defs.assets or [] for spec in a.specs]
    described += [(job.name, job.description or "") for job in defs.jobs or [] if hasattr(job, "description")]
    eaten = [(name, m.group()) for name, text in described for m in PLACEHOLDER.finditer(outside_code(text))]
    assert eaten == [], eaten
