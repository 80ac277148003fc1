"""Loading speed and memory: a GPT-2 124M checkpoint in OpenAI's TensorFlow format into GPTModel.

The checkpoint has GPT-2 124M's exact variable names and shapes with random values (OpenAI's
real files cannot be fetched here), written once by TensorFlow and cached. Every load runs in
a fresh Python process, as a learner's would, through `gpt2.load_pretrained_gpt2`. The very
first load converts the TF files into the cache gpt_download keeps beside them (TensorFlow
runs in a child process for that); the figures give that conversion, then loads from the
cache: the first in a process, a second in the same process, and the process's peak resident
memory against the size of the fp32 model.

    python bench/load.py            # full run (~1 min to write the checkpoint the first time)
    python bench/load.py --quick    # seconds, tiny model
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import base_parser, emit, emit_ratios, setup
from gpt2_fixtures import process_memory_mb, random_tf_variables, write_tf_checkpoint

import gpt_download

TARGETS = {"peak_rss_over_model_size": -2.5, "second_load_seconds": -2.0}
GPT2_124M = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}
TINY = {"n_vocab": 50257, "n_ctx": 64, "n_embd": 32, "n_head": 4, "n_layer": 2}


def checkpoint_dir(quick: bool) -> Path:
    """The parent of a "124M" folder holding OpenAI's seven files, written if missing."""
    models_dir = (Path(tempfile.mkdtemp()) if quick
                  else gpt_download.DATA_DIR / "bench" / "tf-checkpoint")
    model_dir = models_dir / "124M"
    if not (model_dir / "model.ckpt.index").exists():
        hparams = TINY if quick else GPT2_124M
        write_tf_checkpoint(model_dir, hparams, random_tf_variables(hparams, scale=0.02))
    return models_dir


def child(models_dir: str, threads: int) -> None:
    """Runs in the fresh process: load twice, then read alone once; one JSON line out."""
    import torch

    import gpt2

    torch.set_num_threads(threads)
    before = process_memory_mb("VmRSS")
    start = time.perf_counter()
    model = gpt2.load_pretrained_gpt2("124M", models_dir)
    first = time.perf_counter() - start
    peak = process_memory_mb("VmHWM")
    model_mb = gpt2.count_parameters(model) * 4 / 2**20
    del model
    start = time.perf_counter()
    gpt2.load_pretrained_gpt2("124M", models_dir)
    second = time.perf_counter() - start
    start = time.perf_counter()
    gpt_download.download_and_load_gpt2("124M", models_dir)
    read = time.perf_counter() - start
    helpers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB
    print(json.dumps({"first": first, "second": second, "read": read, "peak_mb": peak,
                      "before_mb": before, "model_mb": model_mb, "helpers_peak_mb": helpers_peak}))


def run_child(models_dir: Path, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(models_dir),
                          "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the fresh process's side
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads)
        return
    setup(args)
    models_dir = checkpoint_dir(args.quick)
    (models_dir / "124M" / gpt_download.PARAMS_CACHE).unlink(missing_ok=True)
    converting = run_child(models_dir, args.threads)  # the first load ever builds the cache
    emit("load_converting_tf_checkpoint", seconds=converting["first"],
         peak_mb=converting["peak_mb"], converter_process_peak_mb=converting["helpers_peak_mb"])
    runs = [run_child(models_dir, args.threads) for _ in range(args.repeats)]
    median = {key: sorted(run[key] for run in runs)[len(runs) // 2] for key in runs[0]}
    emit("load_first_in_process", seconds=median["first"])
    emit("load_second_in_process", seconds=median["second"])
    emit("load_read_params_only", seconds=median["read"])
    emit("load_peak_rss", peak_mb=median["peak_mb"], rss_before_load_mb=median["before_mb"],
         fp32_model_mb=median["model_mb"],
         peak_over_model_size=median["peak_mb"] / median["model_mb"],
         load_increase_over_model_size=(median["peak_mb"] - median["before_mb"])
         / median["model_mb"])
    emit_ratios({"peak_rss_over_model_size": median["peak_mb"] / median["model_mb"],
                 "second_load_seconds": median["second"]}, TARGETS)


if __name__ == "__main__":
    main()
