"""Run by tests/test_deepspeed_zero_collect.py under `accelerate launch`, with the accelerate.yaml and
deepspeed.json that `ftlaunch submit --dry-run` rendered into RUN_DIR:

    python -m accelerate.commands.launch --config_file RUN_DIR/accelerate.yaml ... tests/zero_state_script.py RUN_DIR OUT

It builds the Accelerator exactly as the entrypoint does (launcher.train.setup.make_accelerator: gloo
on CPU, the deepspeed.json checks), loads the recipe's model (zero.Init under ZeRO-3), takes a few
AdamW steps on fixed random token ids, then writes
  OUT/state/      accelerator.save_state (DeepSpeed: the ZeRO shards under state/pytorch_model/)
  OUT/full.pt     accelerator.get_state_dict(model) from the main process (the gathered weights)
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
from pathlib import Path

faulthandler.enable()  # a native abort (SIGABRT/SIGSEGV) prints this rank's Python stack


def main() -> None:
    run_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    import torch
    from accelerate.utils import set_seed

    from launcher.plan import Plan
    from launcher.recipe import load_resolved
    from launcher.train.model import load_model
    from launcher.train.setup import make_accelerator

    plan = Plan.from_dict(json.loads((run_dir / "plan.json").read_text()))
    recipe = load_resolved(run_dir / "recipe.yaml")
    accelerator = make_accelerator(recipe, plan, run_dir)
    set_seed(0)
    model = load_model(recipe)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    rows = 8 * plan.per_device_batch_size * plan.world_size
    ids = torch.randint(1000, 2000, (rows, 16), generator=generator)
    labels = torch.randint(0, 2, (rows,), generator=generator)
    dataset = torch.utils.data.TensorDataset(ids, labels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=plan.per_device_batch_size)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    steps = 0
    for input_ids, batch_labels in loader:
        with accelerator.accumulate(model):
            loss = model(input_ids=input_ids, labels=batch_labels).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        steps += 1
        if steps == 4:
            break
    accelerator.save_state(str(out / "state"))
    state_dict = accelerator.get_state_dict(model)  # collective under ZeRO-3
    if accelerator.is_main_process:
        torch.save({name: tensor.detach().clone() for name, tensor in state_dict.items()}, out / "full.pt")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
    # Everything this script checks is on disk and every rank passed the barrier: skip the
    # interpreter's native teardown (DeepSpeed + gloo destructors), which is not what this test is
    # about. In CI one rank once aborted with "terminate called without an active exception", place
    # unknown (faulthandler above names it if it comes back before this point). The entrypoint's own
    # teardown is exercised by tests/test_deepspeed_runs.py.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
