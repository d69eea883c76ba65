"""POST /templates/analysis: what a save would say of a definition, without saving it.

The template editor asks it at every pause in typing, so it runs the save's own checks
(`TemplateHandlers.analyse`: includes resolved as the caller, then `domain.check_definition`:
the Jinja sandbox's parse, seed fields, filters, limits, text rules and the operator's content
rules) and answers what they found as data: a definition the save would refuse is a 200
with `valid: false` and its problems located by step and line, not a 400. Nothing is
appended to the log, not even the ContentBlocked a refused save records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field

from services.templates.domain import BlockedContent
from services.templates.prompts import TemplateAnalysis, TemplateProblem


@dataclass(frozen=True, slots=True)
class DefinitionAnalysis:
    """A definition's problems (none: the save would take it) and what its readable steps read
    (None when the problems stopped the reading, e.g. an include that does not resolve)."""

    problems: tuple[TemplateProblem, ...]
    blocks: tuple[BlockedContent, ...]
    reading: TemplateAnalysis | None
    step_ids: tuple[str, ...]

    @property
    def valid(self) -> bool:
        return not self.problems and not self.blocks


class AnalysisProblem(BaseModel):
    """One reason the save would refuse the definition."""

    code: str = Field(description="as POST /templates reports it, e.g. PROMPT_SYNTAX_ERROR, CONTENT_BLOCKED")
    message: str
    step_id: str | None = None
    line: int | None = Field(default=None, description="1-based line of the step's prompt, when known")
    column: int | None = Field(default=None, description="1-based column, when known (Jinja reports lines only)")
    field: str | None = Field(default=None, description="the body's field, e.g. name, tags, steps.<id>.prompt")


class StepAnalysis(BaseModel):
    step_id: str
    required_fields: list[str] = Field(description="dotted seed paths this step's prompt (with its includes) reads")
    uses_steps: list[str] = Field(description="earlier steps whose output this step reads, in step order")


class TemplateAnalysisReply(BaseModel):
    """The save's verdict on a definition, and what it reads."""

    valid: bool = Field(description="true: POST /templates would take this definition")
    errors: list[AnalysisProblem]
    required_fields: list[str] = Field(description="the seed fields a seed set needs, as the save would record them")
    steps: list[StepAnalysis]


def analysis_reply(analysis: DefinitionAnalysis) -> TemplateAnalysisReply:
    reading = analysis.reading
    problems = [
        AnalysisProblem(code=p.code, message=p.message, step_id=p.step_id, line=p.line, field=p.field)
        for p in analysis.problems
    ]
    problems.extend(_blocked(block) for block in analysis.blocks)
    return TemplateAnalysisReply(
        valid=analysis.valid,
        errors=problems,
        required_fields=list(reading.required_fields) if reading else [],
        steps=_steps(analysis.step_ids, reading),
    )


def _blocked(block: BlockedContent) -> AnalysisProblem:
    where = f"step {block.step_id!r}" if block.step_id else f"the {block.field}"
    return AnalysisProblem(
        code="CONTENT_BLOCKED",
        message=f"{where} breaks content rule {block.rule_id!r}",
        step_id=block.step_id,
        field=f"steps.{block.step_id}.prompt" if block.step_id else block.field,
    )


def _steps(step_ids: Sequence[str], reading: TemplateAnalysis | None) -> list[StepAnalysis]:
    fields = reading.step_fields if reading else {}
    references = reading.step_references if reading else {}
    return [
        StepAnalysis(
            step_id=step_id,
            required_fields=list(fields.get(step_id, ())),
            uses_steps=list(references.get(step_id, ())),
        )
        for step_id in step_ids
    ]
