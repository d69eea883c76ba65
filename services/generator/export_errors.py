"""Why an export cannot be made; the run records either as GenerationFailed(EXPORT_FAILED)."""

from __future__ import annotations


class ExportError(Exception):
    """An export that cannot be made as asked; no manifest is written for it."""


class DatasetIntegrityError(ExportError):
    """The parts are not exactly records 0..n-1 of the job: a duplicate, a gap, a record of
    another job, or not the number of records expected."""
