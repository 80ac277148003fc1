"""Checks for the exercises of chapter 7, fine-tuning to follow instructions.

The expected answers are worked out here, from the data and from `gpt2.py`, when a check runs.
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn as nn

import gpt2
import instruct

from . import verdict

SAMPLE_ENTRIES = [
    {"instruction": "Identify the correct spelling of the following word.", "input": "Ocassion",
     "output": "The correct spelling is 'Occasion'."},
    {"instruction": "Name a primary colour.", "input": "", "output": "Blue."},
]
ROUGE_CANDIDATE = "Paris is the capital."
ROUGE_REFERENCE = "The capital of France is Paris."


def phi3_prompt(entry: dict) -> str:
    """Phi-3's layout: a user turn holding the instruction (and the input on its own line)."""
    request = entry["instruction"] + (f"\n{entry['input']}" if entry["input"] else "")
    return f"<|user|>\n{request}\n<|assistant|>\n"


def check_phi3_format(format_input_phi3) -> bool:
    """Exercise 1: a function that writes an entry's prompt in Phi-3's style."""
    if not callable(format_input_phi3):
        return verdict(False, "define format_input_phi3(entry) and pass the function itself")
    for entry in SAMPLE_ENTRIES:
        try:
            got = format_input_phi3(entry)
        except Exception as err:  # a learner's function may fail in any way
            return verdict(False, f"format_input_phi3 failed on {entry}: {err!r}")
        if got != phi3_prompt(entry):
            empty = "with an empty input" if not entry["input"] else "with an input"
            return verdict(False, f"for the entry {empty} it gave {got!r}, expected "
                                  f"{phi3_prompt(entry)!r}")
    return verdict(True, "the Phi-3 prompt is much shorter than Alpaca's: fewer tokens to read "
                         "per entry, so training and answering are a little faster")


def _random_batch(rng: random.Random) -> list[tuple[int, list[int]]]:
    batch = []
    for _ in range(rng.randint(2, 5)):
        ids = [rng.randrange(50000) for _ in range(rng.randint(2, 12))]
        batch.append((rng.randint(1, len(ids)), ids))
    return batch


def check_masked_collate(collate) -> bool:
    """Exercise 2: a collate function for (prompt length, token ids) pairs that also masks the
    prompt's targets, as instruct.custom_collate_fn_masked does (written by you)."""
    if not callable(collate):
        return verdict(False, "define collate(batch) and pass the function itself")
    rng = random.Random(0)
    for _ in range(20):
        batch = _random_batch(rng)
        expected = instruct.custom_collate_fn_masked(batch)
        try:
            got = collate(batch)
        except Exception as err:
            return verdict(False, f"your function failed on {batch}: {err!r}")
        if not (isinstance(got, tuple) and len(got) == 2 and all(map(torch.is_tensor, got))):
            return verdict(False, "return a pair of tensors: (inputs, targets)")
        if not torch.equal(got[0], expected[0]):
            return verdict(False, f"the inputs differ for {batch}: pad every row with 50256 to the "
                                  "longest row's length")
        if not torch.equal(got[1], expected[1]):
            unmasked = instruct.custom_collate_fn([ids for _, ids in batch])[1]
            hint = ("these are the targets without masking the prompt" if
                    torch.equal(got[1], unmasked) else
                    "target j is token j + 1: mask the first prompt_length - 1 targets")
            return verdict(False, f"the targets differ for {batch}: {hint}")
    return verdict(True, "only the response (and the end-of-text token after it) counts in the "
                         "loss now")


def check_lora(linear_with_lora_cls) -> bool:
    """Exercise 3: LinearWithLoRA(linear, rank, alpha): linear(x) + alpha * x A B, with A random,
    B zero, and only A and B trainable."""
    if not isinstance(linear_with_lora_cls, type):
        return verdict(False, "define the class LinearWithLoRA and pass the class itself")
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    linear.requires_grad_(False)
    try:
        layer = linear_with_lora_cls(linear, 4, 2.0)
    except Exception as err:
        return verdict(False, f"LinearWithLoRA(linear, rank=4, alpha=2.0) failed: {err!r}")
    x = torch.randn(3, 16)
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    if trainable != 4 * (16 + 8):
        return verdict(False, f"{trainable} trainable parameters; a rank-4 adapter of a 16 -> 8 "
                              "layer has A (16 x 4) and B (4 x 8), and the base layer is frozen")
    with torch.no_grad():
        if not torch.allclose(layer(x), linear(x), atol=1e-6):
            return verdict(False, "before training the layer should compute exactly linear(x): "
                                  "start B at zero")
        lora_params = [p for p in layer.parameters() if p.requires_grad]
        for p in lora_params:
            p.copy_(torch.randn_like(p))
        a, b = sorted(lora_params, key=lambda p: p.shape[0], reverse=True)  # A (16, 4), B (4, 8)
        if not torch.allclose(layer(x), linear(x) + 2.0 * (x @ a @ b), atol=1e-4):
            return verdict(False, "the output should be linear(x) + alpha * (x @ A @ B)")
    return verdict(True, "wrap every nn.Linear of a frozen GPTModel this way and only ~1% of "
                         "the parameters are trained")


def check_rouge_l(answer: float | None) -> bool:
    """Exercise 4: ROUGE-L F1 of ROUGE_CANDIDATE against ROUGE_REFERENCE, worked out by hand."""
    if not isinstance(answer, (int, float)):
        return verdict(False, "give a number between 0 and 1")
    words_c, words_r = len(instruct._words(ROUGE_CANDIDATE)), len(instruct._words(ROUGE_REFERENCE))
    expected = instruct.rouge_l(ROUGE_CANDIDATE, ROUGE_REFERENCE)
    lcs = expected * (words_c + words_r) / 2  # F1 = 2 lcs / (|c| + |r|)
    if math.isclose(answer, expected, abs_tol=1e-3):
        return verdict(True, f"the longest common subsequence has {round(lcs)} words; word order "
                             "matters, which is why 'Paris' and 'is' don't both count")
    if math.isclose(answer, lcs / words_c, abs_tol=1e-3) or \
            math.isclose(answer, lcs / words_r, abs_tol=1e-3):
        return verdict(False, "that is the precision or the recall; F1 is 2PR / (P + R)")
    return verdict(False, "lower-case both texts, drop the punctuation, find the longest run of "
                          "words (not necessarily adjacent) found in the same order in both")


def check_adamw_memory_gb(model_size: str, answer: float | None) -> bool:
    """Exercise 5: GB (1024**3 bytes) that AdamW fine-tuning of one GPT-2 size needs for
    weights, gradients and the optimizer's two running averages, all fp32, weights tied."""
    if model_size not in gpt2.MODEL_CONFIGS:
        return verdict(False, f"model_size should be one of {', '.join(gpt2.MODEL_CONFIGS)}")
    if not isinstance(answer, (int, float)):
        return verdict(False, "give a number of GB")
    with torch.device("meta"):
        model = gpt2.GPTModel(gpt2.gpt2_config(model_size))
    model.out_head.weight = model.tok_emb.weight
    weights_gb = gpt2.count_parameters(model) * 4 / 1024**3
    if math.isclose(answer, 4 * weights_gb, rel_tol=0.01):
        return verdict(True, f"{4 * weights_gb:.1f} GB before a single activation is stored: "
                             "memory, more than speed, is what limits the model size")
    if math.isclose(answer, weights_gb, rel_tol=0.01):
        return verdict(False, "that is the weights alone; add the gradients and AdamW's two "
                              "averages (each the size of the weights)")
    return verdict(False, "count the parameters (tied: the head shares tok_emb), 4 bytes each, "
                          "four copies in all")
