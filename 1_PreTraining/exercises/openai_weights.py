"""Checks for the exercises of chapter 5b, OpenAI's GPT-2 weights.

The expected answers are computed here from the arrays, the model and `gpt2.py`; nothing is
hard-coded, so the checks work for the real 124M checkpoint and for the small one the tests use.
"""
from __future__ import annotations

import math

import numpy as np
import torch

import gpt2
import gpt_download

from . import verdict

TRAIN_RATIO = 0.9  # chapter 5's split of The Verdict
SHORT_CONTEXT = 32


def check_qkv_split(params: dict, answer) -> bool:
    """Exercise 1: block 0's W_query, W_key, W_value weights, in nn.Linear's [out, in] layout,
    cut out of OpenAI's fused c_attn array by hand."""
    if not isinstance(answer, (tuple, list)) or len(answer) != 3 or any(a is None for a in answer):
        return verdict(False, "fill in a tuple of three matrices: (query, key, value)")
    c_attn = np.asarray(params["blocks"][0]["attn"]["c_attn"]["w"])  # [in, 3 * out]
    expected = [w.T for w in np.split(c_attn, 3, axis=-1)]
    answer = [np.asarray(torch.as_tensor(a).detach().cpu()) for a in answer]
    if all(np.array_equal(a, e) for a, e in zip(answer, expected)):
        return verdict(True, "split c_attn's last axis into three, then transpose each from "
                             "OpenAI's [in, out] to nn.Linear's [out, in]")
    if all(np.array_equal(a, e.T) for a, e in zip(answer, expected)):
        return verdict(False, "right pieces, but in OpenAI's [in, out] layout: transpose each")
    if any(a.shape != e.shape for a, e in zip(answer, expected)):
        return verdict(False, f"each matrix should be {expected[0].shape}; split c_attn along "
                              "its last axis (the 3 * emb_dim outputs), not its first")
    if all(any(np.array_equal(a, e) for e in expected) for a in answer):
        return verdict(False, "the right matrices in the wrong order: c_attn holds query, key, "
                              "value, in that order")
    return verdict(False, "not the values of block 0's c_attn: take params['blocks'][0]"
                          "['attn']['c_attn']['w']")


def _verdict_texts() -> tuple[str, str]:
    """The Verdict split 90/10 into training and validation text, as in chapter 5."""
    text = gpt_download.fetch_data("the-verdict.txt").read_text(encoding="utf-8")
    split = int(TRAIN_RATIO * len(text))
    return text[:split], text[split:]


def _val_loss(model: gpt2.GPTModel, text: str, context: int) -> float:
    loader = gpt2.create_dataloader_v1(text, batch_size=2, max_length=context, stride=context,
                                       shuffle=False, drop_last=False)
    with torch.no_grad():
        return gpt2.calc_loss_loader(loader, model, next(model.parameters()).device)


def check_short_context_loss(model: gpt2.GPTModel, answer: float | None) -> bool:
    """Exercise 2: the pretrained model's validation loss on The Verdict with 32-token windows."""
    if not isinstance(answer, (int, float)):
        return verdict(False, "fill in the validation loss, a number")
    model.eval()
    train_text, val_text = _verdict_texts()
    short, long = _val_loss(model, val_text, SHORT_CONTEXT), _val_loss(model, val_text, 256)
    if math.isclose(answer, short, rel_tol=1e-5):
        lesson = (": the more of the text before a token the model sees, the better it "
                  "predicts it") if short > long else ""
        return verdict(True, f"{short:.3f} with {SHORT_CONTEXT} tokens of context against "
                             f"{long:.3f} with 256{lesson}")
    if math.isclose(answer, long, rel_tol=1e-5):
        return verdict(False, f"that is the loss with 256 tokens; make the loader with "
                              f"max_length={SHORT_CONTEXT} and stride={SHORT_CONTEXT}")
    if math.isclose(answer, _val_loss(model, train_text, SHORT_CONTEXT), rel_tol=1e-5):
        return verdict(False, "that is the training text's loss; use the last 10% of The Verdict")
    return verdict(False, f"use create_dataloader_v1 on the validation text with batch_size=2, "
                          f"max_length={SHORT_CONTEXT}, stride={SHORT_CONTEXT}, shuffle=False, "
                          "drop_last=False, then calc_loss_loader")


def _param_counts(model_size: str) -> tuple[int, int]:
    """(parameters with the head tied, of them in the token embedding) for one GPT-2 size."""
    with torch.device("meta"):  # shapes only, no memory
        model = gpt2.GPTModel(gpt2.gpt2_config(model_size))
    embedding = model.tok_emb.weight.numel()
    return gpt2.count_parameters(model) - embedding, embedding  # the head is the embedding


def check_embedding_share(answer: dict | None) -> bool:
    """Exercise 3: the token embedding's share of each GPT-2 size's (tied) parameters."""
    sizes = list(gpt2.MODEL_CONFIGS)
    if not isinstance(answer, dict) or any(not isinstance(answer.get(s), float) for s in sizes):
        return verdict(False, "give a dict {size: fraction} for " + ", ".join(sizes))
    counts = {size: _param_counts(size) for size in sizes}
    expected = {size: emb / total for size, (total, emb) in counts.items()}
    if all(math.isclose(answer[s], expected[s], rel_tol=1e-3) for s in sizes):
        return verdict(True, f"the embedding is {expected[sizes[0]]:.0%} of GPT-2 small but "
                             f"{expected[sizes[-1]]:.0%} of XL: the vocabulary stays the same "
                             "while the blocks grow with width squared and with depth")
    untied = {size: emb / (total + emb) for size, (total, emb) in counts.items()}
    if all(math.isclose(answer[s], untied[s], rel_tol=1e-3) for s in sizes):
        return verdict(False, "you counted the output head as well; GPT-2 ties it to the token "
                              "embedding, so count that matrix once")
    if all(math.isclose(answer[s], expected[s] * 100, rel_tol=1e-3) for s in sizes):
        return verdict(False, "give fractions between 0 and 1, not percentages")
    return verdict(False, "divide tok_emb's parameters by the model's tied parameter count "
                          "(count_parameters on a model whose out_head is tok_emb)")
