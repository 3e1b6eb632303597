"""Evaluation over the whole eval split, exactly once per row at any world size (gather_for_metrics)."""

from __future__ import annotations

import time

import torch

from launcher import faults
from launcher.recipe.schema import Recipe
from launcher.train.metrics import compute_metrics
from launcher.train.xla import FILLER_KEY, drop_filler


@torch.no_grad()
def evaluate(model, loader, accelerator, recipe: Recipe) -> dict:
    """Metrics named `<split>_<metric>` plus `<split>_loss`, and the number of rows scored."""
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    logits_parts, label_parts, filler_parts = [], [], []
    for batch in loader:
        filler = batch.pop(FILLER_KEY, None)  # XLA: rows that fill the last batch up to the fixed shape
        logits = model(**batch).logits
        # gather_for_metrics drops the rows accelerate duplicated to even out the last batch
        parts = (logits.float(), batch["labels"]) + (() if filler is None else (filler,))
        gathered = accelerator.gather_for_metrics(parts)
        logits_parts.append(gathered[0].cpu())
        label_parts.append(gathered[1].cpu())
        if filler is not None:
            filler_parts.append(gathered[2].cpu())
        faults.reach("eval.batch")
    if was_training:
        model.train()
    filler = torch.cat(filler_parts) if filler_parts else None
    logits, labels = drop_filler(torch.cat(logits_parts), torch.cat(label_parts), filler)
    regression = recipe.model.num_labels == 1
    if regression:
        predictions = logits.squeeze(-1)
        loss = torch.nn.functional.mse_loss(predictions, labels.float())
    else:
        predictions = logits.argmax(-1)
        loss = torch.nn.functional.cross_entropy(logits, labels)
    split = recipe.data.eval_split
    scores = compute_metrics(recipe.metrics, predictions.numpy(), labels.numpy(), recipe.model.num_labels)
    metrics = {f"{split}_{name}": value for name, value in scores.items()}
    metrics[f"{split}_loss"] = float(loss)
    result = {"metrics": metrics, "rows": int(labels.shape[0]), "seconds": round(time.perf_counter() - started, 3)}
    if not regression:
        result.update(class_baseline(recipe, predictions, labels))
    return result


def class_baseline(recipe: Recipe, predictions: torch.Tensor, labels: torch.Tensor) -> dict:
    """What always answering the most frequent class scores on these rows (the number a metric must
    beat to mean anything: on MRPC 279 of 408 validation pairs are paraphrases), and how many rows
    the model gave each class (one class only: it has not learned to tell them apart)."""
    counts = torch.bincount(labels.long(), minlength=recipe.model.num_labels)
    majority = int(counts.argmax())
    constant = torch.full_like(labels, majority)
    scores = compute_metrics(recipe.metrics, constant.numpy(), labels.numpy(), recipe.model.num_labels)
    predicted = torch.bincount(predictions.long(), minlength=recipe.model.num_labels)
    return {
        "baseline": {"majority_class": majority, "majority_rows": int(counts[majority]),
                     "metrics": {f"{recipe.data.eval_split}_{name}": value for name, value in scores.items()}},
        "predicted_per_class": [int(n) for n in predicted],
    }  # fmt: skip
