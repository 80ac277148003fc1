"""The whole path from OpenAI's file format to logits: a tiny checkpoint written by TensorFlow
with OpenAI's variable names, served by a loopback mirror, downloaded with
download_and_load_gpt2 and loaded with load_weights_into_gpt."""
from pathlib import Path

import numpy as np
import pytest
import torch

import gpt2
import gpt_download
from gpt2_fixtures import (nest_params, process_memory_mb, random_tf_variables, tiny_hparams,
                           write_tf_checkpoint)

MODELS_HOST_PATH = "openaipublic.blob.core.windows.net/gpt-2/models"


def reference_logits(variables: dict, hparams: dict, idx: np.ndarray) -> np.ndarray:
    """GPT-2's forward pass in plain numpy, straight from OpenAI's flat arrays."""
    def norm(x, prefix):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * variables[f"{prefix}/g"] + variables[f"{prefix}/b"]

    def dense(x, prefix):
        return x @ variables[f"{prefix}/w"][0] + variables[f"{prefix}/b"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    t, heads = idx.shape[0], hparams["n_head"]
    x = variables["model/wte"][idx] + variables["model/wpe"][:t]
    causal = np.triu(np.full((t, t), -np.inf), k=1)
    for i in range(hparams["n_layer"]):
        h = f"model/h{i}"
        q, k, v = np.split(dense(norm(x, f"{h}/ln_1"), f"{h}/attn/c_attn"), 3, axis=-1)
        q, k, v = (m.reshape(t, heads, -1).transpose(1, 0, 2) for m in (q, k, v))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1]) + causal
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        merged = (weights @ v).transpose(1, 0, 2).reshape(t, -1)
        x = x + dense(merged, f"{h}/attn/c_proj")
        x = x + dense(gelu(dense(norm(x, f"{h}/ln_2"), f"{h}/mlp/c_fc")), f"{h}/mlp/c_proj")
    return norm(x, "model/ln_f") @ variables["model/wte"].T


def test_checkpoint_from_mirror_gives_reference_logits(tmp_path, mirror_server, monkeypatch):
    hparams = tiny_hparams(n_vocab=50257, n_ctx=32, n_embd=48, n_head=6, n_layer=2)
    variables = random_tf_variables(hparams, seed=3)
    write_tf_checkpoint(mirror_server.root / MODELS_HOST_PATH / "124M", hparams, variables)
    monkeypatch.setenv("GPT2_MIRROR", mirror_server.url)

    settings, params = gpt_download.download_and_load_gpt2("124M", tmp_path / "models")
    assert settings == hparams
    assert len(mirror_server.requests) == len(gpt_download.CHECKPOINT_FILES)
    model = gpt2.GPTModel(gpt2.config_from_hparams(settings))
    gpt2.load_weights_into_gpt(model, params)
    model.eval()

    idx = np.random.default_rng(0).integers(0, hparams["n_vocab"], size=20)
    with torch.no_grad():
        ours = model(torch.tensor(idx)[None])[0].numpy()
    expected = reference_logits({k: v.astype(np.float64) for k, v in variables.items()}, hparams, idx)
    assert np.abs(ours - expected).max() < 1e-4
    assert model.out_head.weight is model.tok_emb.weight  # tied, not a copy

    gpt_download.download_and_load_gpt2("124M", tmp_path / "models")
    assert len(mirror_server.requests) == len(gpt_download.CHECKPOINT_FILES)  # nothing refetched

    pretrained = gpt2.load_pretrained_gpt2("124M", tmp_path / "models")
    with torch.no_grad():
        assert torch.equal(pretrained(torch.tensor(idx)[None])[0], torch.tensor(ours))


def test_cache_holds_exactly_what_tensorflow_reads(tmp_path):
    """The converted cache and TensorFlow's own reader give the same arrays, bit for bit."""
    hparams = tiny_hparams(n_vocab=50257, n_ctx=16, n_embd=32, n_head=4, n_layer=3)
    model_dir = write_tf_checkpoint(tmp_path / "124M", hparams, random_tf_variables(hparams, seed=4))
    cached = gpt_download.read_params_cache(gpt_download.convert_checkpoint(model_dir))
    by_tf = gpt_download.load_gpt2_params_from_tf_ckpt(str(model_dir / "model.ckpt"), hparams)
    assert len(cached) == 4 + 12 * hparams["n_layer"]
    assert_same_arrays(nest_params(cached, hparams["n_layer"]), by_tf)


def assert_same_arrays(actual, expected, path: str = "params") -> None:
    """Two nested params structures hold the same keys and bit-identical arrays."""
    if isinstance(expected, np.ndarray):
        assert np.array_equal(actual, expected), path
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_arrays(a, e, f"{path}[{i}]")
    else:
        assert actual.keys() == expected.keys(), path
        for key in expected:
            assert_same_arrays(actual[key], expected[key], f"{path}[{key!r}]")


def test_shell_download_command(tmp_path, mirror_server):
    """`python gpt_download.py 124M` fetches the seven files, or explains why it cannot."""
    import os
    import subprocess
    import sys
    hparams = tiny_hparams()
    write_tf_checkpoint(mirror_server.root / MODELS_HOST_PATH / "124M", hparams,
                        random_tf_variables(hparams))
    script = [sys.executable, str(Path(gpt_download.__file__)), "124M", "--models-dir", str(tmp_path)]

    done = subprocess.run(script, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GPT2_MIRROR": mirror_server.url})
    assert done.returncode == 0, done.stderr
    records = [name + ".sha256" for name in gpt_download.CHECKPOINT_FILES
               if name not in gpt_download.BPE_SHA256]  # hashes recorded on first download
    assert sorted(p.name for p in (tmp_path / "124M").iterdir()) == sorted(
        [*gpt_download.CHECKPOINT_FILES, *records])
    weights = tmp_path / "124M" / "model.ckpt.data-00000-of-00001"
    good = weights.read_bytes()
    weights.write_bytes(bytes(len(good)))  # damaged on disk, same size: the record catches it
    again = subprocess.run(script, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "GPT2_MIRROR": mirror_server.url})
    assert again.returncode == 0, again.stderr
    assert weights.read_bytes() == good
    assert [path for path, _ in mirror_server.requests].count(
        f"{MODELS_HOST_PATH}/124M/model.ckpt.data-00000-of-00001") == 2

    failed = subprocess.run(script[:2] + ["355M", "--models-dir", str(tmp_path)], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "GPT2_MIRROR": mirror_server.url})
    assert failed.returncode == 2 and "models/355M/checkpoint" in failed.stderr
    assert "Traceback" not in failed.stderr


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_release_pages_gives_back_what_copying_from_the_cache_read(tmp_path):
    """Reading a mapped array costs resident memory until release_pages; the values survive,
    and so do changes to the other arrays mapped from the same file."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    arrays = {"model/wte": rng.standard_normal((4096, 1024), dtype=np.float32),  # 16 MiB
              "model/wpe": rng.standard_normal((64, 32), dtype=np.float32)}
    save_file(arrays, tmp_path / gpt_download.PARAMS_CACHE)
    cached = gpt_download.read_params_cache(tmp_path / gpt_download.PARAMS_CACHE)
    wte, wpe = cached["model/wte"], cached["model/wpe"]
    wpe[0, 0] = 42.0  # a change to another array of the cache (copy-on-write) must survive

    before = process_memory_mb("RssFile")
    copied = torch.as_tensor(wte.T).clone()  # read every page, as load_weights_into_gpt does
    after_copy = process_memory_mb("RssFile")
    gpt_download.release_pages(wte.T)
    released = process_memory_mb("RssFile")

    assert after_copy - before > 12
    assert after_copy - released > 12
    assert np.array_equal(wte, arrays["model/wte"]) and torch.equal(copied, torch.as_tensor(wte.T))
    assert wpe[0, 0] == 42.0 and np.array_equal(wpe.ravel()[1:], arrays["model/wpe"].ravel()[1:])
    plain = arrays["model/wpe"].copy()
    gpt_download.release_pages(plain)  # not mapped: left alone
    assert np.array_equal(plain, arrays["model/wpe"])
