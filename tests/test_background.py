import threading
import time

from backend.background import Background
from tests.helpers import wait_until


def test_a_task_that_submits_itself_for_later_waits_that_long_instead_of_spinning():
    background = Background(threads=1)
    runs: list[float] = []
    done = threading.Event()

    def periodic():
        runs.append(time.monotonic())
        if len(runs) == 3:
            done.set()
        else:
            background.submit("periodic", periodic, delay=0.3)

    background.submit("periodic", periodic)
    assert done.wait(10)
    background.stop()
    gaps = [b - a for a, b in zip(runs, runs[1:])]
    assert len(runs) == 3 and all(gap >= 0.29 for gap in gaps), gaps


def test_periodic_chores_keep_running_after_a_failure_and_do_not_keep_the_service_busy():
    background = Background(threads=1)
    runs = []

    def chore():
        runs.append(1)
        raise RuntimeError("Label Studio is down")

    background.every("chore", chore, 0.05)
    wait_until(lambda: len(runs) >= 3, timeout=10, what="three runs of a failing chore")
    assert background.wait_idle(1) and background.idle()
    done = threading.Event()
    background.submit("one-off", done.wait, delay=0.2)
    assert not background.idle()  # a one-off task still waiting is work in progress
    done.set()
    assert background.wait_idle(10)
    background.stop()


def test_a_burst_of_submissions_runs_once_and_a_submission_during_a_run_runs_once_more():
    background = Background(threads=1)
    started, release, calls = threading.Event(), threading.Event(), []

    def task():
        calls.append(1)
        started.set()
        release.wait(10)

    background.submit("k", task)
    assert started.wait(10)
    for _ in range(5):
        background.submit("k", task)  # while it runs: one more run afterwards, not five
    release.set()
    assert background.wait_idle(10)
    background.stop()
    assert len(calls) == 2
