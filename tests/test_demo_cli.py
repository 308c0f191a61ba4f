"""`layercode-pipeline demo`: what a newcomer runs first."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import duckdb


def run_demo_cli(data_dir, calls: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERCODE_", "OPENAI_", "DAGSTER_HOME"))}
    return subprocess.run(
        [sys.executable, "-m", "layercode_pipeline.cli", "demo", "--calls", str(calls), "--data-dir", str(data_dir)],
        env={**env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=600,
    )


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


class Terminal:
    """`layercode-pipeline demo` in a pseudo-terminal, as a newcomer runs it: rich draws its live
    lines, and Ctrl-C is the byte 0x03 typed into the terminal, which sends SIGINT to the
    whole foreground process group (the demo and the dbt it runs), as a keyboard does."""

    def __init__(self, data_dir, calls: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERCODE_", "OPENAI_", "DAGSTER_HOME"))}
        env |= {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
        argv = [
            sys.executable,
            "-m",
            "layercode_pipeline.cli",
            "demo",
            "--calls",
            str(calls),
            "--data-dir",
            str(data_dir),
        ]
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a session leader whose controlling terminal is the pty
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execve(sys.executable, argv, env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.raw = b""

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def read_until(self, needle: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text and time.monotonic() < deadline:
            if not self._read(0.2):
                return needle in self.text
        return needle in self.text

    def _read(self, wait_s: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], wait_s)
        if ready:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                return False
            if not chunk:
                return False
            self.raw += chunk
        return True

    def ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")

    def wait(self, timeout_s: float = 300) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._read(0.2)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._read(0.05):
                    pass
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"the demo did not end:\n{self.text[-3000:]}")


def conversations(data) -> tuple[int, int]:
    con = duckdb.connect(str(data / "serving" / "analytics.duckdb"), read_only=True)
    try:
        return con.execute(
            "select count(distinct conversation_id), count(*) - count(distinct session_id) from marts.fct_sessions"
        ).fetchone()
    finally:
        con.close()


def test_ctrl_c_in_a_terminal_then_the_next_run_resumes(tmp_path):
    data = tmp_path / "data"
    first = Terminal(data, 12)
    # Ctrl-C in the middle of the dbt build (the longest stage)
    assert first.read_until("✓ enriching transcripts", 300), first.text[-3000:]
    assert first.read_until("dbt build … ", 60), first.text[-3000:]  # the live line names its own stage
    time.sleep(2)
    first.ctrl_c()
    assert first.wait() == 130, first.text[-3000:]
    out = first.text
    assert "Traceback" not in out and "failed" not in out, out[-3000:]
    interrupted = [line for line in out.splitlines() if "Interrupted" in line]
    assert len(interrupted) == 1, out[-3000:]
    assert (
        interrupted[0].startswith("Interrupted during dbt build: ") and "run the demo again to resume" in interrupted[0]
    )
    assert not list((data / "landing").rglob("*.open"))  # the listener sealed its segment on the way out
    assert list((data / "landing").rglob("*.jsonl"))  # what it acknowledged is kept for the next run

    second = Terminal(data, 8)  # resumes the interrupted 12 calls; --calls is for the next new batch
    assert second.wait() == 0, second.text[-3000:]
    out = second.text
    assert "Resuming the interrupted run (seed 1000, 12 calls): its calls were all landed" in out
    labels = ["ingesting landed webhooks", "backfilling gaps", "enriching transcripts", "dbt build:",
              "publishing for BI tools", "sending results"]  # fmt: skip
    # the kept line of each stage, in the order the stages ran
    at = [out.find(f"✓ {label}") for label in labels]
    assert -1 not in at and at == sorted(at), [line for line in out.splitlines() if "✓" in line]
    assert re.search(r"✓ dbt build: models (\d+)/\1, tests (\d+)/\2", out), out[-3000:]  # dbt's own counts
    assert re.search(r"dbt build … \d+ s · models \d+/\d+, tests \d+/\d+", out)  # the live line, as they move
    assert "none sent: this run resumed an interrupted one" in out
    assert conversations(data) == (12, 0)

    # the next run is a new batch: new calls, nothing counted twice
    r = run_demo_cli(data, 8)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    assert "New batch: 8 calls over the last 30 days (seed 1001)" in r.stdout
    assert conversations(data) == (20, 0)
    assert "marts.agg_daily_call_metrics, the last 7 days" in r.stdout and ".venv/bin/dg dev" in r.stdout
    assert "by offline" in r.stdout and "serving" in r.stdout
    assert "barge-ins" in r.stdout and "barge%" in r.stdout and "Acme Support" in r.stdout  # agent names
    flat = " ".join(" ".join(line.strip(" │").split()) for line in r.stdout.splitlines())  # tables wrap
    assert "slowest week" in flat and "sentiment: positive/neutral/negative/mixed sessions" in flat
    assert "calls: conversations; sessions: their connections" in flat  # each count says what it counts
    # each hint is one line, whole (a pasted copy keeps every variable)
    lines = r.stdout.splitlines()
    assert any(
        line.strip().startswith("DAGSTER_HOME=")
        and line.rstrip().endswith(".venv/bin/dg dev")
        and "LAYERCODE_API_BASE_URL=" in line
        for line in lines
    )
    assert any(
        line.strip().startswith(f"LAYERCODE_DATA_DIR={data.resolve()} LAYERCODE_REVIEWERS=")
        and line.rstrip().endswith(".venv/bin/layercode-pipeline dashboard")
        for line in lines
    )
    assert "http://127.0.0.1:8050/review" in r.stdout  # the workbench's address
    # the audio checks' summary: recordings measured where they are kept, silent ones counted
    assert f"recordings measured in {(data / 'recordings').resolve()}: " in flat and " silent, " in flat
    assert not list((data / "landing").rglob("*.open"))  # nothing left unsealed
    # the warm dbt its runs started is stopped as the demo exits (not left for its idle time)
    from layercode_pipeline.defs.dbt.project import dbt_target_path
    from layercode_pipeline.defs.dbt.warm import socket_path

    lock = socket_path(dbt_target_path("run", data.resolve()).parent).with_suffix(".lock")
    assert lock.exists()  # one was started
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: no warm dbt holds it
    finally:
        os.close(fd)
