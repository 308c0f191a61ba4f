"""One configuration: the settings module is the only reader of the environment, and the
README's configuration table is the settings model's."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from layercode_pipeline.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def readme_table() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    assert text.count("\n## Configuration\n") == 1, "one configuration section"
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `([A-Z_]+)` \| (.*?) \| .* \| .* \|$", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} listed twice"
            rows[m.group(1)] = m.group(2)
    return rows


def rendered(default) -> str | None:
    if default is None or default == "":
        return None
    if isinstance(default, list):
        return json.dumps(default)
    return str(default)


def test_the_readme_table_is_the_settings_model():
    table = readme_table()
    fields = {Settings.env_name(name): field.default for name, field in Settings.model_fields.items()}
    assert set(table) == set(fields), "README rows and settings differ"
    for name, default in fields.items():
        cell = table[name]
        expected = rendered(default)
        if expected is None:  # no value: none, or one derived from another setting
            assert cell.startswith(("–", "`<")), (name, cell)
        else:
            assert cell == f"`{expected}`", (name, cell, expected)


def test_only_the_settings_module_reads_the_environment():
    sources = [p for folder in ("layercode_pipeline", "webhook_listener") for p in (ROOT / folder).rglob("*.py")]
    readers = re.compile(r"os\.environ(?!\[[^]]+\]\s*=)|os\.getenv|getenv\(|EnvVar\(\"")
    found = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in sources
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if readers.search(line) and p.name != "config.py"
    ]
    assert found == []


@pytest.mark.parametrize("secret", ["LAYERCODE_API_KEY", "OPENAI_API_KEY"])
def test_secrets_reach_resources_as_envvar_never_as_values(monkeypatch, secret):
    import dagster as dg

    from layercode_pipeline.defs.resources import resources_from_settings

    monkeypatch.setenv(secret, "sk-very-secret")
    resources = resources_from_settings()
    name = {"LAYERCODE_API_KEY": "layercode_api", "OPENAI_API_KEY": "openai"}[secret]
    value = resources[name].api_key
    # the resource holds the variable's name; Dagster reads the value where it is used
    assert isinstance(value, dg.EnvVar) and value.env_var_name == secret
    assert "sk-very-secret" not in repr(resources[name])


def test_the_dbt_warehouse_path_is_a_variable_not_an_environment_change(tmp_path):
    from layercode_pipeline.defs.resources import resources_from_settings

    storage = resources_from_settings(Settings(data_dir=tmp_path, promoted_metadata_keys="tenant_id"))["storage"]
    assert json.loads(storage.dbt_vars()) == {
        "warehouse_path": str(tmp_path.resolve() / "warehouse.duckdb"),
        "promoted_metadata_keys": "tenant_id",
    }
    r = subprocess.run(
        [
            "grep",
            "-rn",
            "env_var('LAYERCODE_PROMOTED",
            str(ROOT / "dbt_project" / "models"),
            str(ROOT / "dbt_project" / "dbt_project.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.stdout == ""


@pytest.mark.parametrize(
    "value",
    ['{"ag_support": "whsec_TOPSECRET', '["whsec_TOPSECRET"]', '{"ag_support": {"key": "whsec_TOPSECRET"}}'],
)
def test_a_malformed_secret_setting_is_one_line_naming_the_variable_never_the_value(tmp_path, value):
    """pydantic's own error quotes the input (here a webhook secret) in a 31-line traceback that
    names the field, not the variable."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERCODE_")}
    env |= {"LAYERCODE_WEBHOOK_SECRETS": value, "LAYERCODE_DATA_DIR": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "layercode_pipeline.cli", "listen", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "LAYERCODE_WEBHOOK_SECRETS" in lines[0], r.stderr
    assert "TOPSECRET" not in r.stderr + r.stdout and "Traceback" not in r.stderr
