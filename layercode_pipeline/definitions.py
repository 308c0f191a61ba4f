"""The Dagster code location: every definition under `defs/`, plus the resources."""

from __future__ import annotations

import warnings

import dagster as dg

import layercode_pipeline.defs
from layercode_pipeline.defs.dbt.assets import dbt_resource
from layercode_pipeline.defs.resources import layercode_api_from_env, openai_from_env, storage_from_env


def build_definitions() -> dg.Definitions:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        loaded = dg.load_definitions_from_package_module(layercode_pipeline.defs)
    return dg.Definitions.merge(loaded, dg.Definitions(resources={
        "storage": storage_from_env(),
        "layercode_api": layercode_api_from_env(),
        "dbt": dbt_resource(),
        "openai": openai_from_env(),
    }))


defs = build_definitions()
