"""The fp32 CPU step's own costs: linear layers through oneDNN (MKL runs slow kernels on non-Intel
CPUs) and glibc keeping freed memory (no page faults for every step's large gradient buffers).
Real kernels, real glibc, a real (tiny, random) BERT; the CPU vendor is faked through FTL_CPUINFO."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from launcher.train.cpu_kernels import OneDNNLinear, choose_cpu_linear, onednn_linear_available, route_linears_to_onednn

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="this torch has no oneDNN linear kernel")
REPO = Path(__file__).resolve().parents[1]


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 5), (3, 11, 5)])
def test_onednn_linear_matches_torch_in_value_and_gradients(bias: bool, shape: tuple[int, ...]):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    weight = torch.randn(6, 5, generator=gen, requires_grad=True)
    b = torch.randn(6, generator=gen, requires_grad=True) if bias else None
    grad_out = torch.randn(*shape[:-1], 6, generator=gen)

    expected = torch.nn.functional.linear(x, weight, b)
    expected_grads = torch.autograd.grad(expected, [t for t in (x, weight, b) if t is not None], grad_out)
    got = OneDNNLinear.apply(x, weight, b)
    got_grads = torch.autograd.grad(got, [t for t in (x, weight, b) if t is not None], grad_out)

    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(got_grads, expected_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_onednn_linear_sees_weights_the_optimizer_changed_in_place():
    """oneDNN may cache packed weights: after an in-place update (what every optimizer step does) the
    layer must compute with the new values, not a stale copy."""
    gen = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(16, 32, generator=gen), torch.randn(48, 32, generator=gen), torch.randn(48, generator=gen)
    before = OneDNNLinear.apply(x, weight, bias)
    with torch.no_grad():
        weight.add_(0.5)
        bias.mul_(-1)
    after = OneDNNLinear.apply(x, weight, bias)
    torch.testing.assert_close(after, torch.nn.functional.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    return BertForSequenceClassification(config)


def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@needs_onednn
def test_a_routed_bert_trains_like_the_original_and_saves_the_same_weights():
    reference = tiny_bert()
    routed = copy.deepcopy(reference)
    linears = sum(type(m) is torch.nn.Linear for m in routed.modules())
    assert route_linears_to_onednn(routed) == linears > 0

    gen = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(0, 120, (4, 9), generator=gen),
             "attention_mask": torch.ones(4, 9, dtype=torch.long), "labels": torch.tensor([0, 1, 1, 0])}  # fmt: skip
    batch["attention_mask"][:2, 6:] = 0
    loss, grads = loss_and_grads(routed, batch)
    expected_loss, expected_grads = loss_and_grads(reference, batch)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # only the instances' forward changed: the state dict (what checkpoints and model/ hold) is the original's
    assert routed.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(routed.state_dict().values(), reference.state_dict().values()))


@needs_onednn
def test_routed_layers_leave_autocast_and_subclasses_alone():
    class Adapter(torch.nn.Linear):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Adapter(4, 4))
    assert route_linears_to_onednn(model) == 1
    assert "forward" in vars(model[0]) and "forward" not in vars(model[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model[0](torch.randn(2, 4)).dtype == torch.bfloat16  # autocast still decides under bf16


INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon (fake)\nflags\t\t: avx512f amx_bf16\n"
AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: EPYC (fake)\nflags\t\t: avx512f avx512_bf16\n"
AMD_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: EPYC (fake Zen 3)\nflags\t\t: avx2 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd sve\n"


@needs_onednn
@pytest.mark.parametrize(
    ("cpu", "setting", "device", "precision", "backend", "expected"),
    [
        (AMD, "auto", "cpu", "no", "ddp", "onednn"),  # MKL leaves AVX-512 idle: oneDNN
        (AMD_AVX2, "auto", "cpu", "no", "ddp", "aten"),  # MKL's AVX2 kernels beat oneDNN's there
        (AMD_AVX2, "onednn", "cpu", "no", "ddp", "onednn"),  # asked for
        (ARM, "auto", "cpu", "no", "ddp", "aten"),
        (INTEL, "auto", "cpu", "no", "ddp", "aten"),  # MKL's own fast kernels
        (INTEL, "onednn", "cpu", "no", "ddp", "onednn"),  # asked for
        (AMD, "aten", "cpu", "no", "ddp", "aten"),
        (AMD, "auto", "cpu", "bf16", "ddp", "aten"),  # autocast already runs oneDNN's bf16 kernels
        (AMD, "auto", "cuda", "no", "ddp", "aten"),
        (AMD, "auto", "xla", "no", "ddp", "aten"),
        (AMD, "auto", "cpu", "no", "deepspeed", "aten"),  # ZeRO-3 replaces linear layers itself
    ],
)
def test_which_kernels_run_the_linear_layers(tmp_path, monkeypatch, cpu, setting, device, precision, backend, expected):
    (tmp_path / "cpuinfo").write_text(cpu)
    monkeypatch.setenv("FTL_CPUINFO", str(tmp_path / "cpuinfo"))
    assert choose_cpu_linear(setting, device, precision, backend) == expected


@pytest.mark.parametrize(
    ("sets", "says"),
    [
        (["train.precision=bf16"], "onednn applies to fp32"),
        (["train.precision=no", "distributed.backend=deepspeed"], "onednn applies under distributed.backend: ddp"),
    ],
)
def test_onednn_where_it_cannot_apply_is_refused_in_one_line(sets, says, capsys):
    from launcher.cli.main import main

    args = ["validate", str(REPO / "recipes" / "mrpc.yaml"), "--set", "train.cpu_linear=onednn"]
    code = main([*args, *(arg for item in sets for arg in ("--set", item))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "train.cpu_linear" in err[0] and says in err[0]


FAULTS = textwrap.dedent(
    """
    import resource, sys
    from launcher.train.memory import keep_freed_memory
    applied = keep_freed_memory()  # before torch, as the training entrypoint does
    import torch

    if sys.argv[1] == "buffers":  # a step's large buffers (word-embedding gradients: 45-90 MiB), then freed
        def step():
            buffers = [torch.zeros(48 << 18) for _ in range(2)]
            del buffers
    else:  # real training steps of a one-layer BERT with bert-base's vocabulary
        from transformers import BertConfig, BertForSequenceClassification
        model = BertForSequenceClassification(BertConfig(num_hidden_layers=1, hidden_size=384, num_attention_heads=6,
                                                         intermediate_size=1536))
        optimizer = torch.optim.AdamW(model.parameters(), fused=True)
        ids = torch.randint(0, 30000, (8, 64))
        def step():
            model(input_ids=ids, labels=torch.zeros(8, dtype=torch.long)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    for _ in range(3):
        step()  # warm-up: first touch, glibc's dynamic thresholds settle
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
    """
)


def faults_per_step(kind: str, env: dict[str, str]) -> tuple[bool, int]:
    env = {**{k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}, **env}
    out = subprocess.run([sys.executable, "-c", FAULTS, kind], capture_output=True, text=True, check=True, cwd=REPO,
                         env=env).stdout.split()  # fmt: skip
    return out[0] == "True", int(out[1])


def transparent_huge_pages() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.parametrize("kind", ["buffers", "training steps"])
def test_a_steps_freed_memory_is_reused_without_page_faults(kind: str):
    if not transparent_huge_pages():
        pytest.skip("buffers over glibc's 32 MiB mmap ceiling need transparent huge pages (off on this kernel)")
    applied, tuned = faults_per_step(kind, {})
    not_applied, default = faults_per_step(kind, {"FTL_KEEP_FREED_MEMORY": "0"})
    assert applied and not not_applied
    # glibc's defaults unmap the large buffers when freed: every step faults their 4 KiB pages in again
    # (2 x 48 MiB = 24576 pages; the 30522 x 384 word-embedding gradient alone 11445)
    assert default > 10000, (tuned, default)
    assert tuned < default / 8, (tuned, default)
