"""Read-your-writes catch-ups (palette.projections.catch_up): a reader waits for a catch-up
only when the log holds events its views have not applied, and readers that queued behind
one catch-up are covered by it rather than each repeating it."""

from __future__ import annotations

import threading
from typing import Any, cast

from palette.projections.catch_up import CatchUps
from palette.projections.runner import ProjectionRunner


class Runner:
    """Counts its catch-ups; `hold` makes the next one wait until released."""

    def __init__(self) -> None:
        self.runs = 0
        self.hold = threading.Event()
        self.holding = threading.Event()
        self.release = threading.Event()

    def run_once(self) -> int:
        self.runs += 1
        if self.hold.is_set():
            self.hold.clear()
            self.holding.set()
            assert self.release.wait(30)
        return 1


def as_runner(runner: Runner) -> ProjectionRunner[Any]:
    return cast(ProjectionRunner[Any], runner)


def test_a_reader_with_nothing_new_does_not_wait_for_a_catch_up_in_progress() -> None:
    head = [10]
    view = Runner()
    catch_ups = CatchUps(lambda: head[0], lambda: None)
    read = catch_ups.of([as_runner(view)])
    read()
    view.hold.set()
    background = threading.Thread(target=catch_ups.catch_up_all, args=([as_runner(view)],))
    background.start()
    assert view.holding.wait(30)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(10)  # before: the reader queued on the lock the background thread holds
    done = not reader.is_alive()
    view.release.set()
    background.join(30)
    reader.join(30)

    assert done
    assert view.runs == 2  # the first read's and the background's, none for the last read


def test_a_reader_catches_up_when_the_log_moved_and_queued_readers_share_one_catch_up() -> None:
    head = [10]
    view, other = Runner(), Runner()
    notified: list[int] = []
    catch_ups = CatchUps(lambda: head[0], lambda: notified.append(1))
    read = catch_ups.of([as_runner(view)])
    read()
    head[0] = 11
    view.hold.set()
    first = threading.Thread(target=read)
    first.start()
    assert view.holding.wait(30)
    queued = [threading.Thread(target=read) for _ in range(5)]
    for thread in queued:
        thread.start()
    view.release.set()
    for thread in [first, *queued]:
        thread.join(30)

    assert view.runs == 2  # one at 10, one at 11 for all six readers
    assert other.runs == 0  # a route runs only the views it reads
    assert len(notified) == 2


def test_without_a_head_every_catch_up_runs_its_views() -> None:
    view = Runner()
    read = CatchUps(None, lambda: None).of([as_runner(view)])
    read()
    read()
    assert view.runs == 2
