"""The checks of chapter 6's exercises: wrong answers are rejected, right ones accepted.

The right answers are written here independently of the checks.
"""
from pathlib import Path

import torch.nn.functional as F

import gpt2
import spam
from exercises import classification as ex


def test_full_context_dataset(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "train.csv"
    pd.DataFrame({"Text": ["Free prize! Call now", "see you at 5"], "Label": [1, 0]}).to_csv(path, index=False)
    tokenizer = gpt2.get_tokenizer()
    assert ex.check_full_context_dataset(spam.SpamDataset(path, tokenizer, max_length=40), 40)
    assert not ex.check_full_context_dataset(None, 40)
    assert not ex.check_full_context_dataset(spam.SpamDataset(path, tokenizer), 40)  # longest only
    assert not ex.check_full_context_dataset(spam.SpamDataset(path, tokenizer, 40, pad_token_id=0), 40)


def unfreeze_last_blocks(model: gpt2.GPTModel, n: int) -> gpt2.GPTModel:
    for param in model.parameters():
        param.requires_grad = False
    for block in list(model.trf_blocks)[len(model.trf_blocks) - n:]:
        for param in block.parameters():
            param.requires_grad = True
    for param in [*model.final_norm.parameters(), *model.out_head.parameters()]:
        param.requires_grad = True
    return model


def test_unfreeze_last_blocks() -> None:
    assert ex.check_unfreeze_last_blocks(unfreeze_last_blocks)
    assert not ex.check_unfreeze_last_blocks(None)
    assert not ex.check_unfreeze_last_blocks(lambda model, n: model)  # nothing frozen

    def forgets_the_norm(model, n):
        unfreeze_last_blocks(model, n)
        model.final_norm.requires_grad_(False)
    assert not ex.check_unfreeze_last_blocks(forgets_the_norm)

    def first_blocks(model, n):
        unfreeze_last_blocks(model, 0)
        for block in list(model.trf_blocks)[:n]:
            block.requires_grad_(True)
    assert not ex.check_unfreeze_last_blocks(first_blocks)


def test_first_token_loss() -> None:
    def first(input_batch, target_batch, model, device):
        return F.cross_entropy(model(input_batch.to(device))[:, 0, :], target_batch.to(device))

    assert ex.check_first_token_loss(first)
    assert not ex.check_first_token_loss(None)
    assert not ex.check_first_token_loss(spam.calc_loss_batch_classifier)  # the last token
    assert not ex.check_first_token_loss(
        lambda x, y, model, device: F.cross_entropy(model(x)[:, 0, :], y, reduction="none"))


def count_trainable_124m() -> dict[str, int]:
    """From the shapes of GPT-2 124M (q/k/v biases, 2-way head), by hand."""
    d, vocab, ctx, layers, rank = 768, 50257, 1024, 12, 16
    block = (3 * (d * d + d) + d * d + d) + (d * 4 * d + 4 * d + 4 * d * d + d) + 2 * 2 * d
    head = 2 * d + 2
    # LoRA adds in*rank + rank*out per linear: q, k, v, out_proj (d -> d), ff up and down, head
    lora_block = 4 * (d * rank + rank * d) + (d * rank + rank * 4 * d) + (4 * d * rank + rank * d)
    lora_head = d * rank + rank * 2
    return {"last-block": block + 2 * d + head,
            "all": vocab * d + ctx * d + layers * block + 2 * d + head,
            "lora": layers * lora_block + lora_head}


def test_trainable_counts() -> None:
    right = count_trainable_124m()
    assert ex.check_trainable_counts(right)
    assert not ex.check_trainable_counts(None)
    assert not ex.check_trainable_counts({**right, "lora": right["lora"] + 2 * 768 + 2})
    assert not ex.check_trainable_counts({**right, "all": right["all"] + 50257 * 768})  # old head
    assert not ex.check_trainable_counts({"last-block": right["last-block"]})
