"""A dbt started before it is needed: its imports paid while the run waits for the warehouse.

Every dbt invocation pays for importing dbt and its adapter before its first model: 2.5 s of
CPU, 3-4 s on a loaded 2-core host, in every pipeline run (issue 27, bench/freshness_bench.py
--steady). A run that waits for the warehouse (another run holds it) has nothing to do
meanwhile, so the dbt resource starts a **warm dbt** as the run starts: a process that imports
dbt and its DuckDB adapter, then waits on a Unix socket beside the run.

dagster-dbt runs the `layercode-dbt` executable (this module's `client`) as it would run `dbt`.
The client hands its arguments, working directory and environment to the warm dbt of the
process that started it (found by that process's id) and relays its output and exit status:
dagster-dbt sees dbt's own JSON log lines, exactly as from the dbt CLI. A warm dbt serves one
invocation, then exits (the next run starts its own). With no warm dbt to reach (none started,
one already used, or it died), the client runs the real dbt instead: never slower than before.

The warm dbt also parses the project ahead (2-3 s more of a loaded host), with the vars of the
last pipeline run's build (its `run_results.json`, in the run target directory it is given),
from that directory's partial-parse state copied aside. It hands that manifest to dbt only for
an invocation with the same vars, project and profiles: a manifest names the warehouse its vars
name in every relation, so any other invocation parses for itself, as the dbt CLI would
(tests/test_warm_dbt.py; tests/test_incremental_runs.py builds through it).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from layercode_pipeline.config import adopt_environment, inherited_environment

# the line that ends a warm invocation's output: the exit status, never a dbt log line
EXIT_MARK = "\x00layercode-dbt-exit:"
# a warm dbt nobody called (the run failed before its dbt step, or skipped it) exits after this
IDLE_LIMIT_S = 3600.0
# what a `dbt build` imports beyond `dbt.cli.main`: imported by the warm dbt before it is called
PRELOADED = (
    "dbt.adapters.duckdb",
    "dbt.adapters.duckdb.impl",
    "dbt.task.build",
    "dbt.task.test",
    "dbt.task.run",
    "dbt.parser.manifest",
    "dbt.compilation",
    "dbt.context.providers",
)


def socket_path(pid: int) -> Path:
    """Where the warm dbt of process `pid` listens."""
    return Path(tempfile.gettempdir()) / f"layercode-dbt-{pid}.sock"


def real_dbt() -> str:
    """The dbt beside this Python (the virtualenv's), else PATH's."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else "dbt"


# --- the run's side --------------------------------------------------------------------------


def start_warm_dbt(state_dir: str | None = None) -> subprocess.Popen:
    """Start this process's warm dbt (a process that imports dbt now and serves this process's
    next dbt invocation), parsing ahead as the last build in `state_dir` (a dbt target
    directory) did, if any. Its own messages go to <socket>.log."""
    path = socket_path(os.getpid())
    path.unlink(missing_ok=True)
    # bound and listening before the child starts: a dbt step that comes at once waits in the
    # backlog for the imports instead of finding no socket (and running a second, cold dbt)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)  # the run's user only: a caller hands dbt its environment
    listener.listen(1)
    log = open(path.with_suffix(".log"), "w")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", __name__, "serve", str(path), str(listener.fileno()), state_dir or ""],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
        )
    finally:
        log.close()
        listener.close()  # the child's copy is the only one: if it dies, a client is refused


def stop_warm_dbt(process: subprocess.Popen) -> None:
    """Stop a warm dbt that was not used (a used one has exited) and remove its socket."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
    path = socket_path(os.getpid())
    path.unlink(missing_ok=True)
    path.with_suffix(".log").unlink(missing_ok=True)


# --- the warm dbt ------------------------------------------------------------------------------


def parse_ahead(state_dir: str) -> tuple[Any, dict] | None:
    """The project parsed as the last build in `state_dir` was (its vars, project and profiles
    from its run_results.json), from a copy of the directory's partial-parse state: (the
    manifest, what it was parsed with), or None without a last build or when the parse fails."""
    from dbt.cli.main import dbtRunner

    try:
        args = json.loads((Path(state_dir) / "run_results.json").read_text())["args"]
        parsed_with = {
            "vars": args.get("vars") or {},
            "project_dir": os.path.realpath(args["project_dir"]),
            "profiles_dir": os.path.realpath(args["profiles_dir"]),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None
    with tempfile.TemporaryDirectory(prefix="layercode-dbt-parse-") as scratch:
        state = Path(state_dir) / "partial_parse.msgpack"
        if state.exists():
            shutil.copyfile(state, Path(scratch) / state.name)
        argv = ["parse", "--quiet", "--project-dir", parsed_with["project_dir"]]
        argv += ["--profiles-dir", parsed_with["profiles_dir"], "--target-path", scratch, "--log-path", scratch]
        result = dbtRunner().invoke([*argv, "--vars", json.dumps(parsed_with["vars"])])
    return (result.result, parsed_with) if result.success else None


def invoked_with(argv: list[str], cwd: str) -> dict:
    """What an invocation parses with (as `parse_ahead` records it): its `--vars`, and the
    project and profiles directories dagster-dbt gives it (the environment, else its cwd)."""
    found = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--vars"]
    try:
        dbt_vars = json.loads(found[-1]) if found else {}
    except ValueError:
        dbt_vars = None  # (YAML vars: never the same as the parse's)
    env = inherited_environment()
    return {
        "vars": dbt_vars,
        "project_dir": os.path.realpath(env.get("DBT_PROJECT_DIR") or cwd),
        "profiles_dir": os.path.realpath(env.get("DBT_PROFILES_DIR") or cwd),
    }


def serve(path: Path, listener_fd: int, state_dir: str = "") -> int:
    parent = int(path.stem.rsplit("-", 1)[1])  # the process that started it (its socket's name)
    server = socket.socket(fileno=listener_fd)  # bound and listening already (start_warm_dbt)
    from dbt.cli.main import dbtRunner  # the imports this process exists to pay early

    for module in PRELOADED:
        importlib.import_module(module)
    parsed = parse_ahead(state_dir) if state_dir else None
    print(f"warm dbt: dbt imported; {'parsed ahead' if parsed else 'nothing parsed ahead'}", flush=True)
    server.settimeout(1.0)
    deadline = time.monotonic() + IDLE_LIMIT_S
    while True:
        try:
            conn, _ = server.accept()
            break
        except TimeoutError:
            if os.getppid() != parent or time.monotonic() > deadline:
                path.unlink(missing_ok=True)
                path.with_suffix(".log").unlink(missing_ok=True)
                return 0  # the run that started it has gone, or never needed it
    server.close()
    path.unlink(missing_ok=True)  # one invocation: a later client runs the real dbt
    conn.settimeout(None)
    reader = conn.makefile("rb")
    request = json.loads(reader.readline())
    os.chdir(request["cwd"])
    adopt_environment(request["env"])  # dagster-dbt's DBT_* variables among them
    # dbt's output (its JSON log lines) goes to the client, as the CLI's goes to its pipe
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(conn.fileno(), 1)
    os.dup2(conn.fileno(), 2)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    # the manifest parsed ahead only for what it was parsed with; anything else parses anew
    manifest = parsed[0] if parsed and invoked_with(request["argv"], request["cwd"]) == parsed[1] else None
    print(f"layercode-dbt: {'the manifest parsed ahead' if manifest else 'parsing'}", file=sys.stderr)
    try:
        result = dbtRunner(manifest=manifest).invoke(request["argv"])
        code = 0 if result.success else (2 if result.exception is not None else 1)
        if result.exception is not None:
            print(f"dbt failed: {result.exception}", file=sys.stderr)
    except BaseException as error:  # noqa: BLE001 - reported to the client as dbt's own failure
        print(f"dbt failed: {error!r}", file=sys.stderr)
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    conn.sendall(f"\n{EXIT_MARK}{code}\n".encode())
    conn.close()
    return code


# --- the executable dagster-dbt runs -------------------------------------------------------------


def client(argv: list[str] | None = None) -> int:
    """`layercode-dbt ARGS...`: dbt ARGS through the warm dbt of the calling process, else the
    real dbt."""
    args = sys.argv[1:] if argv is None else argv
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(socket_path(os.getppid())))
    except OSError:
        conn.close()
        dbt = real_dbt()
        os.execvp(dbt, [dbt, *args])  # no warm dbt: the real one, in this process's place
    # a signal to this process (dagster-dbt cancelling the run, a Ctrl-C) goes to the warm dbt,
    # which stops as the dbt CLI would; its last lines and status still come through
    (warm_pid, _, _) = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: os.kill(warm_pid, signum))
    request = {"argv": args, "cwd": os.getcwd(), "env": inherited_environment()}
    conn.sendall(json.dumps(request).encode() + b"\n")
    out = sys.stdout.buffer
    code = None
    with conn.makefile("rb") as stream:
        for line in stream:
            if line.startswith(EXIT_MARK.encode()):
                code = int(line[len(EXIT_MARK) :].strip() or 2)
                break
            out.write(line)
            out.flush()
    if code is None:
        print("layercode-dbt: the warm dbt ended without an exit status", file=sys.stderr)
        return 2
    return code


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "serve":
        sys.exit(serve(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else ""))
    sys.exit(client())


if __name__ == "__main__":
    main()
