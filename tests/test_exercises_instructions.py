"""The checks of chapter 7's exercises: wrong answers are rejected, right ones accepted.

The right answers are written here independently of the checks.
"""
import torch
import torch.nn as nn

import gpt2
import instruct
from exercises.instructions import (check_adamw_memory_gb, check_lora, check_masked_collate,
                                    check_phi3_format, check_rouge_l)


def test_phi3_format() -> None:
    def right(entry):
        text = f"<|user|>\n{entry['instruction']}"
        if entry["input"]:
            text += f"\n{entry['input']}"
        return text + "\n<|assistant|>\n"

    assert check_phi3_format(right)
    assert not check_phi3_format(None)
    assert not check_phi3_format(gpt2.format_input)
    assert not check_phi3_format(lambda e: f"<|user|>\n{e['instruction']}\n{e['input']}\n"
                                           "<|assistant|>\n")  # a stray line when input is empty


def test_masked_collate() -> None:
    def right(batch):
        width = max(len(ids) for _, ids in batch) + 1
        inputs, targets = [], []
        for prompt_length, ids in batch:
            padded = ids + [50256] * (width - len(ids))
            target = padded[1:]
            target[len(ids):] = [-100] * (width - 1 - len(ids))
            target[:prompt_length - 1] = [-100] * (prompt_length - 1)
            inputs.append(padded[:-1])
            targets.append(target)
        return torch.tensor(inputs), torch.tensor(targets)

    assert check_masked_collate(right)
    assert not check_masked_collate(None)
    assert not check_masked_collate(lambda batch: instruct.custom_collate_fn([i for _, i in batch]))


class RightLoRA(nn.Module):
    def __init__(self, linear, rank, alpha):
        super().__init__()
        self.linear, self.alpha = linear, alpha
        self.A = nn.Parameter(torch.randn(linear.in_features, rank) / rank ** 0.5)
        self.B = nn.Parameter(torch.zeros(rank, linear.out_features))

    def forward(self, x):
        return self.linear(x) + self.alpha * (x @ self.A @ self.B)


class LoRAWithoutAlpha(RightLoRA):
    def forward(self, x):
        return self.linear(x) + x @ self.A @ self.B


class LoRARandomB(RightLoRA):
    def __init__(self, linear, rank, alpha):
        super().__init__(linear, rank, alpha)
        self.B = nn.Parameter(torch.randn(rank, linear.out_features))


def test_lora() -> None:
    assert check_lora(RightLoRA)
    assert not check_lora(None)
    assert not check_lora(LoRAWithoutAlpha)
    assert not check_lora(LoRARandomB)


def test_rouge_l() -> None:
    # "paris is the capital" / "the capital of france is paris": LCS "the capital", 2 words
    assert check_rouge_l(2 * 2 / (4 + 6))
    assert not check_rouge_l(None)
    assert not check_rouge_l(2 / 4)  # precision
    assert not check_rouge_l(3 * 2 / (4 + 6))  # "paris", "is" and "the capital" out of order


def test_adamw_memory_gb() -> None:
    d, layers, vocab, ctx = 1024, 24, 50257, 1024
    block = 4 * d * d + 4 * d + 8 * d * d + 5 * d + 4 * d  # attention, feed-forward, 2 norms
    params = vocab * d + ctx * d + layers * block + 2 * d  # tied head
    assert check_adamw_memory_gb("355M", 4 * params * 4 / 1024**3)
    assert not check_adamw_memory_gb("355M", None)
    assert not check_adamw_memory_gb("355M", params * 4 / 1024**3)
    assert not check_adamw_memory_gb("2B", 1.0)
