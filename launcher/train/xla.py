"""XLA (TPU) on every rank: who this process is, evaluation batches of one shape, and the compile guard.

An XLA device runs compiled graphs, one per distinct input shape (and per distinct Python-side
structure of the step). With fixed shapes the count stops growing once the first epoch has
compiled every graph it needs (the first training step, which creates the optimizer state, the
steady step, the parameter checksum of logging steps, the evaluation step); a count that still
grows later is a shape leak, and each leak costs a compile
(seconds for a small BERT, minutes for a large model). The CompileWatch counts compilations from torch_xla's own
metrics (host-side counters: reading them never waits for the device), adds the count to the
train, eval and summary records, and warns with the step when it grows after the first epoch.

torch_xla is imported only inside functions: this module is imported on every platform.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch

FILLER_KEY = "ftl_filler"  # evaluation batches: 1 for rows added to fill the last batch, 0 for real rows
WARNINGS_SHOWN = 3  # leak warnings printed as they happen; the summary record lists every step


def prepare_rank() -> None:
    """Before anything else on an XLA rank.

    accelerate's XLA launcher (xmp.spawn) sets no RANK/LOCAL_RANK: take them from the XLA runtime, so
    that status files and records name the right rank and host.

    transformers asks at every forward whether the padding mask is all ones (to skip the mask and
    reach a faster GPU kernel): on XLA that question is a device->host transfer per step, which stalls
    the host until the previous step has run. The answer changes nothing there (attention with an
    all-ones mask is the same math), so an XLA rank answers "keep the mask" without asking."""
    import torch_xla.runtime as xr

    rank, local = xr.global_ordinal(), xr.local_ordinal()
    per_host = max(xr.local_device_count(), 1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(local), WORLD_SIZE=str(xr.world_size()),
                      GROUP_RANK=str(rank // per_host))  # fmt: skip
    from transformers import masking_utils

    if hasattr(masking_utils, "_ignore_bidirectional_mask_sdpa"):
        masking_utils._ignore_bidirectional_mask_sdpa = lambda *args, **kwargs: False


def sync() -> None:
    """Run the pending graph now (what the data loader does at every batch)."""
    import torch_xla

    torch_xla.sync()


def check_xla(accelerator) -> None:
    """The plan says XLA: refuse to train anywhere else (an interpreter without torch_xla would
    silently give a CPU run)."""
    from accelerate.utils import DistributedType

    from launcher.train.setup import SetupError

    if accelerator.distributed_type != DistributedType.XLA:
        raise SetupError(
            f"the plan is for XLA but accelerate chose {accelerator.distributed_type} on {accelerator.device}: "
            f"this interpreter ({sys.executable}) needs torch_xla, and PJRT_DEVICE must be set (the node agent sets it)"
        )


class FillToBatch:
    """Collate evaluation rows into batches of exactly `rows`: a short last batch is completed with
    copies of its last row, flagged in FILLER_KEY, so it has the same shape as every other batch and
    compiles no new graph; evaluation leaves the flagged rows out of the metrics."""

    def __init__(self, collate: Callable, rows: int):
        self.collate = collate
        self.rows = rows

    def __call__(self, features: list) -> dict:
        real = len(features)
        filled = list(features) + [features[-1]] * (self.rows - real)
        batch = self.collate(filled)
        batch[FILLER_KEY] = torch.tensor([0] * real + [1] * (self.rows - real), dtype=torch.int32)
        return batch


def drop_filler(logits: torch.Tensor, labels: torch.Tensor, filler: torch.Tensor | None):
    """(logits, labels) without the rows FillToBatch added (host tensors, after gathering)."""
    if filler is None:
        return logits, labels
    keep = filler == 0
    return logits[keep], labels[keep]


def compile_count() -> int:
    """XLA graph compilations in this process so far (torch_xla's CompileTime metric: one sample per compile)."""
    return _samples("CompileTime")


def transfer_count() -> int:
    """Device->host transfers so far: each one is a host sync (the host waits for the device)."""
    return _samples("TransferFromDeviceTime")


def _samples(metric: str) -> int:
    import torch_xla.debug.metrics as met

    data = met.metric_data(metric)
    return int(data[0]) if data else 0


class CompileWatch:
    """Compilations per epoch, and a warning naming the step when they keep coming after the first epoch."""

    def __init__(self, is_main: bool, count: Callable[[], int] = compile_count,
                 say: Callable[[str], None] | None = None, sync_steps: Callable[[int], bool] | None = None):  # fmt: skip
        self.count = count
        self.sync_steps = sync_steps
        self.say = say if say is not None else (lambda text: print(f"[train] {text}", flush=True)) if is_main else (lambda text: None)
        self.epoch = 0
        self.step = 0
        self.seen = count()
        self.by_epoch: dict[int, int] = {}  # epoch (1-based) -> compilations when it ended (with its evaluation)
        self.leaks: list[dict] = []  # {"step", "epoch", "new"} for every compile after the first epoch

    def after_step(self, step: int, epoch: int) -> None:
        """Called after every optimizer step (epoch 0-based). A step's graph compiles when the next
        batch is fetched, so growth seen here belongs to the steps since the previous call.

        At a logging step the step's graph is run here: the loop then reads the loss from memory. Reading
        it first would compile and run the forward pass as a graph of its own (the whole step graph
        minus the backward), and run it again inside the step graph."""
        if self.sync_steps is not None and self.sync_steps(step):
            sync()
        now = self.count()
        if epoch != self.epoch:
            self.by_epoch[self.epoch + 1] = self.seen  # everything up to this epoch's first step
            self.epoch = epoch
        if now > self.seen and epoch >= 1:
            self._leak(now - self.seen, f"between step {self.step} and step {step}", step)
        self.seen, self.step = now, step

    def observe(self, what: str = "the end", first: bool = False) -> int:
        """At a logging step, an evaluation, a checkpoint or the end: the count now, attributed to the
        current epoch. The first of each kind compiles its own graphs (the parameter checksum, the
        evaluation step, ...): those count as warm-up, wherever they fall."""
        now = self.count()
        if now > self.seen and self.epoch >= 1 and not first:
            self._leak(now - self.seen, f"at {what} after step {self.step}", self.step)
        self.seen = now
        return now

    def _leak(self, new: int, where: str, step: int) -> None:
        self.leaks.append({"step": step, "epoch": self.epoch + 1, "new": new})
        if len(self.leaks) <= WARNINGS_SHOWN:
            self.say(
                f"warning: XLA compiled {new} new graph(s) {where}, in epoch {self.epoch + 1}: after the first epoch "
                "every graph should be cached; a batch shape that changes (dynamic padding, a ragged batch) "
                "compiles again at every new shape"
            )

    def summary(self) -> dict:
        total = self.observe("saving the model", first=True)
        by_epoch = {**self.by_epoch, self.epoch + 1: total}
        if self.leaks:
            new = sum(leak["new"] for leak in self.leaks)
            self.say(f"warning: XLA compiled {new} graph(s) after the first epoch, at steps "
                     f"{', '.join(str(leak['step']) for leak in self.leaks[:20])}: shapes are not static")  # fmt: skip
        return {
            "xla_compiles": total,
            "xla_compiles_by_epoch": {str(epoch): count for epoch, count in sorted(by_epoch.items())},
            "xla_compiles_after_first_epoch": sum(leak["new"] for leak in self.leaks),
            "xla_leak_steps": [leak["step"] for leak in self.leaks],
        }

    def counting(self, records):
        return CountingRecords(records, self)


class CountingRecords:
    """RankRecords that add the compilation count to train and eval records, and the per-epoch counts
    and leaks to the summary."""

    WHAT = {"train": "a logging step", "eval": "an evaluation", "checkpoint": "a checkpoint"}

    def __init__(self, records, watch: CompileWatch):
        self._records = records
        self._watch = watch
        self._seen_kinds: set[str] = set()

    def write(self, kind: str, **fields) -> None:
        if kind in self.WHAT:
            first = kind not in self._seen_kinds
            self._seen_kinds.add(kind)
            fields["xla_compiles"] = self._watch.observe(self.WHAT[kind], first=first)
            if kind == "train":
                fields["xla_host_transfers"] = transfer_count()
        elif kind == "setup":
            fields["xla_compiles"] = self._watch.count()
        elif kind == "summary":
            fields.update(self._watch.summary())
        self._records.write(kind, **fields)

    def __getattr__(self, name: str):
        return getattr(self._records, name)
