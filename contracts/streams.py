"""Every stream's name: a stream id is a prefix naming what the stream holds, then the id
of the thing it is about. Each service writes only its own streams and reads the others'
by these names, so they are spelled here and nowhere else.
"""

from __future__ import annotations

JOB = "job-"
"""One job's lifecycle; the jobs service writes it."""
GENERATION = "generation-"
"""The generator's run of one job: claims, leases, batches, budget tranches, its end."""
LEDGER = "ledger-"
"""Billing's charges for one job (or for a user's calls outside jobs, see `user_ledger_id`)."""
TEMPLATE = "template-"
"""One template's versions; the templates service writes it."""
SEED = "seed-"
"""One seed file's upload and validations; the seeds service writes it."""
ENHANCEMENT = "enhance-"
"""One prompt enhancement's model call; the templates service writes it, billing charges it."""
DRY_RUN = "dry-run-"
"""One template dry run's model calls; the templates service writes it, billing charges it."""
TEMPLATE_GUARD = "guard-template-"
"""The content rules a template definition broke (templates service)."""
JOB_GUARD = "guard-job-"
"""The content rules a job's prompts or outputs broke (generator)."""
PROJECTION = "projection-"
"""The events a projection set aside as failed."""
WEBHOOKS = "webhooks-"
"""One user's webhooks (id: the owner); the notifications service writes it."""
WEBHOOK_DELIVERY = "webhook-delivery-"
"""One delivery of one fact to one webhook, with its attempts (notifications service)."""
USER_LEDGER = "user-"
"""The pseudo job id of a user's ledger: charges outside any job."""

SWEEP = "sweep-"
"""One sweep's plan and its cancel (its members are ordinary jobs); the jobs service writes it."""

JOB_STREAMS = (JOB, GENERATION, LEDGER)
"""The prefixes of the streams that tell one job's story (id: the job id)."""


def job_stream(job_id: str) -> str:
    return JOB + job_id


def sweep_stream(sweep_id: str) -> str:
    return SWEEP + sweep_id


def generation_stream(job_id: str) -> str:
    return GENERATION + job_id


def ledger_stream(job_id: str) -> str:
    return LEDGER + job_id


def template_stream(template_id: str) -> str:
    return TEMPLATE + template_id


def seed_stream(seed_id: str) -> str:
    return SEED + seed_id


def enhancement_stream(enhancement_id: str) -> str:
    return ENHANCEMENT + enhancement_id


def dry_run_stream(test_id: str) -> str:
    return DRY_RUN + test_id


def template_guard_stream(template_id: str) -> str:
    return TEMPLATE_GUARD + template_id


def job_guard_stream(job_id: str) -> str:
    return JOB_GUARD + job_id


def projection_stream(projection: str) -> str:
    return PROJECTION + projection


def user_ledger_id(owner: str) -> str:
    """The pseudo job id of a user's charges outside jobs (its ledger is `ledger_stream` of it)."""
    return USER_LEDGER + owner


def webhooks_stream(owner: str) -> str:
    return WEBHOOKS + owner


def webhook_delivery_stream(delivery_id: str) -> str:
    return WEBHOOK_DELIVERY + delivery_id
