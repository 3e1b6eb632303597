"""Data: load (Hub or local files) -> tokenize once -> dataloaders with dynamic or fixed-length padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from launcher import faults
from launcher.recipe.rules import file_format
from launcher.recipe.schema import Recipe


@dataclass
class Loaders:
    train: DataLoader
    eval: DataLoader | None
    train_rows: int
    eval_rows: int


def load_raw(recipe: Recipe):
    """The raw DatasetDict, from the Hub (name + config) or from local files."""
    from datasets import load_dataset

    data = recipe.data
    if data.files:
        fmt = file_format(next(iter(data.files.values())), data.format)
        if fmt == "tsv":  # MSR-style TSV: tab separated, quotes are text
            return load_dataset("csv", data_files=data.files, sep="\t", quoting=3, cache_dir=data.cache_dir)
        return load_dataset(fmt, data_files=data.files, cache_dir=data.cache_dir)
    return load_dataset(data.dataset, data.config, cache_dir=data.cache_dir)


def tokenize(recipe: Recipe, raw, tokenizer, split: str, limit: int | None):
    data = recipe.data
    faults.reach("tokenize")
    dataset = raw[split]
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    missing = [f for f in [*data.text_fields, data.label_field] if f not in dataset.column_names]
    if missing:
        raise ValueError(
            f"data split {split!r} has no field(s) {missing}; it has {dataset.column_names} "
            "(fix data.text_fields / data.label_field)"
        )

    def encode(batch):
        texts = [batch[field] for field in data.text_fields]
        return tokenizer(*texts, truncation=True, max_length=data.max_length)

    keep = data.label_field
    dataset = dataset.map(
        encode,
        batched=True,
        remove_columns=[c for c in dataset.column_names if c != keep],
        desc=f"tokenizing {split}",
    )
    dataset = dataset.rename_column(keep, "labels")
    if recipe.model.num_labels == 1:  # regression targets are floats
        dataset = dataset.map(lambda b: {"labels": [float(v) for v in b["labels"]]}, batched=True)
    return dataset


def collator(recipe: Recipe, tokenizer):
    from transformers import DataCollatorWithPadding

    data = recipe.data
    if data.padding == "max_length":
        # Every batch exactly max_length wide: the static shapes TPUs (and some compilers) need.
        return DataCollatorWithPadding(tokenizer, padding="max_length", max_length=data.max_length)
    return DataCollatorWithPadding(tokenizer, padding="longest", pad_to_multiple_of=data.pad_to_multiple_of)


def windowed_length_order(lengths: list[int], batch: int, window: int, generator: torch.Generator) -> list[int]:
    """One epoch's row order: shuffled, then inside each window of `window` batches the rows are sorted
    by length and cut into batches, whose order within the window is shuffled again. A batch holds
    rows of similar length (little padding), while which rows can meet is as random as the shuffle
    within one window (transformers' grouping sorts ~50 batches at once, which makes batches far less
    random). A short last batch stays last, so every batch boundary before it is a full batch."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    grouped: list[int] = []
    span = batch * window
    for start in range(0, len(order), span):
        rows = sorted(order[start : start + span], key=lambda i: -lengths[i])
        chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]
        tail = chunks.pop() if len(chunks[-1]) < batch else []
        for k in torch.randperm(len(chunks), generator=generator).tolist():
            grouped.extend(chunks[k])
        grouped.extend(tail)
    return grouped


class EpochLengthGroupedSampler(torch.utils.data.Sampler):
    """Rows of similar length in the same optimizer step (windowed_length_order), reseeded per epoch so
    every rank draws the same order and an epoch can be replayed exactly on resume. `batch` is the
    rows of one optimizer step over all ranks: accelerate deals its consecutive micro-batches to the
    ranks (and to accumulation), so the rows of a step are the same on any layout of that global batch."""

    def __init__(self, lengths: list[int], batch: int, window: int, seed: int):
        self.lengths = lengths
        self.batch = batch
        self.window = window
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(windowed_length_order(self.lengths, self.batch, self.window, generator))


def build_loaders(recipe: Recipe, tokenizer, accelerator, global_batch: int, eval_batch_size: int) -> Loaders:
    """`global_batch`: training rows per optimizer step over all ranks (the unit of length grouping)."""
    data, train = recipe.data, recipe.train
    # Tokenize once: the global main process fills the datasets cache first, then each node's local main
    # (a node-local cache is filled once per node), then everyone else reads the cache. No rank races.
    with accelerator.main_process_first(), accelerator.local_main_process_first():
        raw = load_raw(recipe)
        train_set = tokenize(recipe, raw, tokenizer, data.train_split, data.max_train_samples)
        eval_set = None
        if data.eval_split and train.eval_strategy != "no":
            eval_set = tokenize(recipe, raw, tokenizer, data.eval_split, data.max_eval_samples)

    collate = collator(recipe, tokenizer)
    # XLA (TPU): every batch one shape, or each new shape compiles a new graph: training drops the
    # ragged last batch, evaluation fills its last batch up with rows it leaves out of the metrics.
    static = recipe.cluster.accelerator == "tpu"
    # Loaders get their own generators: creating an iterator then never draws from the global RNG, so a
    # run resumed mid-epoch sees the same dropout masks as one that was never interrupted.
    generator = torch.Generator().manual_seed(train.seed)
    if data.group_by_length and data.padding == "dynamic":
        lengths = [len(ids) for ids in train_set["input_ids"]]
        sampler = EpochLengthGroupedSampler(lengths, global_batch, data.length_window, train.seed)
        train_loader = DataLoader(
            train_set, batch_size=train.per_device_batch_size, sampler=sampler, generator=generator, collate_fn=collate
        )
    else:
        train_loader = DataLoader(
            train_set, batch_size=train.per_device_batch_size, shuffle=True, generator=generator, collate_fn=collate,
            drop_last=static,
        )  # fmt: skip
    eval_loader = None
    if eval_set is not None:
        if data.padding == "dynamic":
            # Longest first: less padding per batch and an out-of-memory shows up at once; metrics ignore order.
            lengths = [len(ids) for ids in eval_set["input_ids"]]
            eval_set = eval_set.select(sorted(range(len(lengths)), key=lambda i: -lengths[i]))
        eval_collate = collate
        if static:
            from launcher.train.xla import FillToBatch

            eval_collate = FillToBatch(collate, eval_batch_size)
        eval_loader = DataLoader(
            eval_set, batch_size=eval_batch_size, shuffle=False, collate_fn=eval_collate,
            generator=torch.Generator().manual_seed(train.seed),
        )  # fmt: skip
    return Loaders(train_loader, eval_loader, len(train_set), len(eval_set) if eval_set is not None else 0)
