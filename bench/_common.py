"""Helpers shared by the benchmark scripts (not tests: they print figures, they assert nothing)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    print("installing wrk (Debian package)...", flush=True)
    subprocess.run(
        "apt-get install -y -q wrk >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null)",
        shell=True,
        check=True,
    )
    return shutil.which("wrk") or "wrk"


def wait_healthy(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def parse_wrk(out: str) -> dict[str, float]:
    def ms(value: str) -> float:
        num, unit = re.match(r"([\d.]+)(\w+)", value).groups()
        return float(num) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "p50_ms": ms(pct["50"]),
        "p99_ms": ms(pct["99"]),
        "socket_errors": errors.group(1) if errors else "none",
    }


def peak_rss_mb(pid: int | None = None) -> float:
    import resource

    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def dagster_home(root: Path) -> Path:
    """A DAGSTER_HOME with the instance config `layercode-pipeline demo` writes (what a new
    user runs `dagster dev` with)."""
    from layercode_pipeline.dagster_instance import initialise_instance

    return initialise_instance(root / "dagster_home")


def production_home(root: Path) -> Path:
    """A DAGSTER_HOME with the production instance config (deploy/dagster.yaml) as written,
    except its `storage:` block (Postgres), replaced by SQLite for one host."""
    import re

    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    config = (ROOT / "deploy" / "dagster.yaml").read_text()
    config = re.sub(r"(?ms)^storage:\n.*?(?=^\S)", "", config)
    (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n" + config)
    return home


def pipeline_env(home: Path, data: Path, **extra: str) -> dict[str, str]:
    """The process environment for Dagster and the listener: this data directory, no keys
    from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERCODE_", "OPENAI_", "DAGSTER_"))}
    return env | {"DAGSTER_HOME": str(home), "LAYERCODE_DATA_DIR": str(data), **extra}


def start_listener_and_daemon(
    root: Path, env: dict[str, str]
) -> tuple[subprocess.Popen, subprocess.Popen, int, float, subprocess.Popen]:
    """A listener on a free port, the code server and a dagster-daemon over deploy/'s workspace
    (their logs in `root/code-server.log` and `root/daemon.log`), as an operator runs them.
    Returns (listener, daemon, port, the start time, code server): the benches count Dagster's
    start-up from then, and say so."""
    from layercode_pipeline.dagster_instance import code_server_env, start_code_server
    from layercode_pipeline.simulator.server import free_port

    port = free_port()
    listener = subprocess.Popen(
        [PY, "-m", "layercode_pipeline.cli", "listen", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.time()
    code_server, code_port = start_code_server(env, root / "code-server.log", cwd=ROOT)
    with (root / "daemon.log").open("w") as log:  # the daemon writes through its own copy
        daemon = subprocess.Popen(
            [str(Path(PY).parent / "dagster-daemon"), "run", "-w", str(ROOT / "deploy" / "workspace.yaml")],
            env={**env, **code_server_env(code_port)},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return listener, daemon, port, started, code_server


def wait_first_ingest(instance, daemon: subprocess.Popen, root: Path, poll_s: float = 0.5) -> None:
    """Until the daemon's first ingest run succeeded (Dagster's start-up, which the benches
    count apart); the daemon's log if it exits meanwhile."""
    import dagster as dg

    while not instance.get_runs(dg.RunsFilter(job_name="ingest_job", statuses=[dg.DagsterRunStatus.SUCCESS])):
        if daemon.poll() is not None:
            raise SystemExit("the daemon exited: " + (root / "daemon.log").read_text()[-2000:])
        time.sleep(poll_s)


def stop_processes(*procs: subprocess.Popen) -> None:
    """Terminate (a process that leads its own group, such as the code server: with the run
    processes it started), wait up to 30 s each, then kill."""
    for proc in procs:
        try:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.terminate()
        except ProcessLookupError:
            pass
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
