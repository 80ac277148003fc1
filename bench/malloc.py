"""What glibc's malloc thresholds cost a training step: gpt2_fast.tune_malloc on and off.

The step of bench/train.py (GPT-2 124M, batch 4 x 256, dropout 0.1, fused AdamW, our model with
gpt2_fast.accelerate), timed in turns with the allocator tuned (large blocks kept for reuse) and
at glibc's steady-state defaults (blocks over 32 MB mapped fresh and handed back each time),
set in the same process between steps with mallopt. Minor page faults per step come from
getrusage.

    python bench/malloc.py            # full run, ~4 min on 2 cores
    python bench/malloc.py --quick    # seconds, tiny model
"""
from __future__ import annotations

import resource
import statistics

import torch

from _common import (base_parser, bench_config, emit, emit_ratios, interleaved_times,
                     paired_speedup, random_gpt, setup)
from train import BATCH, SEQ_LEN, make_optimizer, ours_logits, train_step

import gpt2_fast


def with_thresholds(step, **thresholds):
    """`step` run after setting malloc's thresholds; records its minor page faults."""
    faults: list[int] = []

    def run():
        gpt2_fast.tune_malloc(**thresholds)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return run, faults


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(repeats=7)
    args = parser.parse_args()
    setup(args)
    if not gpt2_fast.tune_malloc(**gpt2_fast.GLIBC_STEADY_THRESHOLDS):
        parser.error("this C library has no glibc mallopt: nothing to compare")
    config = {**bench_config(args.quick), "drop_rate": 0.1}
    seq_len = 64 if args.quick else SEQ_LEN
    model = gpt2_fast.accelerate(random_gpt(config)).train()
    optimizer = make_optimizer(model)
    batch = (torch.randint(0, config["vocab_size"], (BATCH, seq_len)),
             torch.randint(0, config["vocab_size"], (BATCH, seq_len)))
    step = lambda: train_step(model, optimizer, ours_logits, batch)  # noqa: E731
    tuned, tuned_faults = with_thresholds(step)
    default, default_faults = with_thresholds(step, **gpt2_fast.GLIBC_STEADY_THRESHOLDS)
    times = interleaved_times({"tuned": tuned, "glibc_default": default}, args.repeats)
    for name, faults in (("tuned", tuned_faults), ("glibc_default", default_faults)):
        emit(f"train_step_fp32_malloc_{name}", seconds=statistics.median(times[name]),
             minor_page_faults=statistics.median(faults[1:] or faults))
    emit_ratios({"tuned_vs_glibc_default": paired_speedup(times["tuned"], times["glibc_default"])},
                {})


if __name__ == "__main__":
    main()
