"""A dbt started before it is needed: its start-up paid while the run waits for the warehouse.

Every dbt invocation costs a few seconds before its first model (importing dbt, reading the
project's parse state): on a loaded 2-core host, about 5 s of a run's 12 s dbt step (issue 27,
bench/freshness_bench.py --steady). A run that waits for the warehouse (another run holds it)
has nothing to do meanwhile, so the dbt resource starts a **warm dbt** as the run starts: a
process that imports dbt, parses the project, then waits on a Unix socket beside the run.

dagster-dbt runs the `layercode-dbt` executable (this module's `client`) as it would run `dbt`.
The client hands its arguments, working directory and environment to the warm dbt of the
process that started it (found by that process's id) and relays its output and exit status:
dagster-dbt sees dbt's own JSON log lines, exactly as from the dbt CLI. A warm dbt serves one
invocation, then exits (the next run starts its own). With no warm dbt to reach (none started,
one already used, or it died), the client runs the real dbt instead: never slower than before.

The project's vars are read when a model is compiled, not when the project is parsed, so one
parse serves any `--vars` (the pipeline's tests build through it: tests/test_incremental_runs.py
checks what a run built and tested; tests/test_warm_dbt.py the relay itself).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the line that ends a warm invocation's output: the exit status, never a dbt log line
EXIT_MARK = "\x00layercode-dbt-exit:"
# a warm dbt nobody called (the run failed before its dbt step, or skipped it) exits after this
IDLE_LIMIT_S = 3600.0


def socket_path(pid: int) -> Path:
    """Where the warm dbt of process `pid` listens."""
    return Path(tempfile.gettempdir()) / f"layercode-dbt-{pid}.sock"


def real_dbt() -> str:
    """The dbt beside this Python (the virtualenv's), else PATH's."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else "dbt"


# --- the run's side --------------------------------------------------------------------------


def start_warm_dbt(project_dir: str, profiles_dir: str | None) -> subprocess.Popen:
    """Start this process's warm dbt (a process that parses the project now and serves this
    process's next dbt invocation). Its own messages go to <socket>.log."""
    path = socket_path(os.getpid())
    path.unlink(missing_ok=True)
    # bound and listening before the child starts: a dbt step that comes at once waits in the
    # backlog for the parse instead of finding no socket (and running a second, cold dbt)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    log = open(path.with_suffix(".log"), "w")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                __name__,
                "serve",
                str(path),
                str(listener.fileno()),
                project_dir,
                profiles_dir or project_dir,
            ],  # fmt: skip
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


def serve(path: Path, listener_fd: int, project_dir: str, profiles_dir: str) -> int:
    parent = int(path.stem.rsplit("-", 1)[1])  # the process that started it (its socket's name)
    server = socket.socket(fileno=listener_fd)  # bound and listening already (start_warm_dbt)
    from dbt.cli.main import dbtRunner  # the import this process exists to pay early

    # the project's own parse state lives in target/warm (dagster-dbt's prepare writes target/)
    parsed = dbtRunner().invoke(
        [
            "parse",
            "--quiet",
            "--project-dir",
            project_dir,
            "--profiles-dir",
            profiles_dir,
            "--target-path",
            str(Path(project_dir) / "target" / "warm"),
        ]  # fmt: skip
    )
    manifest = parsed.result if parsed.success else None
    print(f"warm dbt: parsed ({'ok' if manifest is not None else parsed.exception})", flush=True)
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
    os.environ.clear()
    os.environ.update(request["env"])
    # dbt's output (its JSON log lines) goes to the client, as the CLI's goes to its pipe
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(conn.fileno(), 1)
    os.dup2(conn.fileno(), 2)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    # the parse is of this project: an invocation elsewhere (dagster-dbt runs a large selection
    # from a copy of the project with its own selectors.yml) parses its own
    here = os.path.realpath(os.environ.get("DBT_PROJECT_DIR") or request["cwd"]) == os.path.realpath(project_dir)
    try:
        result = dbtRunner(manifest=manifest if here else None).invoke(request["argv"])
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
    request = {"argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}
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
        sys.exit(serve(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]))
    sys.exit(client())


if __name__ == "__main__":
    main()
