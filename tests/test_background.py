import threading
import time

from backend.background import Background


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
