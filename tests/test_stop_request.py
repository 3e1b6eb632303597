"""A rank's stop request (SIGTERM, Slurm's USR2): outside the training loop it stops the rank at once,
inside it only sets the flag the loop checks, and once the rank's work is done it is ignored."""

from __future__ import annotations

import os
import signal

import pytest

from launcher.train.preemption import StopRequest
from launcher.train.status import Stopped


@pytest.fixture
def stop():
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGUSR2, signal.SIGTERM)}
    request = StopRequest()
    assert request.install()
    yield request
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)  # a signal to this process runs its Python handler before os.kill returns


def test_outside_the_loop_a_request_stops_the_rank_at_once(stop):
    with pytest.raises(Stopped) as stopped:
        deliver(signal.SIGUSR2)
    assert stopped.value.code == 128 + signal.SIGUSR2 and stop.signum == signal.SIGUSR2


def test_inside_the_loop_a_request_only_sets_the_flag_and_once_is_enough(stop):
    stop.in_loop = True
    deliver(signal.SIGTERM)
    deliver(signal.SIGUSR2)
    assert stop.requested and stop.signum == signal.SIGTERM


def test_after_the_work_is_done_a_request_is_ignored(stop):
    stop.finish()
    deliver(signal.SIGTERM)  # would raise Stopped before finish()
    assert not stop.requested and stop.signum is None
