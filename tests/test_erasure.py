"""Erasure that cannot lie (issue 47): a typo is not an erasure, nothing of an erased caller
comes back (a re-delivery, a call landed before the erasure and not ingested, a call after
it), no byte stays (landing files, the warehouse file's free blocks, dbt's logs, the outbox),
an erasure stopped half-way is finished by the next `forget`, and `call.erased` reaches every
endpoint however `forget` is started.

Real parts: landed segments as the listener writes them, the ingest asset, `forget` through
its CLI (CliRunner) or the library, the express sensor as the daemon ticks it, an outbox and a
receiver verifying every delivery with the `standardwebhooks` package."""

from __future__ import annotations

import errno
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from click.testing import CliRunner

from layercode_pipeline.cli import main
from layercode_pipeline.config import load_privacy_key
from layercode_pipeline.defs.ingest.assets import raw_layercode_events
from layercode_pipeline.defs.resources import ResultWebhooksResource, StorageResource
from layercode_pipeline.lib import privacy
from layercode_pipeline.lib.erasure_ledger import ErasureLedger
from layercode_pipeline.lib.recording_store import recording_store
from layercode_pipeline.lib.result_webhooks.delivery import Dispatcher
from layercode_pipeline.lib.result_webhooks.messages import CALL_ANALYZED, CALL_ERASED, Message
from layercode_pipeline.lib.result_webhooks.outbox import Outbox
from layercode_pipeline.lib.result_webhooks.signing import new_secret
from layercode_pipeline.lib.warehouse import Warehouse
from layercode_pipeline.simulator import generate_batch, write_segment
from layercode_pipeline.simulator.receiver import ResultReceiver
from layercode_pipeline.simulator.server import BackgroundServer

from .test_voice_metrics import envelope

PHONE = "+15550104242"
# a long call, and a recognisable one
SENTENCE = "my grandmother's secret recipe calls for seventeen cardamom pods and a thimble of rosewater " * 80


def land(landing: Path, name: str, *bodies: dict) -> Path:
    part = landing / "dt=2026-11-20" / "hour=09"
    part.mkdir(parents=True, exist_ok=True)
    path = part / f"{name}.jsonl"
    path.write_bytes(b"".join(envelope(b, 100 + i, "ag_a") for i, b in enumerate(bodies)))
    return path


def start(sid: str, phone: str | None = None) -> dict:
    body = {"type": "session.start", "session_id": sid, "agent_id": "ag_a", "conversation_id": f"conv_{sid}"}
    return body | ({"from_phone_number": phone} if phone else {})


def end(sid: str, text: str = "hello there", phone: str | None = None) -> dict:
    body = {
        "type": "session.end",
        "session_id": sid,
        "agent_id": "ag_a",
        "conversation_id": f"conv_{sid}",
        "transcript": [{"role": "user", "text": text}, {"role": "assistant", "text": "noted"}],
    }
    return body | ({"from_phone_number": phone} if phone else {})


def sessions(storage: StorageResource) -> set[str]:
    con = duckdb.connect(str(storage.warehouse.path), read_only=True)
    try:
        return {r[0] for r in con.execute("select distinct session_id from raw.layercode_events").fetchall()}
    finally:
        con.close()


def ingest(storage: StorageResource) -> dg.MaterializeResult:
    result = dg.materialize([raw_layercode_events], resources={"storage": storage})
    assert result.success
    return result.asset_materializations_for_node("raw_layercode_events")[0]


def landed_bytes(landing: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(landing.rglob("*.jsonl*")))


@pytest.fixture
def data(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("LAYERCODE_DATA_DIR", str(data))
    monkeypatch.delenv("LAYERCODE_RESULT_WEBHOOKS", raising=False)
    storage = StorageResource(data_dir=str(data))
    land(storage.paths.landing, "w-000001", start("sess_a", PHONE), end("sess_a", phone=PHONE), start("sess_b"))
    ingest(storage)
    return data


def forget(data: Path, *args: str):
    return CliRunner().invoke(main, ["forget", *args], env={"COLUMNS": "200"})


def test_a_typo_or_an_unknown_id_is_not_an_erasure(data, tmp_path):
    storage = StorageResource(data_dir=str(data))
    for line in ("phon:+49286016053", "bogus line"):
        batch = tmp_path / "ids.txt"
        batch.write_text(f"session:sess_a\n{line}\n")
        r = forget(data, "--from-file", str(batch))
        assert r.exit_code == 2 and f"{batch}:2" in r.output, r.output  # the file and line named
    # the README's own placeholders: well-formed ids that match nothing
    r = forget(data, "--session-id", "sess_...", "--conversation-id", "conv_...")
    assert r.exit_code == 1 and "session sess_...: no session matched" in r.output, r.output
    assert "conversation conv_...: no session matched" in r.output
    r = forget(data, "--session-id", "sess_nothing", "--phone-number", PHONE)
    assert r.exit_code == 1, r.output
    assert "session sess_nothing: no session matched" in r.output and f"phone {PHONE}: 1 session" in r.output
    assert "Nothing was erased" in r.output
    assert sessions(storage) == {"sess_a", "sess_b"}  # nothing was erased
    con = duckdb.connect(str(storage.warehouse.path), read_only=True)
    try:
        assert con.execute("select count(*) from raw.erasure_audit").fetchone() == (0,)
        assert con.execute("select count(*) from raw.erasure_tombstones").fetchone() == (0,)
    finally:
        con.close()
    # nothing matched, even with the flag: nothing is rewritten nor republished
    serving = data / "serving" / "analytics.duckdb"
    serving.parent.mkdir(parents=True)
    duckdb.connect(str(serving)).close()
    untouched = (serving.stat().st_mtime_ns, storage.warehouse.path.stat().st_ino)
    r = forget(data, "--session-id", "sess_nothing", "--allow-unmatched")
    assert r.exit_code == 0 and "No session matched: nothing was removed" in r.output, r.output
    assert (serving.stat().st_mtime_ns, storage.warehouse.path.stat().st_ino) == untouched
    serving.unlink()  # (a stand-in: this warehouse has no marts to publish)
    # a batch file may name callers not seen yet: with the flag, what matched is erased
    r = forget(data, "--session-id", "sess_nothing", "--phone-number", PHONE, "--allow-unmatched")
    assert r.exit_code == 0, r.output
    assert "1 sessions forgotten" in r.output and "warehouse file rewritten" in r.output
    assert sessions(storage) == {"sess_b"}
    # nothing left to do: no identifier, no half-done erasure
    assert forget(data).exit_code == 2


def test_a_redelivery_of_an_erased_caller_does_not_stay_in_the_landing(data):
    storage = StorageResource(data_dir=str(data))
    # a late event of the caller, in a segment a listener still holds open during the erasure
    held = land(storage.paths.landing, "w-000003", end("sess_a", text="a late goodbye", phone=PHONE))
    held = held.rename(held.with_name(held.name + ".open"))
    assert forget(data, "--phone-number", PHONE).exit_code == 0
    assert PHONE.encode() not in landed_bytes(storage.paths.landing).replace(held.read_bytes(), b"")
    held.rename(held.with_name(held.name.removesuffix(".open")))  # sealed after the erasure
    # the platform re-delivers the erased session, and the caller calls again; someone else calls
    again = land(
        storage.paths.landing,
        "w-000002",
        start("sess_a", PHONE),
        end("sess_a", text=SENTENCE, phone=PHONE),
        start("sess_new", PHONE),
        start("sess_c"),
    )
    assert PHONE.encode() in again.read_bytes()
    mat = ingest(storage)
    assert mat.metadata["erased_events_dropped"].value == 4
    assert sessions(storage) == {"sess_b", "sess_c"}
    landed = landed_bytes(storage.paths.landing)
    assert PHONE.encode() not in landed and b"sess_a" not in landed and b"sess_new" not in landed
    assert b"sess_c" in landed  # the rest of the file is kept, and not taken in twice
    assert ingest(storage).metadata["rows_inserted"].value == 0


def test_no_free_block_of_the_warehouse_keeps_the_erased_words(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("LAYERCODE_DATA_DIR", str(data))
    storage = StorageResource(data_dir=str(data))
    bodies = [start("sess_zelda_words", PHONE), end("sess_zelda_words", text=SENTENCE, phone=PHONE)]
    bodies += [x for i in range(200) for x in (start(f"sess_{i:03d}"), end(f"sess_{i:03d}", text=f"call {i} " * 30))]
    land(storage.paths.landing, "w-000001", *bodies)
    ingest(storage)
    # the bodies are ZSTD-compressed in the file, the ids kept as they are (in FSST dictionaries)
    needle = b"sess_zelda_words"
    assert needle in warehouse_bytes(storage)  # the session is in the file's bytes
    assert forget(data, "--phone-number", PHONE).exit_code == 0
    assert needle not in warehouse_bytes(storage)  # gone, free blocks included
    assert len(sessions(storage)) == 200  # and everyone else is still there


def warehouse_bytes(storage: StorageResource) -> bytes:
    """The warehouse file's raw bytes, and its write-ahead log's."""
    path = storage.warehouse.path
    wal = path.with_name(path.name + ".wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_a_forget_stopped_half_way_is_finished_by_the_next(data, monkeypatch):
    storage = StorageResource(data_dir=str(data))

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("layercode_pipeline.landing.erase.write_whole", disk_full)
    r = forget(data, "--phone-number", PHONE)
    assert r.exit_code != 0 and isinstance(r.exception, OSError)
    assert sessions(storage) == {"sess_b"}  # the warehouse step was done
    assert PHONE.encode() in landed_bytes(storage.paths.landing)  # the landing was not
    assert len(ErasureLedger.under(data).unfinished()) == 1
    monkeypatch.undo()
    monkeypatch.setenv("LAYERCODE_DATA_DIR", str(data))
    r = forget(data)  # no identifier: it finishes what was left
    assert r.exit_code == 0, r.output
    assert "stopped half-way earlier) finished: 1 sessions forgotten" in r.output
    assert PHONE.encode() not in landed_bytes(storage.paths.landing)
    assert ErasureLedger.under(data).unfinished() == []
    ledger = ErasureLedger.under(data).path.read_bytes()
    assert b"sess_a" not in ledger and PHONE.encode() not in ledger  # the plan went with it


def test_dbt_logs_and_the_outbox_keep_no_erased_id_and_call_erased_reaches_every_endpoint(data):
    dbt_log = data / "dbt" / "run" / "dbt.log"
    dbt_log.parent.mkdir(parents=True)
    dbt_log.write_text("12:00:01 on-run-start: touched sessions 'sess_a', 'sess_b'\n")
    secret = new_secret()
    receiver = ResultReceiver(secret)
    outbox_path = data / "outbox" / "result_webhooks.sqlite3"
    with BackgroundServer(receiver.app) as server:
        endpoints_json = json.dumps([{"url": server.url + "/hook", "secret": secret}])
        endpoints = ResultWebhooksResource(endpoints_json=endpoints_json, outbox_path=str(outbox_path)).endpoints()
        outbox = Outbox(outbox_path)
        analysed = [
            Message.build(CALL_ANALYZED, (sid, "k1"), {"session_id": sid, "agent_id": "ag_a"})
            for sid in ("sess_a", "sess_b")
        ]
        outbox.enqueue(analysed, endpoints)
        with Dispatcher(outbox, endpoints, timeout_s=5) as dispatcher:
            assert dispatcher.run_until_idle().delivered == 2
        # forget, from a shell where LAYERCODE_RESULT_WEBHOOKS is not set
        r = forget(data, "--phone-number", PHONE)
        assert r.exit_code == 0, r.output
        assert "call.erased queued" in r.output
        assert b"sess_a" not in dbt_log.read_bytes() and b"sess_b" in dbt_log.read_bytes()
        with Dispatcher(outbox, endpoints, timeout_s=5) as dispatcher:  # the sensor, with its secrets
            assert dispatcher.run_until_idle().delivered == 1
    assert [m.session_id for m in receiver.unique(CALL_ERASED).values()] == ["sess_a"]
    # delivered everywhere: the outbox names the session nowhere, and still refuses it
    assert b"sess_a" not in outbox_path.read_bytes()
    assert not [d for d in outbox.deliveries() if d["session_id"] == "sess_a"]
    again = Message.build(CALL_ANALYZED, ("sess_a", "k2"), {"session_id": "sess_a", "agent_id": "ag_a"})
    assert outbox.enqueue([again], endpoints) == 0


def test_the_express_path_never_sends_an_erased_callers_calls(express):
    data, storage, receiver = express["data"], express["storage"], express["receiver"]
    now = datetime.now(UTC).replace(microsecond=0)
    batch = generate_batch(6, seed=47, base_time=now - timedelta(hours=2))
    earlier, landed_not_ingested, after, other = batch.sessions[:4]
    for s in (earlier, landed_not_ingested, after):
        s.from_phone_number = PHONE
    # one earlier call of the number, ingested: what `forget --phone-number` finds
    write_segment(storage.paths.landing, subset(batch, earlier), received_at=now, name="w1-000001")
    ingest(storage)
    # a call of the number landed (sealed) but not ingested nor sent when the erasure comes
    write_segment(storage.paths.landing, subset(batch, landed_not_ingested), received_at=now, name="w1-000002")
    privacy.forget(
        warehouse=storage.warehouse,
        paths=storage.paths,
        key=load_privacy_key(data),
        selectors=[privacy.Selector("phone", PHONE)],
        recordings=recording_store(storage.storage(), storage.paths.recordings),
        outbox_path=data / "outbox.sqlite3",
        endpoints=express["hooks"].endpoints(),
    )
    # and one after the erasure, beside someone else's
    write_segment(storage.paths.landing, subset(batch, after, other), received_at=now, name="w1-000003")
    summary = express["tick"]()
    assert "of erased callers dropped" in summary, summary
    deadline = time.monotonic() + 20
    while not receiver.unique(CALL_ANALYZED) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # (anything else would have come with it)
    sent = {r.session_id for r in receiver.unique(CALL_ANALYZED).values()}
    assert sent == {other.session_id}, sent


def subset(batch, *sessions):
    from layercode_pipeline.simulator.generate import SimBatch

    return SimBatch(seed=batch.seed, agents=batch.agents, sessions=list(sessions))


def test_warehouse_rewrite_keeps_every_table_view_and_row(tmp_path):
    """The rewrite is a whole copy: tables, views and rows as they were."""
    wh = Warehouse.at(None, data_dir=tmp_path)
    with wh.open_for_writing() as con:
        con.execute("create schema marts; create table marts.t as select range as i from range(1000)")
        con.execute("create view marts.v as select count(*) as n from marts.t")
    assert wh.rewrite_file()
    con = duckdb.connect(str(wh.path), read_only=True)
    try:
        assert con.execute("select n from marts.v").fetchone() == (1000,)
        assert con.execute("select count(*) from raw.erasure_tombstones").fetchone() == (0,)
    finally:
        con.close()
    assert not list(tmp_path.glob(".*rewrite"))
