"""Audit tooling over the event store port: verify the log, replay the views, explain a job,
archive the log to Parquet and back. Works on every event store adapter."""
