"""The Dagster code location: every definition under `defs/`, plus the resources."""

from __future__ import annotations

import warnings

import dagster as dg

import layercode_pipeline.defs
from layercode_pipeline.defs.resources import resources_from_settings


def build_definitions() -> dg.Definitions:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        loaded = dg.load_definitions_from_package_module(layercode_pipeline.defs)
    return dg.Definitions.merge(loaded, dg.Definitions(resources=resources_from_settings()))


defs = build_definitions()
