"""The benchmarks in bench/ run end to end in their short setting (--quick), so they cannot rot.

Each must exit 0 and print only JSON lines on stdout: figures, then one closing line of ratios.
The figures themselves are not checked here: a tiny model on a shared CI machine says nothing
about speed. The full runs and their results are in README.md, "Performance".
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

# script -> figures its --quick run must print (besides "machine")
EXPECTED = {
    "generate.py": {"generate_ours_fp32", "generate_hf_fp32", "generate_ours_int8",
                    "generate_ours_bf16", "generate_hf_bf16", "generate_ours_fp32_no_cache",
                    "bare_weight_loop_fp32", "quality_int8"},
    "train.py": {"matmul_fp32", "train_step_ours_fp32", "train_step_hf_fp32",
                 "train_step_ours_bf16_autocast", "adamw_step_fused"},
    "dropout.py": {"train_step_fp32_dropout_ours", "train_step_fp32_dropout_pytorch",
                   "train_step_fp32_dropout_none", "dropout_share_of_step"},
    "matmul.py": {"onednn_matmul_default", "matmul_ff_up_forward", "matmul_head_grad_weight",
                  "train_step_fp32_matmul_onednn", "train_step_fp32_matmul_pytorch"},
    "malloc.py": {"train_step_fp32_malloc_tuned", "train_step_fp32_malloc_glibc_default"},
    "pretrain.py": {"pretrain_run_seconds_per_step", "bench_train_step_seconds"},
    "load.py": {"load_converting_tf_checkpoint", "load_first_in_process",
                "load_second_in_process", "load_read_params_only", "load_peak_rss"},
}


@pytest.mark.parametrize("script", EXPECTED)
def test_bench_quick_run_prints_figures_and_ratios(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--repeats", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    figures = {line["figure"] for line in lines[:-1]}
    assert {"machine"} | EXPECTED[script] <= figures
    ratios = lines[-1]["ratios"]
    assert ratios and all({"ratio", "target", "met"} <= set(entry) for entry in ratios.values())
    assert all(isinstance(entry["ratio"], float) for entry in ratios.values())
