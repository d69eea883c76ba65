"""Audit tooling over the event store port: verify, replay, job timeline, Parquet archive.

Logs are built as the services record them (bench.replay's realistic mix, or appends of
hand-picked facts), on SQLite and on DynamoDB under moto. Tampering edits a stored item
directly in the backend, behind the store's back, as an attacker with database access would.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from bench.replay import realistic_log
from contracts.envelope import StoredEvent
from contracts.events import (
    BatchGenerated,
    CostRecorded,
    DatasetExported,
    ExportedFile,
    JobCompleted,
    JobFailed,
    JobRequested,
    OutputFormat,
    TokenUsage,
)
from contracts.streams import generation_stream, job_stream, ledger_stream
from palette.audit.archive import (
    ArchiveError,
    export_events,
    import_events,
    read_archive,
)
from palette.audit.rebuild import rebuild_live
from palette.audit.replay import ReplayError, ReplayTarget, parse_as_of, replay
from palette.audit.replay_diff import diff_documents, live_checkpoints
from palette.audit.replay_into import replay_into
from palette.audit.timeline import JobNotInLog, audit_job
from palette.audit.verify import verify_log
from palette.composition import LocalPalette, local_projections
from palette.eventstore.dynamodb import (
    MAX_EVENTS_PER_APPEND,
    DynamoDBEventStore,
    create_table,
)
from palette.eventstore.port import (
    MAX_EVENT_BYTES,
    EventStore,
    EventTooLarge,
    ImportRefused,
    NewEvent,
)
from palette.eventstore.recording import record
from palette.eventstore.sqlite import SQLiteEventStore
from palette.projections.documents import Document, DocumentProjection, DocumentWriter
from palette.projections.documents_dynamodb import DOCUMENTS_TABLE, dynamodb_documents
from palette.projections.documents_sqlite import (
    SQLiteDocumentReader,
    documents_table,
    sqlite_documents,
)
from palette.projections.dynamodb import DynamoDBReadModelStore
from palette.projections.port import ProjectedEvent, ProjectionFailed
from palette.projections.runner import ProjectionRunner
from palette.projections.sqlite import SQLiteReadModelStore
from tests.integration.audit_views import PortOnly, findings

TABLE = "palette-events"
MODEL = "bedrock/amazon.nova-lite-v1:0"


def small_log() -> list[StoredEvent]:
    """Three interleaved jobs of four batches each, plus templates and seeds."""
    return list(realistic_log(30, batches=4, concurrent=3))


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteEventStore]:
    store = SQLiteEventStore(tmp_path / "events.db")
    yield store
    store.close()


@pytest.fixture
def dynamo() -> Iterator[tuple[DynamoDBEventStore, Any]]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_table(client, TABLE)
        yield DynamoDBEventStore(TABLE, client=client, positions_per_bucket=7), client


def generated(job: str, batch: int, rows: int = 10) -> NewEvent:
    return NewEvent(
        BatchGenerated(
            job_id=job,
            batch_number=batch,
            first_record=batch * rows,
            last_record=batch * rows + rows - 1,
            blob_key=f"parts/{job}/{batch}",
            rows=rows,
            failures=0,
            token_usage={MODEL: TokenUsage(input_tokens=1000, output_tokens=500, calls=rows)},
            duration_ms=100,
            bytes_written=1000,
        )
    )


def charged(job: str, batch: int, total: str = "0.10") -> NewEvent:
    return NewEvent(
        CostRecorded(
            job_id=job,
            batch_number=batch,
            catalog_version="2026-11",
            model_tokens=Decimal(total),
            compute=Decimal(0),
            storage=Decimal(0),
            total=Decimal(total),
            per_model={MODEL: Decimal(total)},
        )
    )


def requested(job: str, budget: str = "1") -> NewEvent:
    return NewEvent(
        JobRequested(
            job_id=job,
            owner="ann",
            template_id="tpl",
            template_version=1,
            seed_id="seed",
            num_records=20,
            budget_limit=Decimal(budget),
            output_formats=[OutputFormat.JSONL],
        ),
        actor="ann",
    )


def exported(job: str, rows: int) -> NewEvent:
    return NewEvent(
        DatasetExported(
            job_id=job,
            rows=rows,
            files=[
                ExportedFile(
                    format=OutputFormat.JSONL,
                    blob_key=f"datasets/{job}.jsonl",
                    rows=rows,
                    size_bytes=10,
                    sha256="c" * 64,
                )
            ],
        )
    )


def append(store: EventStore, stream: str, *events: NewEvent) -> None:
    store.append(stream, list(events), store.stream_version(stream))


# -- verify: the hash chain, positions, versions ------------------------------------------


def test_a_realistic_log_verifies_on_sqlite(sqlite_store: SQLiteEventStore) -> None:
    log = small_log()
    sqlite_store.import_recorded(log)
    report = verify_log(sqlite_store)
    assert report.ok, [v.line() for v in report.violations]
    assert report.events == len(log)
    assert report.jobs == 3
    assert report.last_position == len(log)


def test_an_edited_payload_in_sqlite_is_named_by_stream_version_and_id(sqlite_store: SQLiteEventStore) -> None:
    sqlite_store.import_recorded(small_log())
    victim = sqlite_store.read_stream(generation_stream("job0000001"), 3, 3)[0]
    assert victim.detail_type == "BatchGenerated"
    db = sqlite3.connect(sqlite_store.path)
    with db:
        db.execute(
            "UPDATE events SET detail = replace(detail, '\"rows\":100', '\"rows\":1000') WHERE id = ?", (victim.id,)
        )
    db.close()
    report = verify_log(sqlite_store)
    assert not report.ok
    hashes = [v for v in report.violations if v.check == "hash"]
    assert [(v.stream_id, v.version, v.event_id, v.position) for v in hashes] == [
        (generation_stream("job0000001"), 3, victim.id, victim.position)
    ]
    assert "altered" in hashes[0].message
    exports = [v for v in report.violations if v.check == "export"]
    assert exports and exports[0].stream_id == generation_stream("job0000001")
    assert "exported 400 rows, batches generated 1300" in exports[0].message


def test_an_edited_payload_in_dynamodb_is_named_by_stream_version_and_id(
    dynamo: tuple[DynamoDBEventStore, Any],
) -> None:
    store, client = dynamo
    append(store, job_stream("j1"), requested("j1"))
    append(store, generation_stream("j1"), generated("j1", 0), generated("j1", 1))
    append(store, ledger_stream("j1"), charged("j1", 0), charged("j1", 1))
    assert verify_log(store, page_size=3).ok
    client.update_item(
        TableName=TABLE,
        Key={"stream_id": {"S": ledger_stream("j1")}, "version": {"N": "2"}},
        UpdateExpression="SET detail = :d",
        ExpressionAttributeValues={
            ":d": {"S": store.read_stream(ledger_stream("j1"), 2, 2)[0].detail.replace("0.10", "0.01")}
        },
    )
    report = verify_log(store, page_size=3)
    tampered = store.read_stream(ledger_stream("j1"), 2, 2)[0]
    assert [(v.check, v.stream_id, v.version, v.event_id) for v in report.violations] == [
        ("hash", ledger_stream("j1"), 2, tampered.id)
    ]


def test_a_rehashed_event_breaks_the_link_to_the_next_one(sqlite_store: SQLiteEventStore) -> None:
    append(sqlite_store, job_stream("j1"), requested("j1"))
    append(sqlite_store, generation_stream("j1"), generated("j1", 0), generated("j1", 1))
    first = sqlite_store.read_stream(generation_stream("j1"), 1, 1)[0]
    forged = first._replace(detail=first.detail.replace('"rows":10', '"rows":11'))
    db = sqlite3.connect(sqlite_store.path)
    with db:
        db.execute(
            "UPDATE events SET detail = ?, hash = ? WHERE id = ?", (forged.detail, forged.expected_hash(), first.id)
        )
    db.close()
    report = verify_log(sqlite_store)
    assert [(v.check, v.stream_id, v.version) for v in report.violations] == [("chain", generation_stream("j1"), 2)]


def test_a_removed_event_shows_as_a_position_gap_and_a_version_gap(sqlite_store: SQLiteEventStore) -> None:
    append(sqlite_store, job_stream("j1"), requested("j1"))
    append(sqlite_store, generation_stream("j1"), generated("j1", 0), generated("j1", 1), generated("j1", 2))
    db = sqlite3.connect(sqlite_store.path)
    with db:
        db.execute("DELETE FROM events WHERE stream_id = 'generation-j1' AND version = 2")
    db.close()
    checks = {(v.check, v.stream_id, v.version, v.position) for v in verify_log(sqlite_store).violations}
    assert ("position", generation_stream("j1"), 3, 4) in checks
    assert ("version", generation_stream("j1"), 3, 4) in checks
    assert ("chain", generation_stream("j1"), 3, 4) in checks


def test_a_missing_position_on_dynamodb_hides_nothing(dynamo: tuple[DynamoDBEventStore, Any]) -> None:
    store, client = dynamo
    append(store, job_stream("j1"), requested("j1"))
    append(store, generation_stream("j1"), generated("j1", 0))
    append(store, generation_stream("j1"), generated("j1", 1))
    client.delete_item(TableName=TABLE, Key={"stream_id": {"S": generation_stream("j1")}, "version": {"N": "1"}})
    report = verify_log(store)
    assert ("stream", generation_stream("j1"), 1) in {(v.check, v.stream_id, v.version) for v in report.violations}


# -- verify: the domain invariants ---------------------------------------------------------


def test_each_broken_invariant_names_its_event(sqlite_store: SQLiteEventStore) -> None:
    append(sqlite_store, job_stream("j1"), requested("j1", budget="0.15"))
    append(sqlite_store, generation_stream("j1"), generated("j1", 0), generated("j1", 1), generated("j1", 2))
    append(sqlite_store, ledger_stream("j1"), charged("j1", 0), charged("j1", 1), charged("j1", 1), charged("j1", 7))
    append(sqlite_store, generation_stream("j1"), exported("j1", 25))
    append(sqlite_store, job_stream("j1"), NewEvent(JobCompleted(job_id="j1", records_completed=25)))
    append(sqlite_store, generation_stream("j1"), generated("j1", 3))
    report = verify_log(sqlite_store)
    found = {(v.check, v.stream_id, v.version) for v in report.violations}
    assert found == {
        ("budget", ledger_stream("j1"), 2),
        ("charge", ledger_stream("j1"), 3),
        ("charge", ledger_stream("j1"), 4),
        ("charge", generation_stream("j1"), 3),
        ("charge", generation_stream("j1"), 5),
        ("terminal", generation_stream("j1"), 5),
        ("export", generation_stream("j1"), 4),
    }
    messages = {v.check + ":" + v.message for v in report.violations}
    assert "budget:recorded spend 0.40 exceeds the budget 0.15" in messages
    assert any("batch 1 charged 2 times" in m for m in messages)
    assert any("charges batch 7, which was never generated" in m for m in messages)
    assert any("batch 2 was never charged" in m for m in messages)
    assert any(m.startswith("terminal:batch 3 generated after the job ended (generation-j1 v4") for m in messages)


def test_a_running_jobs_uncharged_batch_is_pending_not_a_violation(sqlite_store: SQLiteEventStore) -> None:
    append(sqlite_store, job_stream("j1"), requested("j1"))
    append(sqlite_store, generation_stream("j1"), generated("j1", 0))
    report = verify_log(sqlite_store)
    assert report.ok
    assert len(report.pending) == 1 and "batch 0 awaits its charge" in report.pending[0]


def test_parallel_sqlite_scan_and_port_pass_report_the_samefindings(sqlite_store: SQLiteEventStore) -> None:
    sqlite_store.import_recorded(list(realistic_log(400, batches=6, concurrent=4)))
    append(sqlite_store, generation_stream("job0000001"), generated("job0000001", 6))
    db = sqlite3.connect(sqlite_store.path)
    (removed_from,) = db.execute("SELECT stream_id FROM events WHERE position = 200").fetchone()
    with db:
        # an edited payload, a payload that is no longer JSON, a removed event, and a
        # non-ASCII edit that SQLite's canonical text and Python's must hash alike
        db.execute("UPDATE events SET detail = replace(detail, '\"rows\":100', '\"rows\":99') WHERE position = 40")
        db.execute("UPDATE events SET detail = '{broken' WHERE position = 120")
        db.execute("DELETE FROM events WHERE position = 200")
        db.execute("UPDATE events SET actor = 'ünïcødé \u2028 \"q\"' WHERE position = 300")
    db.close()

    sequential = verify_log(sqlite_store, workers=1)
    parallel = verify_log(sqlite_store, workers=3, page_size=17)
    through_the_port = verify_log(PortOnly(sqlite_store), page_size=50)

    assert findings(parallel) == findings(sequential) == findings(through_the_port)
    found = {(v.check, v.position) for v in sequential.violations}
    assert {("hash", 40), ("hash", 120), ("detail", 120), ("position", 201), ("hash", 300)} <= found
    assert {"version", "chain"} <= {v.check for v in sequential.violations if v.stream_id == removed_from}
    assert any(v.check == "terminal" and v.stream_id == generation_stream("job0000001") for v in sequential.violations)


def test_an_intact_log_verifies_alike_in_parallel(sqlite_store: SQLiteEventStore) -> None:
    sqlite_store.import_recorded(list(realistic_log(400, batches=6, concurrent=4)))
    parallel, sequential = verify_log(sqlite_store, workers=2), verify_log(sqlite_store, workers=1)
    assert parallel.ok and sequential.ok
    assert findings(parallel) == findings(sequential)


# -- the Parquet archive -------------------------------------------------------------------


def test_export_then_import_reproduces_every_event_byte_for_byte(
    tmp_path: Path, sqlite_store: SQLiteEventStore
) -> None:
    sqlite_store.import_recorded(small_log())
    summary = export_events(sqlite_store, tmp_path / "archive")
    partitions = sorted(
        str(p.parent.relative_to(tmp_path / "archive")) for p in (tmp_path / "archive").rglob("*.parquet")
    )
    assert "date=2026-11-02/detail_type=BatchGenerated" in partitions
    columns = pq.ParquetFile(next((tmp_path / "archive").rglob("*.parquet"))).schema_arrow.names
    assert {"id", "stream_id", "version", "position", "hash", "prev_hash", "detail", "actor"} <= set(columns)

    copy = SQLiteEventStore(tmp_path / "copy.db")
    imported = import_events(copy, tmp_path / "archive")
    assert imported.events == summary.events and imported.digest == summary.digest
    assert list(copy.iter_all()) == list(sqlite_store.iter_all())
    assert verify_log(copy).digest == verify_log(sqlite_store).digest
    with pytest.raises(ImportRefused, match="already holds events"):
        import_events(copy, tmp_path / "archive")
    copy.close()


def test_the_columnar_export_writes_what_the_port_export_writes(tmp_path: Path, sqlite_store: SQLiteEventStore) -> None:
    sqlite_store.import_recorded(small_log())
    columnar = export_events(sqlite_store, tmp_path / "columnar")
    by_rows = export_events(PortOnly(sqlite_store), tmp_path / "rows", page_size=7)

    assert (columnar.events, columnar.digest, columnar.first_position, columnar.last_position) == (
        by_rows.events,
        by_rows.digest,
        by_rows.first_position,
        by_rows.last_position,
    )
    assert columnar.digest == verify_log(sqlite_store).digest
    assert read_archive(tmp_path / "columnar")[1].equals(read_archive(tmp_path / "rows")[1])


def test_a_log_value_of_the_wrong_type_fails_the_export_clearly(tmp_path: Path, sqlite_store: SQLiteEventStore) -> None:
    sqlite_store.import_recorded(small_log())
    db = sqlite3.connect(sqlite_store.path)
    with db:
        db.execute("UPDATE events SET version = 'two' WHERE position = 5")
    db.close()
    with pytest.raises(ArchiveError, match="column version"):
        export_events(sqlite_store, tmp_path / "archive")


def test_an_archive_imports_into_dynamodb_with_the_same_hashes(
    tmp_path: Path, sqlite_store: SQLiteEventStore, dynamo: tuple[DynamoDBEventStore, Any]
) -> None:
    sqlite_store.import_recorded(small_log())
    export_events(sqlite_store, tmp_path / "archive")
    store, _ = dynamo
    import_events(store, tmp_path / "archive")
    assert list(store.iter_all(page_size=100)) == list(sqlite_store.iter_all())
    assert verify_log(store).ok
    with pytest.raises(ImportRefused, match="already holds events"):
        import_events(store, tmp_path / "archive")


def test_an_event_too_big_for_a_dynamodb_item_stops_the_import_after_a_valid_prefix(
    dynamo: tuple[DynamoDBEventStore, Any],
) -> None:
    log = list(realistic_log(150, batches=4, concurrent=3))
    last = log[-1]
    failed = JobFailed(job_id="x", code="E", reason="z" * (MAX_EVENT_BYTES - 100))
    (heavy,) = record(last.stream_id, last.version, last.hash, [NewEvent(failed, actor="a" * 200_000)])
    store, _ = dynamo

    with pytest.raises(EventTooLarge, match="400 KB"):
        store.import_recorded([*log, heavy])

    imported = list(store.iter_all(page_size=100))
    assert len(imported) >= len(log) - MAX_EVENTS_PER_APPEND
    assert imported == [e._replace(position=n) for n, e in enumerate(log[: len(imported)], start=1)]
    assert verify_log(store).ok


def test_a_tampered_archive_is_refused_and_nothing_is_imported(tmp_path: Path, sqlite_store: SQLiteEventStore) -> None:
    sqlite_store.import_recorded(small_log())
    export_events(sqlite_store, tmp_path / "archive")
    path = next((tmp_path / "archive").rglob("detail_type=CostRecorded/*.parquet"))
    table = pq.read_table(path, partitioning=None)
    details = table.column("detail").to_pylist()
    details[0] = details[0].replace('"batch_number":0', '"batch_number":9')
    pq.write_table(table.set_column(table.schema.get_field_index("detail"), "detail", [details]), path)
    copy = SQLiteEventStore(tmp_path / "copy.db")
    with pytest.raises(ImportRefused, match=r"stream 'ledger-job\d+' v1 .*hash does not match"):
        import_events(copy, tmp_path / "archive")
    assert copy.read_all() == []
    (path).unlink()
    with pytest.raises(ArchiveError, match="files are missing"):
        import_events(copy, tmp_path / "archive")
    copy.close()


# -- replay ------------------------------------------------------------------------------


def live_views(events: EventStore, path: Path) -> SQLiteReadModelStore:
    """The embedded runtime's projections, kept up to date by the kernel's runner."""
    store = SQLiteReadModelStore(path)
    for projection in local_projections():
        ProjectionRunner(events, sqlite_documents(projection), store).run_once()
    return store


def test_replay_projects_exactly_the_embedded_runtimes_projections(tmp_path: Path) -> None:
    runtime = LocalPalette(tmp_path / "data")
    try:
        live = [runner.projection.name for runner in runtime.runners]
    finally:
        runtime.close()
    assert [p.name for p in local_projections()] == live


def test_a_replay_equals_the_live_views_and_a_diff_names_a_changed_row(
    tmp_path: Path, sqlite_store: SQLiteEventStore
) -> None:
    sqlite_store.import_recorded(small_log())
    live = live_views(sqlite_store, tmp_path / "projections.db")
    projections = local_projections()
    summary = replay_into(sqlite_store, projections, tmp_path / "replay", until=live_checkpoints(live, projections))
    assert summary.applied["jobs_dashboard"] > 0
    assert diff_documents(live.path, tmp_path / "replay" / "projections.db", projections) == []
    assert _tracking(tmp_path / "replay" / "projections.db") == _tracking(live.path)

    table = documents_table("jobs_dashboard")
    db = live.connection()
    body = json.loads(db.execute(f'SELECT body FROM "{table}" WHERE key = ?', ("job0000002",)).fetchone()[0])
    body["records_generated"] += 1
    db.execute(f'UPDATE "{table}" SET body = ? WHERE key = ?', (json.dumps(body), "job0000002"))
    db.execute(f'DELETE FROM "{documents_table("jobs_list")}" WHERE key = ?', ("job0000001",))
    lines = [d.line() for d in diff_documents(live.path, tmp_path / "replay" / "projections.db", projections)]
    assert lines == [
        "jobs_list job/job0000001: missing from the live view",
        "jobs_dashboard dashboard/job0000002: differs (body.records_generated)",
    ]
    live.close()


def _tracking(path: Path) -> tuple[list[Any], list[Any]]:
    db = sqlite3.connect(path)
    try:
        return (
            db.execute("SELECT * FROM projection_tracking ORDER BY projection").fetchall(),
            db.execute("SELECT * FROM projection_stream_tracking ORDER BY projection, stream_id").fetchall(),
        )
    finally:
        db.close()


@pytest.mark.parametrize(("workers", "at_half_time"), [(2, False), (3, False), (2, True)])
def test_a_replay_split_over_stream_partitions_builds_what_one_process_builds(
    tmp_path: Path, sqlite_store: SQLiteEventStore, workers: int, at_half_time: bool
) -> None:
    log = list(realistic_log(600, batches=6, concurrent=5))
    sqlite_store.import_recorded(log)
    projections = local_projections()
    until = {"jobs_dashboard": 400, "billing_costs": 10_000}
    as_of = parse_as_of(log[len(log) // 2].time) if at_half_time else None
    one = replay_into(sqlite_store, projections, tmp_path / "one", workers=1, until=until, as_of=as_of)
    seen: list[int] = []
    split = replay_into(
        sqlite_store, projections, tmp_path / "split", workers=workers, until=until, as_of=as_of, progress=seen.append
    )

    assert split.applied == one.applied and split.events_read == one.events_read
    assert split.read_by_type == one.read_by_type and sum(one.read_by_type.values()) == one.events_read
    assert split.last_position == one.last_position
    assert diff_documents(tmp_path / "one" / "projections.db", tmp_path / "split" / "projections.db", projections) == []
    assert _tracking(tmp_path / "one" / "projections.db") == _tracking(tmp_path / "split" / "projections.db")
    assert sum(seen) >= one.events_read
    assert not list((tmp_path / "split").glob("*.part*"))


class FailsOnTheSecondBatch(DocumentProjection):
    name = "fails_on_the_second_batch"
    detail_types = ("BatchGenerated",)
    event_view = "decoded"

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        detail = event.detail
        assert isinstance(detail, BatchGenerated)
        if detail.batch_number == 1:
            raise ValueError("no second batch")
        docs.put(Document("batch", detail.job_id, {"rows": detail.rows}))


def test_a_replay_leaves_no_transaction_open_on_its_store_whether_it_succeeds_or_fails(
    tmp_path: Path, sqlite_store: SQLiteEventStore
) -> None:
    sqlite_store.import_recorded(small_log())
    for projections, outcome in ((local_projections(), None), ([FailsOnTheSecondBatch()], ProjectionFailed)):
        store = SQLiteReadModelStore(tmp_path / f"{len(projections)}.db")
        targets = [ReplayTarget(sqlite_documents(p), store) for p in projections]
        if outcome is None:
            replay(sqlite_store, targets, commit_batch=7)
        else:
            with pytest.raises(outcome):
                replay(sqlite_store, targets, commit_batch=7)
        assert not store.connection().in_transaction
        other = sqlite3.connect(store.path, timeout=0)
        other.execute("CREATE TABLE written_meanwhile (x)")
        other.close()
        store.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_replay_that_fails_names_the_projection_and_event_and_leaves_no_file(
    tmp_path: Path, sqlite_store: SQLiteEventStore, workers: int
) -> None:
    log = small_log()
    sqlite_store.import_recorded(log)
    second = next(e for e in log if e.detail_type == "BatchGenerated" and '"batch_number":1,' in e.detail)

    with pytest.raises((ProjectionFailed, ReplayError)) as failure:
        replay_into(sqlite_store, [*local_projections(), FailsOnTheSecondBatch()], tmp_path / "replay", workers=workers)

    assert "fails_on_the_second_batch" in str(failure.value)
    if workers == 1:
        assert isinstance(failure.value, ProjectionFailed) and failure.value.event_id == second.id
    assert not list((tmp_path / "replay").glob("projections.db*"))


def test_a_diff_stops_at_the_live_checkpoint_so_lag_is_no_difference(
    tmp_path: Path, sqlite_store: SQLiteEventStore
) -> None:
    log = small_log()
    sqlite_store.import_recorded(log[:40])
    live = live_views(sqlite_store, tmp_path / "projections.db")
    sqlite_store.close()
    later = SQLiteEventStore(tmp_path / "full.db")
    later.import_recorded(log)
    projections = local_projections()
    replay_into(later, projections, tmp_path / "replay", until=live_checkpoints(live, projections))
    assert diff_documents(live.path, tmp_path / "replay" / "projections.db", projections) == []
    later.close()
    live.close()


def test_as_of_builds_the_dashboard_as_it_stood_then(tmp_path: Path, sqlite_store: SQLiteEventStore) -> None:
    log = small_log()
    sqlite_store.import_recorded(log)
    batches = [e for e in log if e.detail_type == "BatchGenerated" and e.stream_id == generation_stream("job0000000")]
    moment = batches[1].time
    replay_into(sqlite_store, local_projections(), tmp_path / "then", as_of=parse_as_of(moment))
    store = SQLiteReadModelStore(tmp_path / "then" / "projections.db")
    dashboard = SQLiteDocumentReader(store, "jobs_dashboard").get("dashboard", "job0000000")
    assert dashboard is not None
    assert (dashboard["status"], dashboard["batches"], dashboard["records_generated"]) == ("RUNNING", 2, 200)
    assert SQLiteDocumentReader(store, "jobs_dashboard").get("dashboard", "job0000002") is not None
    store.close()


def test_an_in_place_rebuild_swaps_in_views_equal_to_the_incremental_ones(
    tmp_path: Path, sqlite_store: SQLiteEventStore
) -> None:
    sqlite_store.import_recorded(small_log())
    live = live_views(sqlite_store, tmp_path / "projections.db")
    before = {
        p.name: live.connection().execute(f'SELECT * FROM "{documents_table(p)}" ORDER BY 1, 2').fetchall()
        for p in local_projections()
    }
    runners = [ProjectionRunner(sqlite_store, sqlite_documents(p), live) for p in local_projections()]
    rebuild_live(sqlite_store, runners)
    after = {
        p.name: live.connection().execute(f'SELECT * FROM "{documents_table(p)}" ORDER BY 1, 2').fetchall()
        for p in local_projections()
    }
    assert after == before
    assert all(runner.run_once() == 0 for runner in runners)
    assert not list(tmp_path.glob("projections.*.rebuild-*"))
    live.close()


def test_an_in_place_rebuild_of_dynamodb_views_equals_the_incremental_ones(sqlite_store: SQLiteEventStore) -> None:
    sqlite_store.import_recorded(small_log())
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        store = DynamoDBReadModelStore(client)
        runners = [ProjectionRunner(sqlite_store, dynamodb_documents(p), store) for p in local_projections()]
        incremental = [runner.run_once() for runner in runners]

        def documents() -> list[list[dict[str, Any]]]:
            tables = [store.table_names(runner.projection)[DOCUMENTS_TABLE] for runner in runners]
            return [
                sorted(
                    (item for page in client.get_paginator("scan").paginate(TableName=table) for item in page["Items"]),
                    key=lambda item: (item["collection"]["S"], item["key"]["S"]),
                )
                for table in tables
            ]

        before = documents()
        summary = rebuild_live(sqlite_store, runners)

        assert list(summary.applied.values()) == incremental
        assert documents() == before
        assert all(runner.run_once() == 0 for runner in runners)


# -- the job timeline and cost reconciliation --------------------------------------------


def test_a_job_timeline_merges_its_streams_and_reconciles_its_cost(sqlite_store: SQLiteEventStore) -> None:
    sqlite_store.import_recorded(small_log())
    audit = audit_job(sqlite_store, "job0000001")
    streams = {e.stream_id for e in audit.entries}
    assert streams == {job_stream("job0000001"), generation_stream("job0000001"), ledger_stream("job0000001")}
    positions = [e.position for e in audit.entries if e.position is not None]
    assert len(positions) == len(audit.entries) and positions == sorted(positions)
    request = audit.entries[0]
    assert (request.detail_type, request.actor) == ("JobRequested", "user-1")
    assert {e.correlation_id for e in audit.entries} == {request.event_id}
    r = audit.reconciliation
    assert r.balanced, r.discrepancies
    assert r.status == "COMPLETED"
    assert len(r.batches) == 4 and all(b.priced_model_tokens == b.recorded_model_tokens for b in r.batches)
    assert r.priced_model_tokens == r.recorded_model_tokens > 0
    assert (r.rows_generated, r.rows_exported) == (400, 400)
    assert "matches the 2026-11 prices (aws)" in r.batches[0].note


def test_a_double_charge_and_a_mispriced_batch_are_discrepancies(sqlite_store: SQLiteEventStore) -> None:
    append(sqlite_store, job_stream("j1"), requested("j1"))
    append(sqlite_store, generation_stream("j1"), generated("j1", 0), generated("j1", 1))
    append(sqlite_store, ledger_stream("j1"), charged("j1", 0), charged("j1", 0), charged("j1", 1))
    r = audit_job(sqlite_store, "j1").reconciliation
    assert "batch 0 was charged 2 times" in r.discrepancies
    assert any(d.startswith("batch 1: model tokens charged $0.10, priced $") for d in r.discrepancies)
    assert r.recorded_total == Decimal("0.30")
    with pytest.raises(JobNotInLog):
        audit_job(sqlite_store, "nope")


def test_a_fan_out_job_completed_with_errors_audits_as_completed_with_errors(sqlite_store: SQLiteEventStore) -> None:
    append(
        sqlite_store,
        job_stream("j1"),
        requested("j1"),
        NewEvent(
            JobCompleted(
                job_id="j1",
                records_completed=10,
                outcome="COMPLETED_WITH_ERRORS",
                failed_models={MODEL: "MODEL_ERROR"},
            )
        ),
    )
    assert audit_job(sqlite_store, "j1").reconciliation.status == "COMPLETED_WITH_ERRORS"
