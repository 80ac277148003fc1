"""What oneDNN's matmuls buy on the CPU: gpt2_fast.linear on oneDNN against PyTorch's default (MKL).

Two measurements, both libraries in the same process, taking turns:
1. GFLOP/s of every fp32 matmul of a GPT-2 124M training step (batch 4 x 256 = 1024 rows):
   each Linear layer's forward (x W^T), and its backward (dx = dy W, dW = dy^T x);
2. the whole step of bench/train.py (forward, backward, fused AdamW, dropout 0.1) with
   gpt2_fast.accelerate(model, onednn=True) and onednn=False.

    python bench/matmul.py            # full run, ~3 min on 2 cores
    python bench/matmul.py --quick    # seconds, tiny model
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from _common import (accelerated_step, base_parser, bench_config, emit, emit_ratios, interleaved,
                     interleaved_times, paired_speedup, random_gpt, setup)
from train import BATCH, SEQ_LEN, make_optimizer, ours_logits, train_step

import gpt2_fast


def layer_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of each kind of Linear layer in GPT-2."""
    d = config["emb_dim"]
    return {"qkv": (d, 3 * d), "out_proj": (d, d), "ff_up": (d, 4 * d), "ff_down": (4 * d, d),
            "head": (d, config["vocab_size"])}


def matmuls(rows: int, d_in: int, d_out: int) -> dict[str, tuple]:
    """A layer's three matmuls as (A, B) pairs computing A @ B^T, as linear layers do."""
    x, weight, dy = torch.randn(rows, d_in), torch.randn(d_out, d_in), torch.randn(rows, d_out)
    return {"forward": (x, weight), "grad_input": (dy, weight.t()), "grad_weight": (dy.t(), x.t())}


def compare_matmuls(config: dict, rows: int, repeats: int) -> None:
    for layer, (d_in, d_out) in layer_shapes(config).items():
        for step, (a, b) in matmuls(rows, d_in, d_out).items():
            seconds = interleaved({"pytorch": lambda: F.linear(a, b),
                                   "onednn": lambda: gpt2_fast._onednn_mm(a, b)}, repeats)
            flops = 2 * rows * d_in * d_out
            emit(f"matmul_{layer}_{step}", rows=a.shape[0], inner=a.shape[1], cols=b.shape[0],
                 gflops_pytorch=flops / seconds["pytorch"] / 1e9,
                 gflops_onednn=flops / seconds["onednn"] / 1e9,
                 speedup=seconds["pytorch"] / seconds["onednn"])


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(repeats=7)
    args = parser.parse_args()
    if not gpt2_fast.onednn_linear_available():
        parser.error("this PyTorch build has no oneDNN linear kernel: nothing to compare")
    setup(args)
    emit("onednn_matmul_default", enabled=gpt2_fast.mkl_is_slow_here())
    config = {**bench_config(args.quick), "drop_rate": 0.1}
    seq_len = 64 if args.quick else SEQ_LEN
    compare_matmuls(config, BATCH * seq_len, args.repeats)

    model = random_gpt(config).train()
    optimizer = make_optimizer(model)
    batch = (torch.randint(0, config["vocab_size"], (BATCH, seq_len)),
             torch.randint(0, config["vocab_size"], (BATCH, seq_len)))
    step = lambda: train_step(model, optimizer, ours_logits, batch)  # noqa: E731
    times = interleaved_times({"onednn": accelerated_step(model, step, onednn=True),
                               "pytorch": accelerated_step(model, step, onednn=False)},
                              args.repeats)
    for name, values in times.items():
        emit(f"train_step_fp32_matmul_{name}", seconds=statistics.median(values))
    emit_ratios({"train_step_onednn_vs_pytorch_matmul": paired_speedup(times["onednn"],
                                                                       times["pytorch"])}, {})


if __name__ == "__main__":
    main()
