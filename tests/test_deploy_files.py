"""deploy/ as written: every command the systemd units and the Compose file run exists with the
options they pass, every variable the instance config reads is in the example environment,
and the instance config loads. (systemd and Docker themselves are not run here.)"""

from __future__ import annotations

import configparser
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def commands() -> list[tuple[str, list[str]]]:
    found = []
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read(unit)
        argv = shlex.split(parser["Service"]["ExecStart"])
        found.append((unit.name, [Path(argv[0]).name, *argv[1:]]))
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        if "command" in service:
            found.append((f"compose:{name}", shlex.split(service["command"])))
    return found


@pytest.mark.parametrize("where,argv", commands(), ids=[c[0] for c in commands()])
def test_each_service_command_accepts_its_options(where, argv):
    program, args = argv[0], argv[1:]
    sub = list(itertools.takewhile(lambda a: not a.startswith("-"), args))  # `listen`, `code-server start`
    helped = subprocess.run([str(BIN / program), *sub, "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr
    for option in (a for a in args if a.startswith("-")):
        assert re.search(rf"(^|[\s,]){re.escape(option)}([\s,=]|$)", helped.stdout, re.M), f"{where}: {option}"


def test_the_instance_config_reads_only_variables_the_example_environment_sets():
    config = (DEPLOY / "dagster.yaml").read_text()
    wanted = set(re.findall(r"env: (\w+)", config))
    example = {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in (DEPLOY / "layercode.env.example").read_text().splitlines()
        if "=" in line and not line.startswith("# ---")
    }
    assert wanted and wanted <= example, wanted - example
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"postgres", "dagster-webserver", "dagster-daemon", "listener"} <= set(compose["services"])
    loaded = yaml.safe_load(config)
    assert loaded["concurrency"]["pools"]["default_limit"] == 1 and loaded["run_retries"]["enabled"] is True


def test_the_webserver_and_the_daemon_reach_the_one_code_server_deploy_runs():
    """deploy/workspace.yaml points at a code server (the daemon would otherwise start its own
    and replace it every minute), which the Compose service and the systemd unit start exactly
    as the package says (CODE_SERVER_ARGS), under the workspace's location name."""
    from layercode_pipeline.dagster_instance import CODE_SERVER_ARGS

    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    server = entry["grpc_server"]
    assert server["location_name"] == "layercode_pipeline"
    read = {server["host"]["env"], server["port"]["env"]}
    example = (DEPLOY / "layercode.env.example").read_text()
    assert all(re.search(rf"^{name}=\S", example, re.M) for name in read), read
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    for name in ("dagster-webserver", "dagster-daemon"):
        assert read <= set(compose[name]["environment"]), name
    started = dict(commands())
    for where in ("compose:code-server", "dagster-code-server.service"):
        argv = started[where]
        assert argv[0] == "dagster" and tuple(a for a in argv[1:] if a not in _host_and_port(argv)) == CODE_SERVER_ARGS


def _host_and_port(argv: list[str]) -> set[str]:
    """The `-h <host>` and `-p <port>` of a code server's command (deploy-specific)."""
    out = set()
    for flag, value in itertools.pairwise(argv):
        if flag in ("-h", "-p"):
            out |= {flag, value}
    return out


def test_dg_check_defs_and_both_workspaces_load(tmp_path):
    """Dagster's project conventions ([tool.dg], load_from_defs_folder) and the workspace files
    the README and deploy/ use load the same code location."""
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(ROOT),
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
    }
    checked = subprocess.run(
        [str(BIN / "dg"), "check", "defs"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert checked.returncode == 0 and "All definitions loaded successfully" in checked.stdout + checked.stderr, (
        checked.stdout[-2000:] + checked.stderr[-2000:]
    )
    from layercode_pipeline.dagster_instance import code_server_env, start_code_server

    # deploy/'s workspace reaches the code server deploy/ runs
    server, port = start_code_server(env, tmp_path / "code-server.log", cwd=ROOT)
    try:
        for workspace, extra in ((ROOT / "workspace.yaml", {}), (DEPLOY / "workspace.yaml", code_server_env(port))):
            validated = subprocess.run(
                [str(BIN / "dagster"), "definitions", "validate", "-w", str(workspace)],
                cwd=ROOT,
                env={**env, **extra},
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert (
                validated.returncode == 0
                and "Validation successful for code location layercode_pipeline" in validated.stdout + validated.stderr
            ), validated.stderr[-2000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)


def test_a_code_server_that_cannot_load_the_definitions_says_why(tmp_path):
    """start_code_server (the benches' and tests' code server) fails at once with the load
    error, and leaves no server behind, rather than waiting on a server with nothing to serve."""
    from layercode_pipeline.dagster_instance import start_code_server

    env = {**os.environ, "LAYERCODE_RESULT_WEBHOOKS": "not json", "DAGSTER_HOME": str(tmp_path)}
    with pytest.raises(RuntimeError, match="LAYERCODE_RESULT_WEBHOOKS"):
        start_code_server(env, tmp_path / "code-server.log", cwd=ROOT)
