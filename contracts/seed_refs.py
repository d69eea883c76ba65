"""How a client names a seed set: its seed id, or the `s3_key` its upload grant handed out.

Clients written to the Plot Palette documents hold only the `s3_key` of their upload
(`seed-data/<owner>/<seed id>/<filename>`), and may write it as `s3://<bucket>/<s3_key>`.
Every route that takes a seed set accepts all three (seeds' validate now, jobs' create
next) and reads the seed id out of them with `parse_seed_reference`.

Parsing proves nothing about ownership: the key names which seed stream to look in. The
reader must then check that `blob_key`, when given, is the key that seed recorded (it lies
under its owner's prefix) and that the seed is the caller's; a bucket in an `s3://` form is
not checked against anything here.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.identifiers import id_problem

SEED_KEY_PREFIX = "seed-data"
"""The first segment of every seed file's key (`palette.blobs.keys.SEEDS`)."""

MAX_REFERENCE_CHARS = 2048


class InvalidSeedReference(ValueError):
    """Neither a seed id nor a seed file's key."""


@dataclass(frozen=True, slots=True)
class SeedReference:
    """A seed named by a client: its id, and the key it was named by (None: named by id)."""

    seed_id: str
    blob_key: str | None = None


def parse_seed_reference(text: str) -> SeedReference:
    """The seed a seed id, an `s3_key` or an `s3://bucket/<s3_key>` names."""
    if len(text) > MAX_REFERENCE_CHARS:
        raise InvalidSeedReference(f"a seed reference has at most {MAX_REFERENCE_CHARS} characters")
    key = text
    if text.startswith("s3://"):
        bucket, _, key = text.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise InvalidSeedReference("an s3:// seed path is s3://<bucket>/<s3_key of the upload>")
    if "/" not in key:
        if problem := id_problem(key, "seed id"):
            raise InvalidSeedReference(problem)
        return SeedReference(key)
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != SEED_KEY_PREFIX or not all(parts):
        raise InvalidSeedReference(f"not a seed file's key: an s3_key is {SEED_KEY_PREFIX}/<user>/<seed id>/<filename>")
    if problem := id_problem(parts[2], "seed id"):
        raise InvalidSeedReference(problem)
    return SeedReference(parts[2], key)


__all__ = ["SEED_KEY_PREFIX", "InvalidSeedReference", "SeedReference", "parse_seed_reference"]
