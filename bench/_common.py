"""What the benchmarks share: output lines, interleaved timing, and a Hugging Face twin.

Every figure is printed as one JSON line, and every comparison is a ratio of two things timed
in the same process, taking turns (A, B, A, B, ...) so that a neighbour that steals the CPU
for a while slows both sides alike. Run a script with --help for its settings.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))            # gpt2, gpt_download (also without the editable install)
sys.path.insert(0, str(ROOT / "tests"))  # gpt2_fixtures: OpenAI-format checkpoints for bench/load.py

import gpt2  # noqa: E402
import gpt2_fast  # noqa: E402


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds on a tiny model, to check the script runs (CI)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads for both sides (default: every core, %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of each side after a warm-up; the median is reported")
    return parser


def setup(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(123)
    emit("machine", **machine())


def machine() -> dict:
    """Where the figures come from: they only mean something next to this."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    import transformers
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "load_average_1min": os.getloadavg()[0]}


def emit(figure: str, **values) -> None:
    """Print one figure as a JSON line (rounded, so a line stays readable)."""
    rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}
    print(json.dumps({"figure": figure, **rounded}), flush=True)


def emit_ratios(ratios: dict[str, float], targets: dict[str, float]) -> None:
    """The closing line: each ratio, its target where the issue sets one, and whether it is met.

    A positive target is a floor (ratio >= target), a negative one a ceiling (ratio <= -target).
    """
    def met(name: str, value: float) -> bool | None:
        target = targets.get(name)
        if target is None:
            return None
        return value >= target if target > 0 else value <= -target

    summary = {name: {"ratio": round(value, 3),
                      "target": None if name not in targets else (
                          f">= {targets[name]}" if targets[name] > 0 else f"<= {-targets[name]}"),
                      "met": met(name, value)}
               for name, value in ratios.items()}
    print(json.dumps({"ratios": summary}), flush=True)


def interleaved_times(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
                      ) -> dict[str, list[float]]:
    """Seconds of each callable in each timed round, run in turns: warm-up rounds, then
    `repeats` rounds of A, B, A, B, ..."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(warmup + repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
                ) -> dict[str, float]:
    """Median seconds of each callable, timed in turns (see interleaved_times)."""
    return {name: statistics.median(values)
            for name, values in interleaved_times(runs, repeats, warmup).items()}


def accelerated_step(model: torch.nn.Module, step: Callable[[], object], **settings
                     ) -> Callable[[], object]:
    """`step`, run after gpt2_fast.accelerate(model, **settings): how a bench compares two
    settings of the speed module (its matmul library, its dropout) on one model, in turns."""
    def run():
        gpt2_fast.accelerate(model, **settings)
        return step()
    return run


def paired_speedup(ours: list[float], theirs: list[float]) -> float:
    """Median over rounds of theirs / ours, each pair timed back to back.

    This machine's speed drifts by 10-20% over minutes (other tenants of the host); two
    runs timed seconds apart see the same drift, so their ratio is steadier than the
    ratio of two medians."""
    return statistics.median(t / o for o, t in zip(ours, theirs))


def bench_config(quick: bool) -> dict:
    """GPT-2 124M as OpenAI trained it (q/k/v biases), or a tiny model of the same shape family."""
    config = gpt2.gpt2_config("124M")
    if quick:
        config.update(emb_dim=64, n_layers=2, n_heads=4, context_length=256)
    return config


def random_gpt(config: dict) -> gpt2.GPTModel:
    """Our model with GPT-2's random initialisation and tied head (`gpt2.init_weights`).

    PyTorch's default init (std 1 for embeddings) with a tied head makes logits in the
    hundreds, and the first optimizer steps then fill the gradients with subnormal floats,
    which this CPU multiplies ~5x slower: a benchmark of that would measure the init."""
    return gpt2.init_weights(gpt2.GPTModel(config))


def hf_twin(model: gpt2.GPTModel):
    """transformers' GPT2LMHeadModel holding exactly `model`'s weights, so both do the same work.

    HF keeps OpenAI's Conv1D layout, weight [in, out] with q, k, v side by side, hence the
    transposes and the concatenation.
    """
    import transformers
    from gpt2_fixtures import hf_gpt2_config

    cfg = model.cfg
    config = hf_gpt2_config({"n_vocab": cfg["vocab_size"], "n_ctx": cfg["context_length"],
                             "n_embd": cfg["emb_dim"], "n_layer": cfg["n_layers"],
                             "n_head": cfg["n_heads"]}, dropout=cfg["drop_rate"])
    twin = transformers.GPT2LMHeadModel(config)
    state = {"transformer.wte.weight": model.tok_emb.weight,
             "transformer.wpe.weight": model.pos_emb.weight,
             "transformer.ln_f.weight": model.final_norm.scale,
             "transformer.ln_f.bias": model.final_norm.shift}
    for i, block in enumerate(model.trf_blocks):
        att, prefix = block.att, f"transformer.h.{i}."
        qkv = (att.W_query, att.W_key, att.W_value)
        state[prefix + "attn.c_attn.weight"] = torch.cat([layer.weight for layer in qkv]).T
        state[prefix + "attn.c_attn.bias"] = (torch.cat([layer.bias for layer in qkv])
                                              if att.W_query.bias is not None
                                              else torch.zeros(3 * cfg["emb_dim"]))
        for ours, theirs in ((att.out_proj, "attn.c_proj"), (block.ff.layers[0], "mlp.c_fc"),
                             (block.ff.layers[2], "mlp.c_proj")):
            state[prefix + theirs + ".weight"] = ours.weight.T
            state[prefix + theirs + ".bias"] = ours.bias
        for norm, theirs in ((block.norm1, "ln_1"), (block.norm2, "ln_2")):
            state[prefix + theirs + ".weight"] = norm.scale
            state[prefix + theirs + ".bias"] = norm.shift
    result = twin.load_state_dict({k: v.detach().contiguous() for k, v in state.items()},
                                  strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
        raise RuntimeError(f"HF twin mapping is incomplete: {result}")
    twin.tie_weights()
    return twin.train(model.training)
