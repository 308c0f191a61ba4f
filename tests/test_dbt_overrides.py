"""`defs/dbt/project.py` overrides three private dagster-dbt members (to skip `dbt --version`
and an unused in-process adapter, and to parse with the dbt beside this Python). pyproject
pins dagster-dbt to the minor version they were written against; this test fails loudly,
naming the member, when an upgrade renames or reshapes one."""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import tomllib
from pathlib import Path

from dagster_dbt import DagsterDbtProjectPreparer, DbtCliResource
from packaging.requirements import Requirement

from layercode_pipeline.defs.dbt.project import DbtParser, LayercodeDbtCli

ROOT = Path(__file__).resolve().parents[1]

# (base class, member, how it must look, our subclass that overrides it)
OVERRIDDEN = [
    (DbtCliResource, "_cli_version", "cached_property (self)", LayercodeDbtCli),
    (DbtCliResource, "_initialize_dbt_core_adapter", "method (self, args)", LayercodeDbtCli),
    (DagsterDbtProjectPreparer, "_prepare_manifest", "method (self, project)", DbtParser),
]


def shape(member: object) -> str:
    if isinstance(member, functools.cached_property):
        return f"cached_property ({', '.join(inspect.signature(member.func).parameters)})"
    return f"method ({', '.join(inspect.signature(member).parameters)})"


def test_the_private_dagster_dbt_members_we_override_are_still_there():
    installed = importlib.metadata.version("dagster-dbt")
    for base, name, expected, ours in OVERRIDDEN:
        member = inspect.getattr_static(base, name, None)
        assert member is not None, f"dagster-dbt {installed} has no {base.__name__}.{name}: update {ours.__name__}"
        assert shape(member) == expected, (
            f"dagster-dbt {installed} changed {base.__name__}.{name} to {shape(member)}: update {ours.__name__}"
        )
        assert name in vars(ours), f"{ours.__name__} no longer overrides {name}: drop it from this list"


def test_dagster_dbt_is_pinned_to_the_tested_minor_version():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [pin] = [Requirement(d) for d in deps if Requirement(d).name == "dagster-dbt"]
    installed = importlib.metadata.version("dagster-dbt")
    assert installed in pin.specifier, (installed, str(pin.specifier))
    assert any(s.operator == "<" for s in pin.specifier), "pin an upper bound: the overrides are private API"
