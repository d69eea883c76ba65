"""A job's task_size rounds UP to the smallest valid Fargate cpu/memory pair that covers it."""

from __future__ import annotations

import pytest

from contracts.events.jobs import TaskSize
from services.generator.fargate_sizes import FARGATE_SIZES, FargateSize, fargate_size


@pytest.mark.parametrize(
    ("vcpu", "memory_mib", "cpu", "memory"),
    [
        (0.25, 512, 256, 512),  # the smallest task, as asked
        (1, 2048, 1024, 2048),  # a valid pair stays as it is
        (0.25, 700, 256, 1024),  # memory up to the row's next size
        (0.25, 4096, 512, 4096),  # more memory than 0.25 vCPU can have: the next CPU row
        (0.3, 512, 512, 1024),  # vCPU up to the next row, memory up to that row's least
        (1, 512, 1024, 2048),
        (3, 8000, 4096, 8192),
        (2, 16385, 4096, 17408),  # past 2 vCPU's largest memory
        (4, 30721, 8192, 32768),  # 8 vCPU's memory steps by 4 GiB
        (8, 61441, 16384, 65536),  # 16 vCPU's by 8 GiB
        (0.25, 122_880, 16384, 122_880),  # the most memory needs the largest task
        (16, 512, 16384, 32768),
    ],
)
def test_a_task_size_rounds_up_to_a_valid_fargate_pair(vcpu: float, memory_mib: int, cpu: int, memory: int) -> None:
    assert fargate_size(TaskSize(vcpu=vcpu, memory_mib=memory_mib)) == FargateSize(cpu, memory)


def test_every_valid_pair_maps_to_itself_and_never_below_the_request() -> None:
    for row in FARGATE_SIZES:
        for memory in row.memory_mib:
            assert fargate_size(TaskSize(vcpu=row.cpu / 1024, memory_mib=memory)) == FargateSize(row.cpu, memory)
    for vcpu in (0.25, 0.26, 0.5, 0.75, 1.5, 2.5, 5, 9, 15.9):
        for memory_mib in (512, 1000, 3000, 9000, 20000, 40000, 70000, 100000):
            size = fargate_size(TaskSize(vcpu=vcpu, memory_mib=memory_mib))
            assert size.cpu >= vcpu * 1024 and size.memory_mib >= memory_mib
            assert size.overrides == {"cpu": str(size.cpu), "memory": str(size.memory_mib)}
