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

from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

DEFAULT_PER_OWNER = 3
CHANGE_ATTEMPTS = 8


class OwnerSlots:
    def __init__(
        self,
        dynamodb: Any,
        table: str,
        per_owner: int = DEFAULT_PER_OWNER,
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
        """Take (or renew) a slot of `owner` for `job_id`; False when the owner's slots are
        all held by other live jobs."""
        return self._change(owner, job_id, take=True)

    def release(self, owner: str, job_id: str) -> None:
        """Give the job's slot back (nothing when it holds none)."""
        self._change(owner, job_id, take=False)

    def running(self, owner: str) -> list[str]:
        """The owner's jobs holding a live slot."""
        jobs, _ = self._read(owner)
        return sorted(jobs)

    def _change(self, owner: str, job_id: str, take: bool) -> bool:
        for _ in range(CHANGE_ATTEMPTS):
            jobs, version = self._read(owner)
            if take:
                if job_id not in jobs and len(jobs) >= self.per_owner:
                    return False
                jobs[job_id] = int(self._clock()) + self.lease_seconds
            elif jobs.pop(job_id, None) is None:
                return True
            try:
                self._write(owner, jobs, version)
                return True
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
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
        condition = "attribute_not_exists(pk)" if version == 0 else "version = :seen"
        values = {} if version == 0 else {"ExpressionAttributeValues": {":seen": {"N": str(version)}}}
        self._db.put_item(TableName=self._table, Item=item, ConditionExpression=condition, **values)


def _key(owner: str) -> str:
    return f"running#{owner}"
