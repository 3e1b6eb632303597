"""A large embedding's gradient kept in one buffer for the run (launcher.train.embedding_grad): the
same gradient as torch's own backward, bit for bit, in the same memory every step, and a fresh one
whenever that memory is still somebody's gradient."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from launcher.train import embedding_grad
from launcher.train.embedding_grad import keep_embedding_gradients

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def any_size(monkeypatch):
    """Small tables take the kept path too (the real threshold is 32 MiB)."""
    monkeypatch.setattr(embedding_grad, "MIN_BYTES", 0)
    monkeypatch.setattr(embedding_grad, "_rows_norm_exact", None)  # checked afresh by each test


def twin_embeddings(padding_idx, rows=1000, dim=16):
    torch.manual_seed(0)
    plain = torch.nn.Embedding(rows, dim, padding_idx=padding_idx)
    kept = torch.nn.Embedding(rows, dim, padding_idx=padding_idx)
    kept.load_state_dict(plain.state_dict())
    assert keep_embedding_gradients(torch.nn.ModuleDict({"words": kept})) == ["words"]
    return plain, kept


def backward(module, ids, upstream):
    (module(ids) * upstream).sum().backward()


@pytest.mark.parametrize("padding_idx", [0, None])
def test_the_kept_gradient_is_torchs_gradient_in_the_same_memory_every_step(any_size, padding_idx):
    plain, kept = twin_embeddings(padding_idx)
    addresses = set()
    for step in range(4):
        ids = torch.randint(0, 40, (8, 24), generator=torch.Generator().manual_seed(step))  # rows repeat
        ids[:, -6:] = 0  # padding
        upstream = torch.randn(8, 24, 16, generator=torch.Generator().manual_seed(100 + step))
        backward(plain, ids, upstream)
        backward(kept, ids, upstream)
        assert torch.equal(kept.weight.grad, plain.weight.grad), step
        if padding_idx is not None:
            assert not kept.weight.grad[padding_idx].any()
        addresses.add(kept.weight.grad.data_ptr())
        plain.weight.grad = kept.weight.grad = None  # optimizer.zero_grad(set_to_none=True)
    assert len(addresses) == 1


def test_accumulated_micro_batches_sum_as_torchs_do(any_size):
    """Between optimizer steps .grad holds the kept memory: the next backward must not zero it."""
    plain, kept = twin_embeddings(0)
    for micro_batch in range(3):
        ids = torch.randint(0, 40, (4, 10), generator=torch.Generator().manual_seed(micro_batch))
        upstream = torch.randn(4, 10, 16, generator=torch.Generator().manual_seed(10 + micro_batch))
        backward(plain, ids, upstream)
        backward(kept, ids, upstream)
    assert torch.equal(kept.weight.grad, plain.weight.grad)
    assert kept.weight.grad.abs().sum() > 0


def test_forward_and_eval_are_torchs_and_nothing_is_saved_differently(any_size):
    plain, kept = twin_embeddings(0)
    ids = torch.randint(0, 1000, (3, 7))
    assert torch.equal(kept(ids), plain(ids))
    with torch.no_grad():
        assert torch.equal(kept(ids), plain(ids))
    assert kept._ftl_kept_gradient.storage is None  # no backward yet: nothing held
    assert list(kept.state_dict()) == list(plain.state_dict()) == ["weight"]


def test_only_plain_dense_cpu_tables_over_the_mmap_threshold_are_kept():
    big = 32 << 20  # bytes: glibc's largest mmap threshold
    assert embedding_grad.eligible(torch.nn.Embedding(big // (4 * 256), 256))
    assert not embedding_grad.eligible(torch.nn.Embedding(big // (4 * 256) - 1, 256))  # the heap reuses it
    assert not embedding_grad.eligible(torch.nn.Embedding(big // (4 * 256), 256, sparse=True))
    assert not embedding_grad.eligible(torch.nn.Embedding(big // (4 * 256), 256, max_norm=1.0))
    assert not embedding_grad.eligible(torch.nn.Embedding(big // (4 * 256), 256, scale_grad_by_freq=True))

    class Custom(torch.nn.Embedding):
        pass

    assert not embedding_grad.eligible(Custom(big // (4 * 256), 256))  # a subclass keeps its own forward


def test_a_bert_classifier_trains_identically_with_the_kept_gradient(any_size):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    plain = BertForSequenceClassification(config)
    kept = BertForSequenceClassification(config)
    kept.load_state_dict(plain.state_dict())
    assert keep_embedding_gradients(kept) == ["bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings",
                                              "bert.embeddings.token_type_embeddings"]  # fmt: skip
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True) for m in (plain, kept)]
    for step in range(3):
        ids = torch.randint(1, 500, (4, 12), generator=torch.Generator().manual_seed(step))
        mask = torch.ones_like(ids)
        mask[:2, 8:] = 0
        labels = torch.tensor([0, 1, 1, 0])
        for model, optimizer in zip((plain, kept), optimizers):
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for (name, a), b in zip(plain.named_parameters(), kept.parameters()):
        assert torch.equal(a, b), name


class TiedHead(torch.nn.Module):
    """A table whose weight a second use reads too (as a tied LM head does)."""

    def __init__(self, rows=1000, dim=16):
        super().__init__()
        self.words = torch.nn.Embedding(rows, dim, padding_idx=0)

    def forward(self, ids):
        states = self.words(ids)
        return states.sum() + (states @ self.words.weight.T).pow(2).mean()


def clipped_steps(accelerator, plain, kept, loss, batches, accumulate=1, max_norm=1.0):
    """The loop's step on twin models: backward per micro-batch, clip, fused AdamW, zero_grad; torch's
    own clip on `plain`, ftlaunch's on `kept`. Returns the kept model's row record after each clip
    (backward passes on record, None: none)."""
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True) for m in (plain, kept)]
    records = []
    for step, micro_batches in enumerate(zip(*[iter(batches)] * accumulate)):
        for model, optimizer in zip((plain, kept), optimizers):
            for ids in micro_batches:
                loss(model, ids).backward()
            if model is plain:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            else:
                embedding_grad.clip_grad_norm_(accelerator, model.parameters(), max_norm)
                records.append(_record(kept))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for (name, a), b in zip(plain.named_parameters(), kept.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=f"step {step}: {name}")
    return records


def _record(model):
    (buffer,) = {id(m._ftl_kept_gradient): m._ftl_kept_gradient for m in model.modules() if hasattr(m, "_ftl_kept_gradient")}.values()
    return None if buffer.written is None else len(buffer.written)


def batches_of_ids(count, vocab=1000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 60, (4, 10), generator=generator) for _ in range(count)]  # 60 of 1000 rows


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


@pytest.mark.parametrize("max_norm", [1e-3, 1e3], ids=["clipping", "not-clipping"])
@pytest.mark.parametrize("accumulate", [1, 3])
@pytest.mark.parametrize("dim", [16, 384])  # 384 (MiniLM's): the norm too is read from the rows on record
def test_clipping_and_zeroing_the_written_rows_only_is_torchs_result_bit_for_bit(any_size, accelerator, max_norm,
                                                                                accumulate, dim):  # fmt: skip
    plain, kept = twin_embeddings(0, dim=dim)
    loss = lambda model, ids: (model(ids).pow(2) * torch.arange(float(dim))).sum()  # noqa: E731
    records = clipped_steps(accelerator, plain, kept, loss, batches_of_ids(4 * accumulate), accumulate, max_norm)
    assert records == [accumulate] * 4  # every step took the rows on record
    assert embedding_grad._rows_norm_exact is (True if dim == 384 else None)
    # what the next step zeroes: every non-zero row of the kept memory is on record
    gradient = kept._ftl_kept_gradient
    memory = torch.empty(0).set_(gradient.storage, 0, kept.weight.shape)
    assert set(memory.any(1).nonzero().flatten().tolist()) <= set(gradient.rows().tolist())


def test_a_second_use_of_the_weight_voids_the_record_and_the_result_stays_torchs(any_size, accelerator):
    torch.manual_seed(0)
    plain, kept = TiedHead(), TiedHead()
    kept.load_state_dict(plain.state_dict())
    assert keep_embedding_gradients(kept) == ["words"]
    records = clipped_steps(accelerator, plain, kept, lambda model, ids: model(ids), batches_of_ids(3), max_norm=1e-3)
    assert records == [None, None, None]


def test_a_non_finite_norm_spreads_as_in_torch_and_voids_the_record(any_size, accelerator):
    plain, kept = twin_embeddings(0)
    batches = batches_of_ids(3)
    def loss(model, ids):  # the second step's gradient holds a NaN
        out = model(ids)
        return out.sum() * (float("nan") if ids is batches[1] else 1.0)
    records = clipped_steps(accelerator, plain, kept, loss, batches)
    assert records == [1, None, 1]  # the NaN went to every row; the next step zeroed the whole table
    assert kept.weight.isnan().all()


def test_the_rows_norm_is_used_only_after_it_matched_the_whole_tables(any_size):
    """The once-per-process check: rows whose norm is not the table's (here a row left off the record,
    as a kernel that sums in another order would give) turn the shortcut off for good."""
    grad = torch.zeros(100, 128)
    grad[[3, 50, 70]] = torch.randn(3, 128)
    whole = torch.linalg.vector_norm(grad)
    assert torch.equal(embedding_grad._norm(grad, torch.tensor([3, 50])), whole)  # the check: the whole table's
    assert embedding_grad._rows_norm_exact is False
    assert torch.equal(embedding_grad._norm(grad, torch.tensor([3, 50])), whole)  # and from then on


def test_a_loop_that_never_frees_the_gradient_stops_recording(any_size):
    plain, kept = twin_embeddings(0)
    for ids in batches_of_ids(embedding_grad.MAX_RECORDED + 2):
        backward(plain, ids, torch.ones(4, 10, 16))
        backward(kept, ids, torch.ones(4, 10, 16))
    assert kept._ftl_kept_gradient.written is None
    assert torch.equal(kept.weight.grad, plain.weight.grad)


DDP = textwrap.dedent(
    """
    import os, sys
    import torch, torch.distributed as dist
    from launcher.train import embedding_grad
    from launcher.train.ending import end_process
    embedding_grad.MIN_BYTES = 0
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method="file://" + sys.argv[2])
    torch.manual_seed(0)
    plain = torch.nn.Embedding(300, 8, padding_idx=0)
    kept = torch.nn.Embedding(300, 8, padding_idx=0)
    kept.load_state_dict(plain.state_dict())
    embedding_grad.keep_embedding_gradients(torch.nn.Sequential(kept))
    models = [torch.nn.parallel.DistributedDataParallel(m) for m in (plain, kept)]
    addresses = set()
    for step in range(3):
        ids = torch.randint(0, 300, (4, 9), generator=torch.Generator().manual_seed(10 * step + rank))
        for model in models:
            (model(ids) ** 2).sum().backward()
        assert torch.equal(kept.weight.grad, plain.weight.grad), step  # both averaged over the two ranks
        assert kept._ftl_kept_gradient.written is None  # the average brought the other rank's rows
        addresses.add(kept.weight.grad.data_ptr())
        plain.weight.grad = kept.weight.grad = None
    assert len(addresses) == 1, addresses
    dist.destroy_process_group()
    print("ok")
    end_process(0)  # as a rank ends: gloo's workers may still be releasing the last allreduce
    """
)


def test_ddp_averages_into_the_kept_gradient_as_into_torchs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ranks = [subprocess.Popen([sys.executable, "-c", DDP, str(rank), str(tmp_path / "rendezvous")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for rank in (0, 1)]  # fmt: skip
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], [err[-2000:] for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == ["ok", "ok"]
