"""One dbt kept warm for a pipeline: imported and parsed once, forked for each invocation.

Every dbt invocation pays for importing dbt and its adapter (2 s of CPU) and for parsing the
project (1.3 s more with partial parsing) before its first model. Paid in every pipeline run,
that CPU was taken from the build of the run ahead of it: under steady traffic the two cores
are saturated, and a dbt process per run spent 12 s of CPU (issue 27, bench/freshness_bench.py
--steady).

So the pipeline keeps one **warm dbt** per data directory: a process that imports dbt and its
DuckDB adapter once, parses the project as the last pipeline build did, and forks a child for
each dbt invocation. The child starts with all of that in its memory, runs the one command and
exits; the warm dbt itself never opens the warehouse. Each run's dbt resource starts it when it
is not running (`ensure_warm_dbt`). It runs in a session of its own (the run that started it
may end), and exits after `idle_s` seconds without an invocation, or when its directory is
removed.

dagster-dbt runs the `layercode-dbt` executable (this module's `client`) as it would run `dbt`.
The client finds the warm dbt of the target directory dagster-dbt gives it (`DBT_TARGET_PATH`,
under `<data>/dbt/`), hands it its arguments, working directory and environment, and relays its
output and exit status: dagster-dbt sees dbt's own JSON log lines, exactly as from the dbt CLI.
With no warm dbt to reach (none started, one that exited or died, a target directory of
another kind), the client runs the real dbt instead: never slower than a cold start.

The parsed manifest goes to an invocation only with the same vars, project and profiles as the
parse, and only while no file of the project has changed since (a manifest names the warehouse
its vars name in every relation): any other invocation parses for itself, as the dbt CLI would,
and the warm dbt then parses ahead again (tests/test_warm_dbt.py; tests/test_incremental_runs.py
builds through it).

Two more costs of every build go (measured on a copy of the 1M-session warehouse, one new
session, bench figures in the commit): what the warm dbt holds is frozen out of the garbage
collector's sight (each child's collections walked it all), and the pipeline's own builds write
run_results.json without dbt's manifest.json, which nothing of the pipeline reads.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import importlib
import importlib.metadata
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from layercode_pipeline.config import adopt_environment, build_environment, inherited_environment

# the first line of a served invocation: the process running it (the client sends it signals)
PID_MARK = "\x00layercode-dbt-pid:"
# the line that ends a warm invocation's output: the exit status, never a dbt log line
EXIT_MARK = "\x00layercode-dbt-exit:"
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
# a project's files that are dbt's own output, not its input
NOT_PROJECT_FILES = {"target", "logs", ".user.yml"}


class UnsafeRuntimeDir(RuntimeError):
    """The directory for the warm dbt's socket is not one only this user can enter."""


def runtime_dir() -> Path:
    """`$TMPDIR/layercode-<uid>`: made 0700 by this user, and refused (no warm dbt: each build
    runs the real dbt) unless it is a real directory this user owns that nobody else can enter.
    The socket and its lock live there: another local user can neither connect to the warm dbt
    nor put a socket of their own where a build would send its request (a squatter in the
    shared temp directory received a build's whole environment, secrets included)."""
    path = Path(tempfile.gettempdir()) / f"layercode-{os.getuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UnsafeRuntimeDir(
            f"{path} is not a directory only user {os.getuid()} can enter (owner {info.st_uid}, "
            f"mode {stat.filemode(info.st_mode)}): the warm dbt stays off, each build runs dbt itself"
        )
    return path


def socket_path(home: Path | str) -> Path:
    """Where the warm dbt of `home` (a pipeline's `<data>/dbt`, the parent of its target
    directories) listens, in this user's private `runtime_dir()`. Named after the directory, this
    Python and the code the warm dbt runs (dbt's, its adapter's, this module's), so an upgraded
    install never reaches an old one."""
    return runtime_dir() / socket_name(home)


def socket_name(home: Path | str) -> str:
    """The socket's file name in `runtime_dir()` (see `socket_path`)."""
    here = Path(__file__).read_bytes()
    versions = [importlib.metadata.version(name) for name in ("dbt-core", "dbt-duckdb")]
    key = json.dumps([os.path.realpath(home), sys.executable, os.getuid(), versions, hashlib.sha256(here).hexdigest()])
    return f"dbt-{hashlib.sha256(key.encode()).hexdigest()[:20]}.sock"


def real_dbt() -> str:
    """The dbt beside this Python (the virtualenv's), else PATH's."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else "dbt"


# --- the run's side --------------------------------------------------------------------------


def ensure_warm_dbt(state_dir: str, idle_s: float) -> int | None:
    """Start the warm dbt of the pipeline whose builds use the target directory `state_dir`,
    unless it is running: the new process's id, or None when one was running already. It parses
    ahead as the last build in `state_dir` did, if any. Its own messages go to <socket>.log."""
    home = Path(state_dir).parent
    home.mkdir(parents=True, exist_ok=True)
    try:
        path = socket_path(home)
    except UnsafeRuntimeDir as exc:
        print(f"layercode-dbt: {exc}", file=sys.stderr)
        return None
    # held by the warm dbt for its whole life: free means none is running (never through a link)
    lock = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        path.unlink(missing_ok=True)  # one that died
        # bound and listening before the child starts: a dbt step that comes at once waits in the
        # backlog for the imports instead of finding no socket (and running a second, cold dbt)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            os.chmod(path, 0o600)  # the user only: a caller hands dbt its environment
            listener.listen(16)
            with open(path.with_suffix(".log"), "a") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", __name__, "serve", str(path), str(listener.fileno()), str(lock)]
                    + [state_dir, str(idle_s)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(listener.fileno(), lock),
                    start_new_session=True,  # outlives the run that started it, and its signals
                )
            path.with_suffix(".pid").write_text(str(process.pid))  # for stop_warm_dbt
        finally:
            listener.close()  # the child's copy is the only one: if it dies, a client is refused
        return process.pid
    finally:
        os.close(lock)  # the child's copy keeps the lock


def stop_warm_dbt(state_dir: str, wait_s: float = 10.0) -> bool:
    """Stop the warm dbt of the pipeline whose builds use `state_dir`, if one is running: what
    a command that started it (the demo) does as it exits, so no process outlives it by its idle
    time. Whether one was stopped."""
    try:
        path = socket_path(Path(state_dir).parent)
    except UnsafeRuntimeDir:
        return False
    lock_path, pid_path = path.with_suffix(".lock"), path.with_suffix(".pid")
    if not lock_path.exists() or not pid_path.exists():
        return False
    lock = os.open(lock_path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: the warm dbt is running
            pass
        else:
            return False  # free: none is running (the pid file is an old one's)
        try:
            os.kill(int(pid_path.read_text().strip()), signal.SIGTERM)
        except (ValueError, ProcessLookupError):
            return False
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.05)
                continue
            path.unlink(missing_ok=True)
            pid_path.unlink(missing_ok=True)
            return True
        return False
    finally:
        os.close(lock)


# --- the warm dbt ------------------------------------------------------------------------------


def project_files(*dirs: str) -> str:
    """A digest of the project's (and profiles') files as they are now: their names, sizes and
    modification times. A manifest parsed under another digest may be out of date."""
    entries = []
    for top in sorted(set(dirs)):
        for root, subdirs, files in os.walk(top):
            if root == top:
                subdirs[:] = [d for d in subdirs if d not in NOT_PROJECT_FILES]
                files = [f for f in files if f not in NOT_PROJECT_FILES]
            for name in files:
                try:
                    st = os.stat(os.path.join(root, name))
                except OSError:
                    continue
                entries.append((os.path.relpath(os.path.join(root, name), top), st.st_size, st.st_mtime_ns))
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


def last_build(state_dir: str) -> dict | None:
    """What the last build in `state_dir` parsed with (its run_results.json): its vars and its
    project and profiles directories; None without one."""
    try:
        args = json.loads((Path(state_dir) / "run_results.json").read_text())["args"]
        return {
            "vars": args.get("vars") or {},
            "project_dir": os.path.realpath(args["project_dir"]),
            "profiles_dir": os.path.realpath(args["profiles_dir"]),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def parse_ahead(state_dir: str) -> tuple[Any, dict, str] | None:
    """The project parsed as the last build in `state_dir` was, from a copy of the directory's
    partial-parse state: (the manifest, what it was parsed with, the project files' digest
    before the parse), or None without a last build or when the parse fails."""
    from dbt.cli.main import dbtRunner

    parsed_with = last_build(state_dir)
    if parsed_with is None:
        return None
    digest = project_files(parsed_with["project_dir"], parsed_with["profiles_dir"])
    with tempfile.TemporaryDirectory(prefix="layercode-dbt-parse-") as scratch:
        state = Path(state_dir) / "partial_parse.msgpack"
        if state.exists():
            shutil.copyfile(state, Path(scratch) / state.name)
        argv = ["parse", "--quiet", "--project-dir", parsed_with["project_dir"]]
        argv += ["--profiles-dir", parsed_with["profiles_dir"], "--target-path", scratch, "--log-path", scratch]
        result = dbtRunner().invoke([*argv, "--vars", json.dumps(parsed_with["vars"])])
    return (result.result, parsed_with, digest) if result.success else None


def out_of_date(parsed: tuple[Any, dict, str] | None, state_dir: str) -> bool:
    """Whether the manifest parsed ahead no longer serves the next build: none yet, the last
    build parsed with other vars or directories, or the project's files changed."""
    if parsed is None:
        return last_build(state_dir) is not None
    _, parsed_with, digest = parsed
    if last_build(state_dir) not in (None, parsed_with):
        return True
    return project_files(parsed_with["project_dir"], parsed_with["profiles_dir"]) != digest


def invoked_with(argv: list[str], cwd: str) -> dict:
    """What an invocation parses with (as `last_build` records it): its `--vars`, and the
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


def serve(path: Path, listener_fd: int, lock_fd: int, state_dir: str, idle_s: float) -> int:
    """Serve every invocation that reaches `path`, each in a child forked for it, until idle
    for `idle_s` or the pipeline's directory is gone."""
    server = socket.socket(fileno=listener_fd)  # bound and listening already (ensure_warm_dbt)
    home = Path(state_dir).parent
    from dbt.cli.main import dbtRunner  # noqa: F401 - the imports this process exists to pay once

    for module in PRELOADED:
        importlib.import_module(module)
    parsed = parse_ahead(state_dir)
    settle()
    print(f"warm dbt {os.getpid()}: dbt imported; {'parsed ahead' if parsed else 'nothing parsed ahead'}", flush=True)
    server.settimeout(1.0)
    children: set[int] = set()
    last_call = time.monotonic()
    while True:
        # a build that ended may have left a new last build, or found the project changed:
        # parse ahead again before the next invocation is forked
        if reap(children) and out_of_date(parsed, state_dir):
            parsed = parse_ahead(state_dir)
            settle()
            print(f"warm dbt {os.getpid()}: {'parsed ahead again' if parsed else 'nothing parsed ahead'}", flush=True)
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if not children and (time.monotonic() - last_call > idle_s or not home.is_dir()):
                break
            continue
        last_call = time.monotonic()
        sys.stdout.flush()
        child = os.fork()
        if child == 0:  # the invocation's process: it returns to no loop, whatever happens
            code = 2
            try:
                server.close()
                os.close(lock_fd)  # the warm dbt's life, not this invocation's
                code = serve_one(conn, parsed, state_dir)
            finally:
                os._exit(code)
        children.add(child)
        conn.close()
    # refused from here on (a client then runs the real dbt); the lock goes with this process
    server.close()
    path.unlink(missing_ok=True)
    print(f"warm dbt {os.getpid()}: exits ({'idle' if home.is_dir() else 'its directory is gone'})", flush=True)
    return 0


def settle() -> None:
    """Leave what this process holds (dbt's modules, the manifest) out of the garbage collector's
    sight: each forked invocation's collections otherwise walked all of it, and copied every page
    they touched."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def reap(children: set[int]) -> bool:
    """Collect the children that have ended; whether any had."""
    ended = False
    for child in list(children):
        done, _ = os.waitpid(child, os.WNOHANG)
        if done:
            children.discard(child)
            ended = True
    return ended


def serve_one(conn: socket.socket, parsed: tuple[Any, dict, str] | None, state_dir: str) -> int:
    """Run one dbt invocation (in a child of the warm dbt) and send its output and status."""
    from dbt.cli.main import dbtRunner
    from dbt.contracts.results import RunExecutionResult

    conn.settimeout(None)
    request = json.loads(conn.makefile("rb").readline())
    conn.sendall(f"{PID_MARK}{os.getpid()}\n".encode())
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
    argv = list(request["argv"])
    # the manifest parsed ahead only for what it was parsed with; anything else parses anew
    manifest = None
    if parsed is not None and invoked_with(argv, request["cwd"]) == parsed[1]:
        if project_files(parsed[1]["project_dir"], parsed[1]["profiles_dir"]) == parsed[2]:
            manifest = parsed[0]
    print(f"layercode-dbt: {'the manifest parsed ahead' if manifest else 'parsing'}", file=sys.stderr)
    # The pipeline's own builds (its runs' target directory) need dbt's run_results.json and
    # never its manifest.json (the Dagster definitions read the project's): dbt writes both or
    # neither, and the manifest (1.6 MB, converted node by node after the last one, with the
    # warehouse still held) was a fifth of a build's CPU. So dbt writes neither, and the
    # results are written here.
    target = target_dir(argv)
    results_only = (
        argv[:1] == ["build"] and target is not None and os.path.realpath(target) == os.path.realpath(state_dir)
    )
    if results_only:
        argv.append("--no-write-json")
    try:
        result = dbtRunner(manifest=manifest).invoke(argv)
        code = 0 if result.success else (2 if result.exception is not None else 1)
        if results_only and target is not None and isinstance(result.result, RunExecutionResult):
            result.result.write(os.path.join(target, "run_results.json"))
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


def target_dir(args: list[str]) -> str | None:
    """The target directory of an invocation: its `--target-path`, else dagster-dbt's
    DBT_TARGET_PATH."""
    given = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--target-path"]
    return given[-1] if given else inherited_environment().get("DBT_TARGET_PATH")


def _names_motherduck(args: list[str]) -> bool:
    """Whether the invocation's warehouse is on MotherDuck (its `--vars`, else the profile's
    environment), so the build needs MOTHERDUCK_TOKEN."""
    given = " ".join(args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--vars")
    env = inherited_environment()
    named = given or env.get("LAYERCODE_WAREHOUSE", "") or env.get("LAYERCODE_WAREHOUSE_PATH", "")
    return "md:" in named


def client(argv: list[str] | None = None) -> int:
    """`layercode-dbt ARGS...`: dbt ARGS through the warm dbt of the pipeline, else the real
    dbt."""
    args = sys.argv[1:] if argv is None else argv
    target = target_dir(args)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream = None
    try:
        if target is None:
            raise ConnectionRefusedError("no target directory")
        conn.connect(str(socket_path(Path(target).parent)))
        # only what the build needs: never the pipeline's secrets
        request = {"argv": args, "cwd": os.getcwd(), "env": build_environment(motherduck=_names_motherduck(args))}
        conn.sendall(json.dumps(request).encode() + b"\n")
        stream = conn.makefile("rb")
        hello = stream.readline()  # empty if the warm dbt exited with this call in its backlog
        if not hello.startswith(PID_MARK.encode()):
            raise ConnectionResetError("the warm dbt did not take the invocation")
    except (OSError, UnsafeRuntimeDir):
        if stream is not None:
            stream.close()
        conn.close()
        dbt = real_dbt()
        os.execvp(dbt, [dbt, *args])  # no warm dbt: the real one, in this process's place
    # a signal to this process (dagster-dbt cancelling the run, a Ctrl-C) goes to the warm dbt's
    # child running the invocation, which stops as the dbt CLI would; its last lines and status
    # still come through
    served_by = int(hello[len(PID_MARK) :].strip())
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: os.kill(served_by, signum))
    out = sys.stdout.buffer
    code = None
    with stream:
        for line in stream:
            if line.startswith(EXIT_MARK.encode()):
                code = int(line[len(EXIT_MARK) :].strip() or 2)
                break
            out.write(line)
            out.flush()
    conn.close()
    if code is None:
        print("layercode-dbt: the warm dbt ended without an exit status", file=sys.stderr)
        return 2
    return code


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "serve":
        path, listener, lock, state_dir, idle_s = sys.argv[2:7]
        sys.exit(serve(Path(path), int(listener), int(lock), state_dir, float(idle_s)))
    sys.exit(client())


if __name__ == "__main__":
    main()
