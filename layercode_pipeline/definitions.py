"""The Dagster code location: every definition under `defs/` (load_from_defs_folder), the
resources from the one settings module, and the in-process executor.

In-process, because every step of a run writes the one warehouse (the pool lets one run at a
time anyway): a process per step would pay the code location's import for nothing.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg

from layercode_pipeline.defs.resources import resources_from_settings


def build_definitions() -> dg.Definitions:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        loaded = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return dg.Definitions.merge(
        loaded, dg.Definitions(resources=resources_from_settings(), executor=dg.in_process_executor)
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
