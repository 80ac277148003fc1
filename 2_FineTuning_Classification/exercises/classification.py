"""Checks for the exercises of chapter 6, fine-tuning for classification.

The expected answers are computed here with gpt2.py on small models (2 to 3 blocks, 32 wide),
or on PyTorch's "meta" device, which records shapes without allocating memory.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import gpt2
import spam

from . import verdict

SMALL = {**gpt2.GPT_CONFIG_124M, "context_length": 32, "emb_dim": 32, "n_heads": 4,
         "n_layers": 3, "drop_rate": 0.0}
LORA_RANK = 16


def _small_classifier(seed: int = 0) -> gpt2.GPTModel:
    torch.manual_seed(seed)
    return spam.add_classification_head(gpt2.GPTModel(SMALL))


def check_full_context_dataset(dataset, context_length: int) -> bool:
    """Exercise 1: the training set padded to the model's whole context instead of its longest
    message."""
    if dataset is None:
        return verdict(False, "build a spam.SpamDataset of train.csv with max_length set")
    lengths = {len(dataset[i][0]) for i in range(len(dataset))}
    if lengths != {context_length}:
        return verdict(False, f"the messages have {sorted(lengths)[:5]} tokens; every one should "
                              f"have the context length, {context_length}")
    tokenizer = gpt2.get_tokenizer()
    first = spam.encode_message(dataset.data["Text"].iloc[0], tokenizer)[:context_length]
    ids = dataset[0][0].tolist()
    if ids[:len(first)] != first or set(ids[len(first):]) - {spam.PAD_TOKEN_ID}:
        return verdict(False, "each message should come first, followed by <|endoftext|> "
                              f"(id {spam.PAD_TOKEN_ID}) up to the context length")
    padded = sum(ids.count(spam.PAD_TOKEN_ID) for ids in dataset.encoded_texts)
    share = padded / (len(dataset) * context_length)
    return verdict(True, f"{share:.0%} of the training tokens are now padding: every step costs "
                         "that much more, and the last token, the one that classifies, sits "
                         "even further from the message")


def check_unfreeze_last_blocks(unfreeze_last_blocks) -> bool:
    """Exercise 2: a function (model, n) that trains only the last n blocks, the final norm
    and the head."""
    if unfreeze_last_blocks is None:
        return verdict(False, "write unfreeze_last_blocks(model, n)")
    for n in range(SMALL["n_layers"] + 1):
        model = _small_classifier()
        unfreeze_last_blocks(model, n)
        first_trainable = SMALL["n_layers"] - n
        expected = {name: name.startswith(("final_norm.", "out_head.")) or (
            name.startswith("trf_blocks.") and int(name.split(".")[1]) >= first_trainable)
            for name, _ in model.named_parameters()}
        wrong = [name for name, p in model.named_parameters() if p.requires_grad != expected[name]]
        if wrong:
            return verdict(False, f"with n={n}, {wrong[0]} should "
                                  f"{'' if expected[wrong[0]] else 'not '}train "
                                  f"({len(wrong)} parameters are off)")
    return verdict(True, "more trainable blocks adapt more of the model to the task, at the "
                         "cost of more gradients to compute and more weights that can overfit")


def check_first_token_loss(calc_loss_batch_first) -> bool:
    """Exercise 3: the classification loss computed from the first token's output."""
    if calc_loss_batch_first is None:
        return verdict(False, "write calc_loss_batch_first(input_batch, target_batch, model, device)")
    model = _small_classifier().eval()
    inputs = torch.randint(0, 1000, (4, 12), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        expected = F.cross_entropy(model(inputs)[:, 0, :], labels)
        answer = calc_loss_batch_first(inputs, labels, model, "cpu")
    if not isinstance(answer, torch.Tensor) or answer.shape != ():
        return verdict(False, "return the mean loss as a 0-dimensional tensor")
    if not torch.allclose(answer, expected, atol=1e-6):
        return verdict(False, "take the logits at position 0, model(input)[:, 0, :], and compare "
                              "them with the labels by cross-entropy")
    return verdict(True, "the first token attends only to itself, so this loss sees one word of "
                         "each message: the classifier can learn no more than its first token")


def trainable_counts_124m() -> dict[str, int]:
    """Parameters that train in GPT-2 124M made into a 2-class classifier, by setting."""
    counts = {}
    for trainable in spam.TRAINABLE_CHOICES:
        with torch.device("meta"):
            model = spam.prepare_classifier(gpt2.GPTModel(gpt2.gpt2_config("124M")), trainable,
                                            lora_rank=LORA_RANK, lora_alpha=LORA_RANK)
        counts[trainable] = spam.count_trainable_parameters(model)
    return counts


def check_trainable_counts(answer: dict | None) -> bool:
    """Exercise 4: parameters that train in GPT-2 124M as a classifier, for "last-block", "all"
    and "lora" (rank 16)."""
    if not isinstance(answer, dict) or set(answer) != set(spam.TRAINABLE_CHOICES):
        return verdict(False, "give a dict with the keys " +
                       ", ".join(repr(k) for k in spam.TRAINABLE_CHOICES))
    expected = trainable_counts_124m()
    wrong = [key for key in expected if answer[key] != expected[key]]
    if wrong:
        return verdict(False, f"{', '.join(wrong)} not right yet; count only parameters with "
                              "requires_grad, and remember the new 2-way head (weight and bias)")
    share = {key: count / expected["all"] for key, count in expected.items()}
    return verdict(True, f"the last block trains {share['last-block']:.1%} of the weights and "
                         f"LoRA {share['lora']:.1%}")
