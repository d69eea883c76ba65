"""The seeds API's request and response bodies: what a client sends and gets back.

Beside Palette's own fields they take and answer the Plot Palette documents' ones: a seed
set is named by its `seed_id` or by the documents' `s3_key` (`contracts.seed_refs`), an
upload grant says `s3_key` and `expires_in`, a report says `missing_fields`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, computed_field

from contracts.events.seeds import SeedFormat
from contracts.identifiers import MAX_ID_CHARS, has_control_character, id_problem
from contracts.seed_refs import InvalidSeedReference, parse_seed_reference
from palette.api.aliases import show_aliases

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


def _seed_reference(value: str) -> str:
    """A seed id or an upload's s3_key (`contracts.seed_refs`): refused before it is looked up."""
    try:
        parse_seed_reference(value)
    except InvalidSeedReference as invalid:
        raise ValueError(str(invalid)) from None
    return value


def _media_type(value: str) -> str:
    if has_control_character(value) or "/" not in value:
        raise ValueError("content_type is a media type such as application/json")
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
        min_length=1,
        max_length=MAX_FILENAME_CHARS,
        examples=["books.jsonl"],
        description=f"at most {MAX_FILENAME_CHARS} characters, no control character",
    )
    format: str | None = Field(
        default=None, description="JSONL, JSON, CSV or PARQUET; told from the filename when omitted"
    )
    size_bytes: int | None = Field(default=None, ge=0, description="declared size, refused up front if too large")
    content_type: Annotated[str, AfterValidator(_media_type)] | None = Field(
        default=None,
        max_length=255,
        examples=["application/json"],
        description="the Content-Type the client will PUT with (any is accepted); it names the format "
        "when neither `format` nor the filename's extension does",
    )


class UploadGrantResponse(BaseModel):
    seed_id: str
    upload_url: str
    method: Literal["PUT"] = "PUT"
    expires_at: datetime
    expires_in: int = Field(description="seconds the upload URL stays valid (900)")
    max_bytes: int
    blob_key: str
    filename: str
    format: SeedFormat
    content_type: str | None = Field(default=None, description="as asked; the PUT may send it")

    @computed_field(  # type: ignore[prop-decorator]
        description="the documented name of `blob_key`: the handle a client may pass wherever a seed set is named"
    )
    @property
    def s3_key(self) -> str:
        return self.blob_key


SeedRef = Annotated[
    str,
    AfterValidator(_seed_reference),
    Field(description="the seed id, or the upload's s3_key (as s3://<bucket>/<s3_key> too)"),
]


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=show_aliases)

    seed_id: SeedRef = Field(validation_alias=AliasChoices("seed_id", "s3_key"))
    template_id: ServerId
    template_version: int | None = Field(default=None, ge=1, description="latest when omitted")


class FailingRecordResponse(BaseModel):
    position: int = Field(description="1-based line (JSONL), element (JSON) or row (CSV, Parquet)")
    missing: list[str]
    problem: str | None = None


class ValidationReportResponse(BaseModel):
    """Whether every record has every field the template version reads, and what is missing.

    Answered 200 whether or not the seed set is valid: the report is the result."""

    seed_id: str
    s3_key: str = Field(description="the seed file's key (its `blob_key`)")
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

    @computed_field(description="the required fields some record lacks, in `required_fields` order")  # type: ignore[prop-decorator]
    @property
    def missing_fields(self) -> list[str]:
        return [name for name in self.required_fields if self.missing_counts.get(name)]


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

    @computed_field(description="the documented name of `blob_key`")  # type: ignore[prop-decorator]
    @property
    def s3_key(self) -> str:
        return self.blob_key


class SeedSummary(BaseModel):
    """One seed set in the caller's list (GET /seed-data/{id} has its validations in full)."""

    seed_id: str
    filename: str
    format: SeedFormat
    status: Literal["REQUESTED", "UPLOADED", "VALIDATED"] = Field(
        description="REQUESTED: upload granted; UPLOADED: the file landed; VALIDATED: checked against a template"
    )
    size_bytes: int | None = Field(description="null until the file landed")
    records: int | None = Field(description="records read from the file; null until it landed")
    created_at: str
    uploaded_at: str | None
    validated_at: str | None = Field(description="when the last validation ran")
    template_id: str | None = Field(description="the template version of the last validation")
    template_version: int | None
    valid: bool | None = Field(description="the last validation's verdict")


class SeedList(BaseModel):
    items: list[SeedSummary] = Field(description="newest first")
    next_token: str | None = Field(description="pass as next_token for the next page; null on the last")
