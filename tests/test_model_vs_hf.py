"""Our GPTModel against an independent GPT-2: Hugging Face transformers' GPT2LMHeadModel.

Both models get the same random weights in OpenAI's layout; ours through load_weights_into_gpt,
theirs by the names HF uses for OpenAI's arrays (its Conv1D keeps OpenAI's [in, out] layout).
"""
import numpy as np
import pytest
import torch
import transformers

import gpt2
from conftest import with_backend
from gpt2_fixtures import hf_gpt2_config, nest_params, random_tf_variables, tiny_hparams

CONFIGS = {
    "4-heads": tiny_hparams(n_vocab=1000, n_ctx=64, n_embd=64, n_head=4, n_layer=2),
    "12-heads": tiny_hparams(n_vocab=3000, n_ctx=128, n_embd=96, n_head=12, n_layer=3),
    "124M-shape": tiny_hparams(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12),
}


def hf_key(tf_name: str) -> str:
    """model/h0/attn/c_attn/w -> transformer.h.0.attn.c_attn.weight, model/wte -> ...wte.weight"""
    parts = tf_name.split("/")[1:]
    if parts in (["wte"], ["wpe"]):
        return f"transformer.{parts[0]}.weight"
    if parts[0][0] == "h":
        parts = ["h", parts[0][1:], *parts[1:]]
    leaf = {"w": "weight", "g": "weight", "b": "bias"}[parts[-1]]
    return "transformer." + ".".join([*parts[:-1], leaf])


def hf_model(hparams: dict, variables: dict) -> transformers.GPT2LMHeadModel:
    config = hf_gpt2_config(hparams)
    config._attn_implementation = "eager"  # plain matmul-softmax attention, not SDPA
    model = transformers.GPT2LMHeadModel(config)
    state = {hf_key(name): torch.tensor(np.squeeze(array, axis=0) if array.ndim == 3 else array)
             for name, array in variables.items()}
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert set(result.missing_keys) <= {"lm_head.weight"}, result.missing_keys
    model.tie_weights()
    return model.eval()


def our_model(hparams: dict, variables: dict) -> gpt2.GPTModel:
    model = gpt2.GPTModel(gpt2.config_from_hparams(hparams))
    gpt2.load_weights_into_gpt(model, nest_params(variables, hparams["n_layer"]))
    return model.eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_transformers(name: str, backend: str) -> None:
    hparams = CONFIGS[name]
    variables = random_tf_variables(hparams, seed=1)
    ours, theirs = with_backend(our_model(hparams, variables), backend), hf_model(hparams, variables)
    torch.manual_seed(0)
    idx = torch.randint(0, hparams["n_vocab"], (2, min(48, hparams["n_ctx"])))
    with torch.no_grad():
        expected = theirs(idx).logits
        actual = ours(idx)
    assert expected.std() > 0.5, "logits this flat would make the comparison meaningless"
    max_diff = (actual - expected).abs().max().item()
    print(f"{name}, {backend} model: max abs logit difference {max_diff:.2e}")
    # fp32 rounding, which depends on each matmul library's order of summation: at the 124M
    # shape (logits up to ~16) 3.6e-5 with PyTorch's default matmul and 1.1e-4 with oneDNN's,
    # each of them within 1.1e-4 of a float64 run. A wrong layer shows up at 1e-2 or more.
    assert max_diff <= 1e-5 * expected.abs().max().item()


def test_hf_mapping_is_complete() -> None:
    """Every HF parameter was set from our arrays (a forgotten one would keep HF's random init)."""
    hparams = CONFIGS["4-heads"]
    variables = random_tf_variables(hparams, seed=2)
    theirs = hf_model(hparams, variables)
    n_arrays = sum(a.size for a in variables.values())
    assert sum(p.numel() for p in theirs.parameters()) == n_arrays
    assert torch.equal(theirs.transformer.h[1].mlp.c_fc.weight,
                       torch.tensor(variables["model/h1/mlp/c_fc/w"][0]))
