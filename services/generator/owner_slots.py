"""At most N running jobs per owner across every worker on AWS.

The embedded runtime has one worker pool, which counts an owner's running jobs itself; on
AWS each Fargate task takes jobs from the queue on its own, so the count lives in DynamoDB:
one item per owner (`running#<owner>`, in the guard table the rate limits use) holding the
ids of the owner's running jobs, each with the time its lease on the slot ends. Every change
is a write conditioned on the item's version (optimistic concurrency), so two workers racing
for an owner's last slot cannot both take it. A worker renews its slots while its jobs run;
the slot of a worker that died lapses with its lease, and the next taker drops it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from services.generator.domain import MAX_JOBS_PER_USER

log = logging.getLogger(__name__)

CHANGE_ATTEMPTS = 8


class OwnerSlots:
    def __init__(
        self,
        dynamodb: Any,
        table: str,
        per_owner: int = MAX_JOBS_PER_USER,
        lease_seconds: int = 600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if per_owner < 1:
            raise ValueError("per_owner must be >= 1")
        self._db = dynamodb
        self._table = table
        self.per_owner = per_owner
        self.lease_seconds = lease_seconds
        self._clock = clock

    def acquire(self, owner: str, job_id: str) -> bool:
        """Take a slot of `owner` for `job_id`, or renew the one it holds; False when the
        owner's slots are all held by other live jobs."""
        return self._change(owner, job_id, take=True) is not False

    def take(self, owner: str, job_id: str) -> bool | None:
        """Like `acquire`, telling who holds the slot: True when this call took it, None
        when the job held one already (another delivery of a job running elsewhere: that
        worker's to release), False when the owner has none free."""
        return self._change(owner, job_id, take=True)

    def release(self, owner: str, job_id: str) -> None:
        """Give the job's slot back (nothing when it holds none)."""
        self._change(owner, job_id, take=False)

    def running(self, owner: str) -> list[str]:
        """The owner's jobs holding a live slot."""
        jobs, _ = self._read(owner)
        return sorted(jobs)

    def _change(self, owner: str, job_id: str, take: bool) -> bool | None:
        """True: changed (taken or released); None: the job held a slot already (renewed)
        or none to release; False: no slot free."""
        for _ in range(CHANGE_ATTEMPTS):
            jobs, version = self._read(owner)
            held = job_id in jobs
            if take:
                if not held and len(jobs) >= self.per_owner:
                    return False
                jobs[job_id] = int(self._clock()) + self.lease_seconds
            elif not held:
                return None
            else:
                del jobs[job_id]
            try:
                self._write(owner, jobs, version)
                return None if take and held else True
            except self._db.exceptions.ConditionalCheckFailedException:
                log.info("the slots of %s changed meanwhile; trying again", owner)
        raise RuntimeError(f"the running-job slots of {owner!r} keep changing; giving up")

    def _read(self, owner: str) -> tuple[dict[str, int], int]:
        """The owner's live slots (lapsed leases dropped) and the item's version (0: none)."""
        item = self._db.get_item(TableName=self._table, Key={"pk": {"S": _key(owner)}}, ConsistentRead=True).get("Item")
        if item is None:
            return {}, 0
        now = self._clock()
        jobs = {job: int(lease["N"]) for job, lease in item.get("jobs", {}).get("M", {}).items()}
        return {job: ends for job, ends in jobs.items() if ends > now}, int(item["version"]["N"])

    def _write(self, owner: str, jobs: dict[str, int], version: int) -> None:
        item = {
            "pk": {"S": _key(owner)},
            "jobs": {"M": {job: {"N": str(ends)} for job, ends in jobs.items()}},
            "version": {"N": str(version + 1)},
            "expires_at": {"N": str(max(jobs.values(), default=int(self._clock())) + 3600)},
        }
        self._db.put_item(
            TableName=self._table,
            Item=item,
            ConditionExpression="attribute_not_exists(pk) OR version = :seen",
            ExpressionAttributeValues={":seen": {"N": str(version)}},
        )


def _key(owner: str) -> str:
    return f"running#{owner}"
