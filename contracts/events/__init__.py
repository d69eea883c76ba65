"""The event catalog: every published event model, by service."""

from contracts.events.base import DomainEvent
from contracts.events.billing import (
    BudgetExceeded,
    BudgetWarning,
    CostRecorded,
    PromptEnhancementCharged,
    TemplateTestCharged,
    UsageCharged,
)
from contracts.events.dry_runs import StepCall, TemplateTested
from contracts.events.generator import (
    BatchFailed,
    BatchGenerated,
    BudgetStop,
    BudgetTrancheTaken,
    BudgetWrittenOff,
    DatasetExported,
    ExportedFile,
    GenerationClaimed,
    GenerationCrashed,
    GenerationFailed,
    GenerationLeaseRenewed,
    GenerationModelFailed,
    GenerationReleased,
    GenerationStopped,
    TokenUsage,
    UnbatchedUsageRecorded,
)
from contracts.events.guard import ContentBlocked
from contracts.events.jobs import (
    JobBudgetExceeded,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobDeleted,
    JobFailed,
    JobRequested,
    JobStarted,
    OutputFormat,
)
from contracts.events.notifications import (
    WebhookDeleted,
    WebhookDeliveryAttempted,
    WebhookDeliveryScheduled,
    WebhookRegistered,
)
from contracts.events.operations import ProjectionFailed
from contracts.events.seeds import (
    SeedDataUploaded,
    SeedDataValidated,
    SeedFormat,
    SeedGenerationFinished,
    SeedGenerationRequested,
    SeedUploadRequested,
)
from contracts.events.sweeps import SweepCancelled, SweepMember, SweepRequested
from contracts.events.templates import (
    PromptEnhanced,
    TemplateCreated,
    TemplateDeleted,
    TemplateForked,
    TemplateStep,
    TemplateVersionPublished,
)

ALL_EVENTS: tuple[type[DomainEvent], ...] = (
    TemplateCreated,
    TemplateVersionPublished,
    TemplateDeleted,
    SeedUploadRequested,
    SeedDataUploaded,
    SeedDataValidated,
    JobRequested,
    JobStarted,
    JobCancelRequested,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobBudgetExceeded,
    JobDeleted,
    GenerationClaimed,
    GenerationLeaseRenewed,
    GenerationReleased,
    GenerationStopped,
    GenerationFailed,
    BatchGenerated,
    BatchFailed,
    DatasetExported,
    CostRecorded,
    BudgetWarning,
    BudgetExceeded,
    ContentBlocked,
    GenerationModelFailed,
    PromptEnhanced,
    PromptEnhancementCharged,
    BudgetTrancheTaken,
    BudgetWrittenOff,
    UnbatchedUsageRecorded,
    UsageCharged,
    ProjectionFailed,
    GenerationCrashed,
    WebhookRegistered,
    WebhookDeleted,
    WebhookDeliveryScheduled,
    WebhookDeliveryAttempted,
    TemplateForked,
    SweepRequested,
    SweepCancelled,
    TemplateTested,
    TemplateTestCharged,
    SeedGenerationRequested,
    SeedGenerationFinished,
)

__all__ = [cls.__name__ for cls in ALL_EVENTS] + [
    "ALL_EVENTS",
    "BudgetStop",
    "DomainEvent",
    "ExportedFile",
    "OutputFormat",
    "SeedFormat",
    "StepCall",
    "SweepMember",
    "TemplateStep",
    "TokenUsage",
]
