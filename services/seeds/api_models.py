"""The seeds API's request and response bodies: what a client sends and gets back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from contracts.events.seeds import SeedFormat
from contracts.identifiers import MAX_ID_CHARS, has_control_character, id_problem

MAX_FILENAME_CHARS = 255


def _server_id(value: str) -> str:
    """An id the server made (seed, template): refused before it is looked up."""
    if problem := id_problem(value):
        raise ValueError(problem)
    return value


def _filename(value: str) -> str:
    """A client's filename: recorded with the seed (its key takes a sanitised copy), so no
    control character and not blank."""
    if has_control_character(value):
        raise ValueError("the filename holds a control character")
    if not value.strip():
        raise ValueError("the filename is blank")
    return value


ServerId = Annotated[str, AfterValidator(_server_id), Field(description=f"1 to {MAX_ID_CHARS} of A-Z a-z 0-9 _ - . :")]
PositionUnit = Literal["line", "element", "row"]
POSITION_UNITS: dict[SeedFormat, PositionUnit] = {
    SeedFormat.JSONL: "line",
    SeedFormat.JSON: "element",
    SeedFormat.CSV: "row",
    SeedFormat.PARQUET: "row",
}


class UploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: Annotated[str, AfterValidator(_filename)] = Field(
        min_length=1, max_length=MAX_FILENAME_CHARS, examples=["books.jsonl"],
        description=f"at most {MAX_FILENAME_CHARS} characters, no control character",
    )
    format: str | None = Field(
        default=None, description="JSONL, JSON, CSV or PARQUET; told from the filename when omitted"
    )
    size_bytes: int | None = Field(default=None, ge=0, description="declared size, refused up front if too large")


class UploadGrantResponse(BaseModel):
    seed_id: str
    upload_url: str
    method: Literal["PUT"] = "PUT"
    expires_at: datetime
    max_bytes: int
    blob_key: str
    filename: str
    format: SeedFormat


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed_id: ServerId
    template_id: ServerId
    template_version: int | None = Field(default=None, ge=1, description="latest when omitted")


class FailingRecordResponse(BaseModel):
    position: int = Field(description="1-based line (JSONL), element (JSON) or row (CSV, Parquet)")
    missing: list[str]
    problem: str | None = None


class ValidationReportResponse(BaseModel):
    seed_id: str
    template_id: str
    template_version: int
    required_fields: list[str]
    valid: bool
    record_count: int
    invalid_records: int
    unreadable_records: int
    missing_counts: dict[str, int]
    position_unit: PositionUnit
    failing_records: list[FailingRecordResponse] = Field(description="the first 20, in file order")
    file_error: str | None = None


class SeedValidationResponse(BaseModel):
    template_id: str
    template_version: int
    valid: bool
    record_count: int
    invalid_records: int
    unreadable_records: int
    missing_counts: dict[str, int]
    file_error: str | None = None


class SeedResponse(BaseModel):
    seed_id: str
    filename: str
    format: SeedFormat
    blob_key: str
    max_bytes: int
    upload_expires_at: datetime | None
    uploaded: bool
    size_bytes: int | None
    sha256: str | None
    record_count: int | None
    validations: list[SeedValidationResponse]
