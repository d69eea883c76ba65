"""The export's data files: a hashed local file per format, one set per partition."""

from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from contracts.events.jobs import OutputFormat
from services.generator.export_errors import ExportError
from services.generator.export_layout import Chunk, DatasetLayout
from services.generator.export_partitions import MAX_PARTITIONS, PartitionRule
from services.generator.records import GeneratedRecord, dumps_json

ROW_GROUP_ROWS = 10_000
"""Parquet rows buffered per file before a row group is written."""
MAX_BUFFERED_ROWS = 50_000
"""Rows buffered across all Parquet files before every buffer is flushed."""
FILE_NAMES = {
    OutputFormat.PARQUET: "data.parquet",
    OutputFormat.JSONL: "data.jsonl",
    OutputFormat.CSV: "data.csv",
}


class HashingFile(io.RawIOBase):
    """A write-only local file that counts and hashes every byte written through it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._file = open(path, "wb")  # closed by close()
        self._sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._file.write(view)
        self._sha256.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


class FileSink(ABC):
    format: OutputFormat

    def __init__(self, path: Path, key: str) -> None:
        self.key = key
        self.rows = 0
        self.out = HashingFile(path)

    @abstractmethod
    def write(self, chunk: Chunk) -> None: ...

    def buffered_rows(self) -> int:
        return 0

    def flush(self) -> None:  # most formats buffer nothing
        """Write out anything buffered in memory."""

    def close(self) -> None:
        self.out.close()


class ParquetSink(FileSink):
    format = OutputFormat.PARQUET

    def __init__(self, path: Path, key: str, schema: pa.Schema) -> None:
        super().__init__(path, key)
        self._writer = pq.ParquetWriter(self.out, schema, compression="zstd")
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def write(self, chunk: Chunk) -> None:
        self._buffer.append(chunk.parquet)
        self._buffered += chunk.parquet.num_rows
        self.rows += chunk.parquet.num_rows
        if self._buffered >= ROW_GROUP_ROWS:
            self.flush()

    def buffered_rows(self) -> int:
        return self._buffered

    def flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.concat_tables(self._buffer), row_group_size=ROW_GROUP_ROWS)
            self._buffer, self._buffered = [], 0

    def close(self) -> None:
        self.flush()
        self._writer.close()
        super().close()


class CsvSink(FileSink):
    format = OutputFormat.CSV

    def __init__(self, path: Path, key: str, schema: pa.Schema) -> None:
        super().__init__(path, key)
        self._writer = pa_csv.CSVWriter(self.out, schema)

    def write(self, chunk: Chunk) -> None:
        self._writer.write_table(chunk.csv)
        self.rows += chunk.csv.num_rows

    def close(self) -> None:
        self._writer.close()
        super().close()


class JsonlSink(FileSink):
    format = OutputFormat.JSONL

    def write(self, chunk: Chunk) -> None:
        self.out.write("".join(dumps_json(line) + "\n" for line in chunk.jsonl).encode())
        self.rows += len(chunk.records)


class DataFiles:
    """The open data files of one export: one per format, or per format and partition."""

    def __init__(
        self,
        workdir: Path,
        prefix: str,
        layout: DatasetLayout,
        formats: list[OutputFormat],
        rule: PartitionRule | None,
    ) -> None:
        self._workdir = workdir
        self._prefix = prefix
        self._layout = layout
        self._formats = formats
        self._rule = rule
        self._sinks: dict[str | None, list[FileSink]] = {}
        self.partitions: dict[str, dict[str, str | None]] = {}
        """Partition of each data file's key, for the manifest."""
        if rule is None:
            self._sinks_for(None)

    def write(self, records: list[GeneratedRecord]) -> None:
        groups: dict[str | None, list[GeneratedRecord]] = {}
        for record in records:
            value = self._rule.value_of(record) if self._rule else None
            groups.setdefault(value, []).append(record)
        for value, group in groups.items():
            chunk = Chunk(group, self._layout)
            for sink in self._sinks_for(value):
                sink.write(chunk)
        if sum(sink.buffered_rows() for sinks in self._sinks.values() for sink in sinks) > MAX_BUFFERED_ROWS:
            for sinks in self._sinks.values():
                for sink in sinks:
                    sink.flush()

    def close(self) -> list[FileSink]:
        """Close every file; returns them ordered by format as requested, then by key."""
        sinks = [sink for group in self._sinks.values() for sink in group]
        for sink in sinks:
            sink.close()
        order = {fmt: position for position, fmt in enumerate(self._formats)}
        return sorted(sinks, key=lambda sink: (order[sink.format], sink.key))

    def _sinks_for(self, value: str | None) -> list[FileSink]:
        if value in self._sinks:
            return self._sinks[value]
        if self._rule is not None and len(self._sinks) >= MAX_PARTITIONS:
            raise ExportError(f"partitioning by {self._rule.name!r} makes more than {MAX_PARTITIONS} partitions")
        folder = f"{self._rule.folder(value)}/" if self._rule else ""
        makers: dict[OutputFormat, Callable[[Path, str], FileSink]] = {
            OutputFormat.PARQUET: lambda path, key: ParquetSink(path, key, self._layout.parquet_schema),
            OutputFormat.CSV: lambda path, key: CsvSink(path, key, self._layout.csv_schema),
            OutputFormat.JSONL: JsonlSink,
        }
        sinks = []
        for fmt in self._formats:
            key = f"{self._prefix}{folder}{FILE_NAMES[fmt]}"
            path = self._workdir / f"{len(self._sinks):06d}-{FILE_NAMES[fmt]}"
            sinks.append(makers[fmt](path, key))
            if self._rule:
                self.partitions[key] = {self._rule.name: value}
        self._sinks[value] = sinks
        return sinks
