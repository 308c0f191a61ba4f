"""Call-analytics pipeline for Layercode voice agents.

Kept import-light on purpose: the webhook listener imports `layercode_pipeline.contract`
and `layercode_pipeline.config` and must not pay for Dagster or dbt at start-up.
"""

__version__ = "0.1.0"
