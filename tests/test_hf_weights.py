"""gpt2.load_weights_from_hf: Hugging Face's GPT2LMHeadModel weights in our GPTModel.

The HF models are random (no download): transformers' own initialisation, shaken up so the
biases are not zero and the logits not flat, which would hide a misplaced weight.
"""
from pathlib import Path

import pytest
import torch
import transformers

import gpt2
from gpt2_fixtures import hf_gpt2_config, run_gpt2_cli, tiny_hparams

CONFIGS = {
    "4-heads": tiny_hparams(n_vocab=1000, n_ctx=64, n_embd=64, n_head=4, n_layer=2),
    "12-heads": tiny_hparams(n_vocab=3000, n_ctx=128, n_embd=96, n_head=12, n_layer=3),
}


def random_hf_model(hparams: dict, seed: int = 0) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = hf_gpt2_config(hparams)
    config._attn_implementation = "eager"  # plain matmul-softmax attention, not SDPA
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for param in model.parameters():  # the tied wte/lm_head is one parameter
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def our_model(hparams: dict) -> gpt2.GPTModel:
    return gpt2.GPTModel(gpt2.config_from_hparams(hparams)).eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_and_greedy_tokens_match(name: str) -> None:
    hparams = CONFIGS[name]
    theirs, ours = random_hf_model(hparams), our_model(hparams)
    gpt2.load_weights_from_hf(ours, theirs.state_dict())
    assert ours.out_head.weight is ours.tok_emb.weight, "the head should be tied, as GPT-2's is"
    idx = torch.randint(0, hparams["n_vocab"], (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = theirs(idx).logits, ours(idx)
    assert expected.std() > 0.5, "logits this flat would make the comparison meaningless"
    assert (actual - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()

    prompt = idx[:1, :8]
    with torch.no_grad():
        their_tokens = theirs.generate(prompt, max_new_tokens=20, do_sample=False,
                                       min_new_tokens=20, pad_token_id=0)
    our_tokens = gpt2.generate(ours, prompt, max_new_tokens=20,
                               context_size=hparams["n_ctx"])
    assert torch.equal(our_tokens, their_tokens)


def test_keys_without_prefix_and_mask_buffers_load() -> None:
    """A GPT2Model's state dict (no "transformer.", no lm_head) with the causal-mask buffers
    older transformers versions saved gives the same model."""
    hparams = CONFIGS["4-heads"]
    theirs = random_hf_model(hparams, seed=2)
    state = dict(theirs.transformer.state_dict())
    n = hparams["n_ctx"]
    for i in range(hparams["n_layer"]):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    from_full, from_bare = our_model(hparams), our_model(hparams)
    gpt2.load_weights_from_hf(from_full, theirs.state_dict())
    gpt2.load_weights_from_hf(from_bare, state)
    for (key, a), b in zip(from_full.state_dict().items(), from_bare.state_dict().values()):
        assert torch.equal(a, b), key


def test_shape_mismatch_names_the_parameter() -> None:
    theirs = random_hf_model(CONFIGS["4-heads"])
    narrower = our_model({**CONFIGS["4-heads"], "n_embd": 32})
    with pytest.raises(ValueError, match=r"wpe: the model has \(64, 32\), the checkpoint \(64, 64\)"):
        gpt2.load_weights_from_hf(narrower, theirs.state_dict())
    state = theirs.state_dict()
    state["transformer.h.1.mlp.c_fc.weight"] = state["transformer.h.1.mlp.c_fc.weight"][:, :200]
    with pytest.raises(ValueError, match=r"blocks\[1\]\.mlp\.c_fc\.w"):
        gpt2.load_weights_from_hf(our_model(CONFIGS["4-heads"]), state)


def test_untied_head_and_foreign_keys_are_refused() -> None:
    theirs = random_hf_model(CONFIGS["4-heads"])
    state = dict(theirs.state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        gpt2.load_weights_from_hf(our_model(CONFIGS["4-heads"]), state)
    state = {**theirs.state_dict(), "score.weight": torch.zeros(2, 64)}
    with pytest.raises(ValueError, match="score.weight is not a GPT-2 weight"):
        gpt2.load_weights_from_hf(our_model(CONFIGS["4-heads"]), state)


def test_cli_generates_from_a_save_pretrained_folder(tmp_path: Path, capsys) -> None:
    hparams = CONFIGS["4-heads"]
    hparams = {**hparams, "n_vocab": 50257}  # the CLI encodes with GPT-2's tokenizer
    theirs = random_hf_model(hparams)
    theirs.save_pretrained(tmp_path / "hf")
    code, out, err = run_gpt2_cli(capsys, "--hf-model", str(tmp_path / "hf"),
                                  "--max-new-tokens", "10", "--temperature", "0", "--verbose")
    assert code == 0, err
    prompt = gpt2.text_to_token_ids("Every effort moves you", gpt2.get_tokenizer())
    with torch.no_grad():
        expected = theirs.generate(prompt, max_new_tokens=10, min_new_tokens=10,
                                   do_sample=False, pad_token_id=0)
    assert out.rstrip("\n") == gpt2.token_ids_to_text(expected, gpt2.get_tokenizer())
    n_parameters = sum(p.numel() for p in theirs.parameters())  # the tied head counted once
    assert f"{n_parameters:,} parameters" in err


def test_cli_missing_model_fails_cleanly(tmp_path: Path, capsys) -> None:
    code, _, err = run_gpt2_cli(capsys, "--hf-model", str(tmp_path / "missing"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "transformers could not load" in err and "missing" in err
