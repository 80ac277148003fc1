"""Training speed: one step (forward, backward, AdamW) of our GPTModel against Hugging Face's.

Batch 4 x 256 tokens of GPT-2 124M with the course's training settings (dropout 0.1), the
same random weights on both sides and the same optimizer (AdamW, lr 4e-4, weight decay 0.1,
fused where PyTorch supports it, otherwise its default). Figures: tokens/s of each side in
fp32, ours with bf16 autocast, the achieved GFLOP/s (6 x matmul weights x tokens, plus
attention) against a large fp32 matmul timed in the same run (on PyTorch's default library and
on oneDNN, the faster counting as 100%), and the optimizer step alone, fused against PyTorch's
default. Ours is `gpt2_fast.accelerate(GPTModel)`: where MKL is slow
(gpt2_fast.mkl_is_slow_here()), our fp32 matmuls run on oneDNN and HF's on PyTorch's default;
bench/matmul.py shows what that choice is worth.

    python bench/train.py            # full run, ~4 min on 2 cores
    python bench/train.py --quick    # seconds, tiny model
"""
from __future__ import annotations

import contextlib
import statistics

import torch
import torch.nn.functional as F

from _common import (base_parser, bench_config, emit, emit_ratios, hf_twin, interleaved,
                     interleaved_times, paired_speedup, random_gpt, setup)

import gpt2
import gpt2_fast

TARGETS = {"fp32_vs_hf_fp32": 1.15, "bf16_autocast_vs_hf_fp32": 1.8}
BATCH, SEQ_LEN = 4, 256


def make_optimizer(model: torch.nn.Module, fused: bool | None = True) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1, fused=fused)


def train_step(model, optimizer, logits_of, batch, bf16: bool = False):
    """One optimisation step; `logits_of(model, inputs)` hides how each side returns logits."""
    inputs, targets = batch
    optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        logits = logits_of(model, inputs)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    loss.backward()
    optimizer.step()
    return loss


def ours_logits(model, inputs):
    return model(inputs)


def hf_logits(model, inputs):
    return model(inputs).logits


def matmul_gflops(quick: bool) -> dict[str, float]:
    """GFLOP/s of a large fp32 matmul shaped like the feed-forward layer's, on PyTorch's default
    library and on oneDNN where this PyTorch has it: the faster of the two is what 100% means."""
    tokens, d = (256, 256) if quick else (BATCH * SEQ_LEN, 768)
    a, b = torch.randn(tokens, d), torch.randn(4 * d, d)
    runs = {"pytorch": lambda: [F.linear(a, b) for _ in range(10)]}
    if gpt2_fast.onednn_linear_available():
        runs["onednn"] = lambda: [gpt2_fast._onednn_mm(a, b) for _ in range(10)]
    seconds = interleaved(runs, repeats=3)
    return {name: 10 * 2 * tokens * d * 4 * d / value / 1e9 for name, value in seconds.items()}


def step_flops(model: gpt2.GPTModel, seq_len: int) -> float:
    """6 flops per matmul weight per token (forward 2, backward 4), plus causal attention:
    QK^T and attention x V, 2 x seq_len x d each per token and layer forward, 3x with backward,
    halved by the causal mask."""
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.cfg
    attention = 3 * 2 * 2 * seq_len * cfg["emb_dim"] * cfg["n_layers"] / 2
    return (6 * matmul_weights + attention) * BATCH * seq_len


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(repeats=7)  # a step takes seconds and the machine drifts: more rounds
    args = parser.parse_args()
    setup(args)
    config = {**bench_config(args.quick), "drop_rate": 0.1}
    seq_len = 64 if args.quick else SEQ_LEN
    ours = gpt2_fast.accelerate(random_gpt(config)).train()
    theirs = hf_twin(ours).train()
    batch = (torch.randint(0, config["vocab_size"], (BATCH, seq_len)),
             torch.randint(0, config["vocab_size"], (BATCH, seq_len)))
    opt_ours, opt_theirs = make_optimizer(ours), make_optimizer(theirs)
    steps = {
        "ours_fp32": lambda: train_step(ours, opt_ours, ours_logits, batch),
        "hf_fp32": lambda: train_step(theirs, opt_theirs, hf_logits, batch),
        "ours_bf16_autocast": lambda: train_step(ours, opt_ours, ours_logits, batch, bf16=True),
    }
    # Each comparison takes turns with transformers on its own: a step leaves the memory
    # allocator in a state the next step inherits, so a third contender in the rotation
    # would always run after the same neighbour.
    fp32 = interleaved_times({k: steps[k] for k in ("ours_fp32", "hf_fp32")}, args.repeats)
    bf16 = interleaved_times({k: steps[k] for k in ("ours_bf16_autocast", "hf_fp32")},
                             args.repeats)
    rates = matmul_gflops(args.quick)
    peak = max(rates.values())
    emit("matmul_fp32", **{f"gflops_{name}": value for name, value in rates.items()},
         ours_on_onednn=gpt2_fast.mkl_is_slow_here())
    flops = step_flops(ours, seq_len)
    for name, times in (*fp32.items(), ("ours_bf16_autocast", bf16["ours_bf16_autocast"]),
                        ("hf_fp32_beside_bf16", bf16["hf_fp32"])):
        value = statistics.median(times)
        emit(f"train_step_{name}", tokens_per_s=BATCH * seq_len / value, seconds=value,
             gflops=flops / value / 1e9, fraction_of_matmul_rate=flops / value / 1e9 / peak)
    optimizer_step(ours, args.repeats)
    emit_ratios({"fp32_vs_hf_fp32": paired_speedup(fp32["ours_fp32"], fp32["hf_fp32"]),
                 "bf16_autocast_vs_hf_fp32": paired_speedup(bf16["ours_bf16_autocast"],
                                                            bf16["hf_fp32"])},
                TARGETS)


def optimizer_step(model: gpt2.GPTModel, repeats: int) -> None:
    """AdamW's step alone, fused into one kernel against PyTorch's default (foreach)."""
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    steps = {name: make_optimizer(model, fused) for name, fused in (("fused", True), ("default", None))}
    seconds = interleaved({name: opt.step for name, opt in steps.items()}, repeats)
    for name, value in seconds.items():
        emit(f"adamw_step_{name}", ms=1e3 * value)


if __name__ == "__main__":
    main()
