"""A job's `task_size` as the Fargate task size that runs it: rounded up to a valid pair.

Fargate (Linux) takes only these task-level `cpu` / `memory` pairs (CPU units, 1024 = 1 vCPU;
memory in MiB):

| cpu   | vCPU | memory (MiB)                       |
|-------|------|------------------------------------|
| 256   | 0.25 | 512, 1024, 2048                    |
| 512   | 0.5  | 1024 to 4096, in steps of 1024     |
| 1024  | 1    | 2048 to 8192, in steps of 1024     |
| 2048  | 2    | 4096 to 16384, in steps of 1024    |
| 4096  | 4    | 8192 to 30720, in steps of 1024    |
| 8192  | 8    | 16384 to 61440, in steps of 4096   |
| 16384 | 16   | 32768 to 122880, in steps of 8192  |

A request is rounded UP, never down: the smallest CPU row with at least the vCPUs asked for
whose largest memory holds the memory asked for, then the smallest memory of that row that
is at least the memory asked for. That is also the cheapest valid pair that covers the
request (a higher row starts at more memory and costs more per vCPU-hour). Every TaskSize
(0.25-16 vCPU, 512-122,880 MiB) has one. Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from contracts.events.jobs import TaskSize


@dataclass(frozen=True)
class FargateRow:
    cpu: int
    memory_mib: tuple[int, ...]
    """The valid memory sizes of this CPU, ascending."""


def _steps(low: int, high: int, step: int) -> tuple[int, ...]:
    return tuple(range(low, high + 1, step))


FARGATE_SIZES: tuple[FargateRow, ...] = (
    FargateRow(256, (512, 1024, 2048)),
    FargateRow(512, _steps(1024, 4096, 1024)),
    FargateRow(1024, _steps(2048, 8192, 1024)),
    FargateRow(2048, _steps(4096, 16384, 1024)),
    FargateRow(4096, _steps(8192, 30720, 1024)),
    FargateRow(8192, _steps(16384, 61440, 4096)),
    FargateRow(16384, _steps(32768, 122880, 8192)),
)


@dataclass(frozen=True)
class FargateSize:
    """A valid Fargate task size, as RunTask's `overrides.cpu` / `overrides.memory` take it."""

    cpu: int
    memory_mib: int

    @property
    def overrides(self) -> dict[str, str]:
        return {"cpu": str(self.cpu), "memory": str(self.memory_mib)}


class NoFargateSize(ValueError):
    """The request is larger than Fargate's largest task (TaskSize's bounds prevent it)."""


def fargate_size(size: TaskSize) -> FargateSize:
    """The smallest valid Fargate size with at least `size`'s vCPUs and memory."""
    cpu_units = math.ceil(size.vcpu * 1024)
    for row in FARGATE_SIZES:
        if row.cpu < cpu_units or row.memory_mib[-1] < size.memory_mib:
            continue
        memory = next(m for m in row.memory_mib if m >= size.memory_mib)
        return FargateSize(row.cpu, memory)
    raise NoFargateSize(f"no Fargate task has {size.vcpu} vCPU and {size.memory_mib} MiB")
