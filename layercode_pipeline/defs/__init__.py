"""Dagster definitions, one sub-package per stage; `definitions.py` loads them all."""
