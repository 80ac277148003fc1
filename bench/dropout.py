"""What dropout costs a training step on the CPU: gpt2_fast.dropout against PyTorch's F.dropout.

The step of bench/train.py (GPT-2 124M, batch 4 x 256, dropout 0.1, fused AdamW), timed in
turns with three dropout functions given to `gpt2_fast.accelerate`, which every Dropout layer
and the training attention call: ours (`gpt2_fast.dropout_mask`), PyTorch's `F.dropout`, and none at all
(the input passed through, to show what dropout costs in the first place).

    python bench/dropout.py            # full run, ~4 min on 2 cores
    python bench/dropout.py --quick    # seconds, tiny model
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from _common import (accelerated_step, base_parser, bench_config, emit, emit_ratios,
                     interleaved_times, random_gpt, setup)
from train import BATCH, SEQ_LEN, make_optimizer, ours_logits, train_step

import gpt2_fast

DROPOUTS = {
    "ours": gpt2_fast.dropout,
    "pytorch": lambda x, p, training=True: F.dropout(x, p, training),
    "none": lambda x, p, training=True: x,
}


def share_of_step(times: dict[str, list[float]], name: str) -> float:
    """The part of a step with dropout `name` that dropout takes, median over the rounds."""
    return statistics.median((t - n) / t for t, n in zip(times[name], times["none"]))


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(repeats=7)
    args = parser.parse_args()
    setup(args)
    config = {**bench_config(args.quick), "drop_rate": 0.1}
    seq_len = 64 if args.quick else SEQ_LEN
    model = random_gpt(config).train()
    optimizer = make_optimizer(model)
    batch = (torch.randint(0, config["vocab_size"], (BATCH, seq_len)),
             torch.randint(0, config["vocab_size"], (BATCH, seq_len)))
    times = interleaved_times(
        {name: accelerated_step(model, lambda: train_step(model, optimizer, ours_logits, batch),
                                dropout_fn=dropout)
         for name, dropout in DROPOUTS.items()}, args.repeats)
    for name, values in times.items():
        emit(f"train_step_fp32_dropout_{name}", seconds=statistics.median(values))
    emit("dropout_share_of_step", ours=share_of_step(times, "ours"),
         pytorch=share_of_step(times, "pytorch"))
    emit_ratios({"ours_vs_pytorch_dropout": statistics.median(
        p / o for o, p in zip(times["ours"], times["pytorch"]))}, {})


if __name__ == "__main__":
    main()
