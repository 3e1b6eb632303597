"""Stop requests (Slurm's USR2 warning before the time limit, or SIGTERM): the handler only sets a
flag; the loop checks it at each optimizer-step boundary, the ranks agree, checkpoint and exit.

Outside the training loop (loading, saving) there is nothing to checkpoint yet, so a signal
stops the rank at once. Once the rank's work is done, a signal has nothing left to stop: it is
ignored, so the rank still reports "done" (a stop raised while that report is written would leave
the rank looking as if it had died).
"""

from __future__ import annotations

import signal
import threading

from launcher import faults
from launcher.train.status import Stopped


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self.in_loop = False
        self.finished = False

    def install(self) -> bool:
        """False where Python cannot handle signals: accelerate's XLA launcher runs each rank in a thread
        of its process, and only a main thread may install handlers (a stop request then ends the rank)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in (signal.SIGUSR2, signal.SIGTERM):
            signal.signal(signum, self._handle)
        return True

    def _handle(self, signum, _frame) -> None:
        faults.wake()
        if self.requested or self.finished:
            # finished: nothing left to stop. Requested: once is enough (Slurm signals every process of
            # the step, and the node agent passes it on)
            return
        self.requested = True
        self.signum = signum
        if not self.in_loop:
            raise Stopped(signum)

    def finish(self) -> None:
        """The rank's work is done (model saved, results written): later stop requests are ignored."""
        self.finished = True

    def agreed(self, accelerator) -> bool:
        """Collective: true on every rank as soon as any rank was asked to stop, so all stop at the
        same step (one rank saving while another trains on would deadlock)."""
        if accelerator.num_processes == 1:
            return self.requested
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
