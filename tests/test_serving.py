"""BI readers on serving/analytics.duckdb never block the pipeline and are never blocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from layercode_pipeline.demo import DEMO_API_KEY, materialize_all, run_demo
from layercode_pipeline.simulator import SimulatorAPI, deliver, generate_batch, listener_secrets_json

READER = textwrap.dedent("""
    import sys, time, duckdb
    path, stop = sys.argv[1], sys.argv[2]
    import os
    con = duckdb.connect(path, read_only=True)   # held open for the whole run, like a BI tool
    queries = errors = 0
    print("ready", flush=True)
    while not os.path.exists(stop):
        try:
            con.execute("select count(*), sum(duration_ms) from marts.fct_sessions").fetchall()
            queries += 1
        except Exception as exc:
            errors += 1
            print("error", exc, file=sys.stderr, flush=True)
        time.sleep(0.005)
    print(queries, errors, flush=True)
""")


def test_reader_keeps_querying_during_a_full_materialisation(tmp_path, listener_factory):
    data = tmp_path / "data"
    first = run_demo(data, 10, seed=5, processing_delay_s=0.0)
    serving = data / "serving" / "analytics.duckdb"
    before = (
        duckdb.connect(str(serving), read_only=True).execute("select count(*) from marts.fct_sessions").fetchone()[0]
    )
    assert before == len(first.batch.sessions)

    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(serving), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout.readline().strip() == "ready"

    more = generate_batch(15, seed=6)  # new calls arrive through a listener process, then the full graph runs
    listener = listener_factory(data, env={"LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(more)})
    assert deliver(more, listener.url + "/agents/{agent_id}/webhook").failed == 0
    listener.stop()
    api = SimulatorAPI(api_key=DEMO_API_KEY)
    api.register([*first.batch.sessions, *more.sessions], ready_in_s=0)
    with api.serve() as server:
        materialize_all(data, api_url=server.url + "/v1", api_key=DEMO_API_KEY, grace_minutes=0)

    stop.touch()
    out, err = reader.communicate(timeout=60)
    queries, errors = map(int, out.split())
    assert errors == 0, err
    assert queries > 10
    after = duckdb.connect(str(serving), read_only=True)
    assert after.execute("select count(*) from marts.fct_sessions").fetchone()[0] == before + len(more.sessions)
    assert not list(serving.parent.glob(".*.tmp*"))


OLD_DUCKDB = "1.1.3"  # the oldest DuckDB the serving copy promises to open (SERVING_STORAGE_VERSION)
OLD_READER = textwrap.dedent("""
    import json, os, sys, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)
    out = {"version": duckdb.__version__, "marts": {}, "parquet": {}}
    for (table,) in con.execute("select table_name from duckdb_tables() where schema_name = 'marts'").fetchall():
        out["marts"][table] = len(con.execute(f'select * from marts."{table}"').fetchall())  # every column, typed
        folder = os.path.join(sys.argv[2], table)  # the large marts: one file per day (Hive partitions)
        files = f"read_parquet('{folder}/*/*.parquet', hive_partitioning = true)" if os.path.isdir(folder) \
            else f"read_parquet('{folder}.parquet')"
        out["parquet"][table] = len(duckdb.connect().execute(f"select * from {files}").fetchall())
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def old_duckdb(tmp_path_factory):
    """A separate virtual environment with DuckDB 1.1 from the package registry, as a BI tool bundles it."""
    venv = tmp_path_factory.mktemp("duckdb_1_1")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"duckdb=={OLD_DUCKDB}", "pytz"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if pip.returncode != 0:
        pytest.skip(f"could not install duckdb=={OLD_DUCKDB} from the package registry: {pip.stderr[-500:]}")
    return venv / "bin" / "python"


def test_the_serving_copy_and_parquet_files_open_in_duckdb_1_1(tmp_path, old_duckdb):
    import json

    from layercode_pipeline.lib.serving_copy import publish_serving_copy
    from layercode_pipeline.lib.warehouse import Warehouse

    data = tmp_path / "data"
    result = run_demo(data, 12, seed=31, processing_delay_s=0.0)
    serving = data / "serving"
    published = publish_serving_copy(
        Warehouse.at(None, data_dir=data), serving
    )  # what the asset ran, once more: idempotent, and now by what changed (nothing)
    assert not published.whole and published.rows_copied["fct_sessions"] == 0
    counts = published.counts
    assert {
        "fct_sessions",
        "fct_turns",
        "fct_conversations",
        "agg_daily_call_metrics",
        "dim_agents",
        "fct_data_events",
    } <= set(counts)
    assert counts["fct_sessions"] == len(result.batch.sessions)
    r = subprocess.run(
        [str(old_duckdb), "-c", OLD_READER, str(serving / "analytics.duckdb"), str(serving / "parquet")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    read = json.loads(r.stdout)
    assert read["version"] == OLD_DUCKDB
    assert read["marts"] == counts and read["parquet"] == counts
    from layercode_pipeline.lib.serving_copy import INCREMENTAL

    partitioned = set(INCREMENTAL)
    assert sorted(p.stem for p in (serving / "parquet").glob("*.parquet")) == sorted(set(counts) - partitioned)
    assert {p.name for p in (serving / "parquet").iterdir() if p.is_dir()} == partitioned


def test_json_columns_are_utf8_strings_in_the_parquet_files(shared_marts, tmp_path):
    """DuckDB's JSON type lands in Parquet as bytes with a JSON annotation, which polars and
    older pyarrow read as Binary: the published files carry JSON as UTF-8 strings."""
    import polars as pl

    from layercode_pipeline.lib.serving_copy import publish_serving_copy

    publish_serving_copy(shared_marts.warehouse, tmp_path / "serving")
    paths = sorted((tmp_path / "serving" / "parquet" / "fct_sessions").glob("*/part.parquet"))
    path = paths[0]
    con = duckdb.connect()
    try:
        converted, logical = con.execute(
            "select converted_type, coalesce(logical_type::varchar, '') from parquet_schema(?) where name = 'metadata'",
            [str(path)],
        ).fetchone()
    finally:
        con.close()
    assert converted == "UTF8" and "JSON" not in logical.upper(), (converted, logical)
    frame = pl.concat([pl.read_parquet(p, columns=["session_id", "metadata"]) for p in paths])
    assert frame.schema["metadata"] == pl.String
    row = frame.filter(pl.col("session_id") == "s_match").row(0, named=True)
    assert json.loads(row["metadata"]) == {"tenant_id": "acme"}


def test_a_publish_updates_the_other_file_of_the_pair_in_place_and_swaps_the_link(shared_marts, tmp_path):
    """The serving copy is a pair of files and a link to one of them: a publish updates the
    other one in place (what changed since that file's own publish, no copy of the history),
    then swaps the link. A reader that still holds the other file gets a copy instead, and
    keeps its snapshot; a whole publish leaves one file."""
    from layercode_pipeline.lib.serving_copy import STATE_FILE, publish_serving_copy

    serving = tmp_path / "serving"
    link = serving / "analytics.duckdb"

    def pair() -> set[str]:
        return {p.name for p in serving.glob(".analytics-*.duckdb")}

    def current() -> str:
        assert link.is_symlink()
        return os.readlink(link)

    assert publish_serving_copy(shared_marts.warehouse, serving).whole
    first = current()
    assert pair() == {first}
    second = publish_serving_copy(shared_marts.warehouse, serving)  # the pair's second file: a copy
    assert not second.whole and current() != first and pair() == {first, current()}
    files = pair()
    third = publish_serving_copy(shared_marts.warehouse, serving)  # the first file, updated in place
    assert not third.whole and current() == first == third.file and pair() == files and third.in_place
    assert third.counts == second.counts and third.rows_copied["fct_sessions"] == 0
    # a BI tool still holds the other file (it opened it before the last swap)
    (held,) = files - {first}
    reader = subprocess.Popen(
        [sys.executable, "-c", READER_THAT_HOLDS, str(serving / held)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip()  # it has the file open
        publish_serving_copy(shared_marts.warehouse, serving)
        assert current() not in files  # a fresh copy, not the held file
        assert pair() == {first, current()}  # the held file left the directory; the reader keeps it
        out, _ = reader.communicate(b"again\n", timeout=60)
        assert int(out.strip()) == third.counts["fct_sessions"]
    finally:
        reader.kill()
    con = duckdb.connect(str(link), read_only=True)
    try:
        assert con.execute("select count(*) from marts.fct_sessions").fetchone()[0] == third.counts["fct_sessions"]
    finally:
        con.close()
    # a whole publish (an erasure or retention removes the state): one file, no older copy left
    (serving / STATE_FILE).unlink()
    assert publish_serving_copy(shared_marts.warehouse, serving).whole
    assert pair() == {current()}


# opens the file read-only (DuckDB's shared lock), says so, then reads it again when asked
READER_THAT_HOLDS = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print(con.execute("select count(*) from marts.fct_sessions").fetchone()[0], flush=True)
sys.stdin.readline()
print(con.execute("select count(*) from marts.fct_sessions").fetchone()[0], flush=True)
"""


def duration_ms(session: str, source: str, database: Path | None = None) -> int | None:
    """A session's `duration_ms` in `source` (a table of `database`, opened read-only as a BI
    tool opens it, or a `read_parquet(...)`); None without its row."""
    con = duckdb.connect(str(database) if database else ":memory:", read_only=database is not None)
    try:
        rows = con.execute(f"select duration_ms from {source} where session_id = ?", [session]).fetchall()
    finally:
        con.close()
    return rows[0][0] if rows else None


# opens the warehouse for writing from another process, as the next run's ingest would
WRITER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("update marts.fct_sessions set duration_ms = -1, built_at = now() where session_id = ?", [sys.argv[2]])
con.close()
"""


def test_a_publish_lets_the_warehouse_go_before_it_writes_the_parquet_files(shared_marts, tmp_path):
    """The warehouse is read, then let go (`warehouse_read`), before the Parquet files, the
    checkpoint and the swap, which read only the serving copy: the next writer may take the
    warehouse then, and what it writes is not in this publish."""
    import shutil

    from layercode_pipeline.lib.serving_copy import publish_serving_copy
    from layercode_pipeline.lib.warehouse import Warehouse

    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(shared_marts.warehouse.path, data / "warehouse.duckdb")
    warehouse = Warehouse.at(None, data_dir=data)
    serving = tmp_path / "serving"
    publish_serving_copy(warehouse, serving)  # the first: a whole copy
    session = "s_match"
    seen: dict[str, object] = {}

    def next_writer() -> None:
        # another process writes the warehouse: it would fail while this process had it attached
        done = subprocess.run(
            [sys.executable, "-c", WRITER, str(warehouse.path), session], capture_output=True, text=True
        )
        seen["writer"] = (done.returncode, done.stderr[-500:])
        seen["parquet_before"] = {p: p.stat().st_mtime_ns for p in (serving / "parquet").rglob("*.parquet")}
        seen["link"] = os.readlink(serving / "analytics.duckdb")

    published = publish_serving_copy(warehouse, serving, warehouse_read=next_writer)
    assert seen["writer"] == (0, ""), seen["writer"]
    # the callback came before the swap and before the Parquet files were written
    assert os.readlink(serving / "analytics.duckdb") == published.file != seen["link"]
    after = {p: p.stat().st_mtime_ns for p in (serving / "parquet").rglob("*.parquet")}
    assert set(seen["parquet_before"]) <= set(after)
    assert any(after[p] != seen["parquet_before"].get(p) for p in after)  # written after the callback
    # this publish read the warehouse before the writer changed it
    assert duration_ms(session, "marts.fct_sessions", serving / "analytics.duckdb") != -1
    # the next publish carries the change (the writer stamped the row as rebuilt)
    publish_serving_copy(warehouse, serving)
    assert duration_ms(session, "marts.fct_sessions", serving / "analytics.duckdb") == -1


def test_readers_get_a_publish_before_its_parquet_files_and_a_crash_between_loses_no_change(shared_marts, tmp_path):
    """The link is swapped before the Parquet files are written (DuckDB readers need not wait
    for them). A publish that fails in between leaves its marker: the next one rewrites every
    Parquet file, even when it starts from a copy of the current file (a reader holds the
    other), whose watermarks already include the change the Parquet files missed."""
    import shutil

    from layercode_pipeline.lib.serving_copy import PARQUET_PENDING, publish_serving_copy
    from layercode_pipeline.lib.warehouse import Warehouse

    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(shared_marts.warehouse.path, data / "warehouse.duckdb")
    warehouse = Warehouse.at(None, data_dir=data)
    serving = tmp_path / "serving"
    first = publish_serving_copy(warehouse, serving)
    session = "s_match"
    subprocess.run([sys.executable, "-c", WRITER, str(warehouse.path), session], check=True)
    con = duckdb.connect(str(serving / "analytics.duckdb"), read_only=True)
    try:
        (day,) = con.execute(
            "select cast(session_date_at at time zone 'UTC' as date) from marts.fct_sessions where session_id = ?",
            [session],
        ).fetchone()
    finally:
        con.close()
    # the changed day's partition cannot be written: a file stands where its folder goes
    folder = serving / "parquet" / "fct_sessions" / f"session_date={day}"
    shutil.rmtree(folder)
    folder.write_text("in the way")
    with pytest.raises(OSError):
        publish_serving_copy(warehouse, serving)
    folder.unlink()
    # DuckDB readers already have the change; the Parquet files do not
    link = serving / "analytics.duckdb"
    assert os.readlink(link) != first.file and (serving / PARQUET_PENDING).exists()
    assert duration_ms(session, "marts.fct_sessions", link) == -1
    parquet = f"read_parquet('{serving}/parquet/fct_sessions/*/part.parquet', hive_partitioning = true)"
    assert duration_ms(session, parquet) is None  # its day's file was never written
    # a reader holds the pair's other file: the next publish copies the current one, whose
    # watermarks say nothing changed since; the marker still has every Parquet file rewritten
    reader = subprocess.Popen(
        [sys.executable, "-c", READER_THAT_HOLDS, str(serving / first.file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip()
        again = publish_serving_copy(warehouse, serving)
    finally:
        reader.kill()
    assert not again.in_place and again.rows_copied["fct_sessions"] == 0
    assert duration_ms(session, parquet) == -1
    assert not (serving / PARQUET_PENDING).exists()
    con = duckdb.connect()
    try:
        assert con.execute(f"select count(*) from {parquet}").fetchone()[0] == again.counts["fct_sessions"]
    finally:
        con.close()


def test_publishes_take_turns(shared_marts, tmp_path):
    """Two publishes never write the serving copy at once: the second waits for the first's
    lock (it may hold it after letting the warehouse go)."""
    import fcntl
    import threading

    from layercode_pipeline.lib.serving_copy import PUBLISH_LOCK, publish_serving_copy

    serving = tmp_path / "serving"
    serving.mkdir()
    held = open(serving / PUBLISH_LOCK, "a+")  # noqa: SIM115 - another publish, between its phases
    fcntl.flock(held, fcntl.LOCK_EX)
    done = threading.Event()
    publisher = threading.Thread(target=lambda: (publish_serving_copy(shared_marts.warehouse, serving), done.set()))
    publisher.start()
    try:
        assert not done.wait(2.0)  # it waits for the lock...
        assert not (serving / "analytics.duckdb").exists()
    finally:
        fcntl.flock(held, fcntl.LOCK_UN)
        held.close()
    publisher.join(120)
    assert done.is_set()  # ...and publishes once it is free
    assert (serving / "analytics.duckdb").is_symlink()
