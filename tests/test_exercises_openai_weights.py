"""The checks of chapter 5b's exercises: wrong answers are rejected, right ones accepted.

The right answers are worked out here by other means than the checks use: slicing the fused
array by offsets, windows cut by hand, parameter counts from the shapes of the weights.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpt2
import gpt_download
from exercises.openai_weights import (check_embedding_share, check_qkv_split,
                                      check_short_context_loss)
from gpt2_fixtures import nest_params, random_tf_variables, tiny_hparams

HPARAMS = tiny_hparams(n_vocab=50257, n_ctx=256, n_embd=48, n_head=4, n_layer=2)


def test_qkv_split() -> None:
    variables = random_tf_variables(HPARAMS, seed=4)
    params = nest_params(variables, HPARAMS["n_layer"])
    w, d = variables["model/h0/attn/c_attn/w"][0], HPARAMS["n_embd"]
    query, key, value = (torch.tensor(w[:, i * d:(i + 1) * d].T) for i in range(3))
    assert check_qkv_split(params, (query, key, value))
    assert not check_qkv_split(params, None)
    assert not check_qkv_split(params, (query, key, None))
    assert not check_qkv_split(params, (query.T, key.T, value.T))  # OpenAI's layout
    assert not check_qkv_split(params, np.split(w, 3, axis=0))     # the wrong axis
    assert not check_qkv_split(params, (key, query, value))
    assert not check_qkv_split(params, (query, key, value + 1))


def loss_by_hand(model: gpt2.GPTModel, text: str, context: int) -> float:
    """Mean over batches of 2 windows of each batch's mean cross-entropy, as calc_loss_loader."""
    ids = torch.tensor(gpt2.get_tokenizer().encode(text, allowed_special={gpt2.ENDOFTEXT}))
    starts = range(0, len(ids) - context, context)
    inputs = torch.stack([ids[s:s + context] for s in starts])
    targets = torch.stack([ids[s + 1:s + context + 1] for s in starts])
    with torch.no_grad():
        losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
                  for x, y in zip(inputs.split(2), targets.split(2))]
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def tiny_model_and_texts():
    model = gpt2.GPTModel(gpt2.config_from_hparams(HPARAMS)).eval()
    variables = random_tf_variables(HPARAMS, seed=5, scale=0.3)  # peaked enough to tell apart
    gpt2.load_weights_into_gpt(model, nest_params(variables, HPARAMS["n_layer"]))
    text = gpt_download.fetch_data("the-verdict.txt").read_text(encoding="utf-8")
    split = int(0.9 * len(text))
    return model, text[:split], text[split:]


def test_short_context_loss(tiny_model_and_texts) -> None:
    model, train_text, val_text = tiny_model_and_texts
    assert check_short_context_loss(model, loss_by_hand(model, val_text, 32))
    assert not check_short_context_loss(model, None)
    assert not check_short_context_loss(model, loss_by_hand(model, val_text, 256))
    assert not check_short_context_loss(model, loss_by_hand(model, train_text, 32))
    assert not check_short_context_loss(model, 3.3)


def tied_count(model_size: str) -> tuple[int, int]:
    """(all parameters with the head tied, those of the token embedding), from the shapes."""
    d, layers = gpt2.MODEL_CONFIGS[model_size]["emb_dim"], gpt2.MODEL_CONFIGS[model_size]["n_layers"]
    vocab, context = 50257, 1024
    block = 4 * d * d + 4 * d + 8 * d * d + 5 * d + 4 * d  # attention with q/k/v biases, MLP, norms
    return vocab * d + context * d + layers * block + 2 * d, vocab * d


def test_embedding_share() -> None:
    counts = {size: tied_count(size) for size in gpt2.MODEL_CONFIGS}
    assert check_embedding_share({s: emb / total for s, (total, emb) in counts.items()})
    assert not check_embedding_share(None)
    assert not check_embedding_share({"124M": 0.31})
    assert not check_embedding_share({s: emb / (total + emb) for s, (total, emb) in counts.items()})
    assert not check_embedding_share({s: 100 * emb / total for s, (total, emb) in counts.items()})
