"""Checks for the exercises of chapter 5, pretraining.

The decoding exercises use the book's toy vocabulary of nine words and its next-token logits
after "every effort moves you". The training exercises use a "practice" setup: a GPT with
GPT-2's vocabulary but only two narrow layers, trained on the first few thousand characters
of The Verdict, so that one epoch takes seconds instead of minutes. It has no dropout and its
loaders do not shuffle, so training it is deterministic: the checks repeat your training run
and compare.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math

import torch
from torch.utils.data import DataLoader

import gpt2
import gpt_download

from . import verdict

# The book's example (section 5.3): nine words and the logits a model gave for each of them.
TOY_VOCAB = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]
TOY_LOGITS = torch.tensor([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79])
PIZZA_TEMPERATURES = (1.0, 0.1, 5.0)

PRACTICE_CONFIG = {**gpt2.GPT_CONFIG_124M, "context_length": 32, "emb_dim": 64, "n_heads": 4,
                   "n_layers": 2, "drop_rate": 0.0}
PRACTICE_CHARS = 3_000  # characters of The Verdict's training part that the practice run reads
PRACTICE_BATCH_SIZE = 4
PRACTICE_LR = 4e-4      # the chapter's learning rate
WEIGHT_DECAY = 0.1
TRAIN_RATIO = 0.9       # the chapter's split of The Verdict
MAX_LEARNING_RATES = 4  # each one is a training run the check repeats
LOSS_TOLERANCE = 1e-3


def toy_probabilities(temperature: float = 1.0) -> torch.Tensor:
    """Softmax of the toy logits divided by `temperature`."""
    return torch.softmax(TOY_LOGITS / temperature, dim=0)


def check_pizza_probabilities(answer: dict | None) -> bool:
    """Exercise 1: probability of sampling "pizza" at each temperature, {temperature: p}."""
    if not isinstance(answer, dict) or any(t not in answer for t in PIZZA_TEMPERATURES):
        return verdict(False, "give a dict {temperature: probability} for the temperatures "
                              + ", ".join(str(t) for t in PIZZA_TEMPERATURES))
    pizza = TOY_VOCAB.index("pizza")
    expected = {t: toy_probabilities(t)[pizza].item() for t in PIZZA_TEMPERATURES}
    if all(math.isclose(answer[t], expected[t], rel_tol=1e-3, abs_tol=1e-9)
           for t in PIZZA_TEMPERATURES):
        per_thousand = {t: 1000 * p for t, p in expected.items()}
        return verdict(True, "in 1,000 draws pizza comes up about "
                             + ", ".join(f"{n:.1f} times at T={t}" for t, n in per_thousand.items())
                             + ": the exact probability, which sampling could only estimate")
    scaled_up = {t: torch.softmax(TOY_LOGITS * t, dim=0)[pizza].item() for t in PIZZA_TEMPERATURES}
    if all(math.isclose(answer[t], scaled_up[t], rel_tol=1e-3, abs_tol=1e-9)
           for t in PIZZA_TEMPERATURES):
        return verdict(False, "you multiplied the logits by the temperature; divide them by it")
    return verdict(False, "not the exact probabilities yet: counting samples only estimates "
                          "them; divide the logits by the temperature and take the softmax")


def check_deterministic_settings(top_k: int | None, top_p: float | None) -> bool:
    """Exercise 2: a top_k, and a top_p, that make sampling at temperature 1 deterministic.

    Each must work for every next-token distribution over GPT-2's vocabulary, not just one.
    """
    vocab_size = gpt2.GPT_CONFIG_124M["vocab_size"]
    if top_k is None or top_p is None:
        return verdict(False, "give both a top_k and a top_p")
    if top_k != 1:
        return verdict(False, f"with top_k={top_k}, sampling still chooses among {top_k} "
                              "tokens; how many may it keep to have no choice left?")
    if not 0 < top_p <= 1 / vocab_size:
        hint = ("top_p must be above 0" if top_p <= 0 else
                f"top_p={top_p} keeps a second token whenever the likeliest one has less than "
                f"{top_p} of the probability; a nearly flat distribution over {vocab_size:,} "
                "tokens gives each one only about 1/50,257")
        return verdict(False, hint)
    return verdict(True, "top_k=1 leaves one token to sample; a top_p no larger than "
                         f"1/{vocab_size:,} never reaches past the likeliest token, since that "
                         "one always has at least that share. Either way it is greedy decoding")


def check_two_token_nucleus(low: float | None, high: float | None) -> bool:
    """Exercise 3: the range low < top_p <= high whose nucleus is exactly "forward", "toward"."""
    if low is None or high is None:
        return verdict(False, "give both ends of the range, low and high")
    probs = toy_probabilities(1.0)
    p_forward, p_toward = (probs[TOY_VOCAB.index(w)].item() for w in ("forward", "toward"))
    if math.isclose(low, p_forward, abs_tol=1e-4) and \
            math.isclose(high, p_forward + p_toward, abs_tol=1e-4):
        return verdict(True, f"above {p_forward:.4f} the likeliest word alone no longer "
                             f"reaches top_p, and up to {p_forward + p_toward:.4f} the two "
                             "of them do")
    if math.isclose(high, p_toward, abs_tol=1e-4):
        return verdict(False, "the nucleus adds up the probabilities of the likeliest tokens; "
                              "high is a sum, not one probability")
    return verdict(False, "sort the probabilities at temperature 1: top_p keeps each token "
                          "while the tokens before it hold less than top_p of the mass")


@functools.lru_cache(maxsize=1)
def _verdict_text() -> str:
    return gpt_download.fetch_data("the-verdict.txt").read_text(encoding="utf-8")


def practice_loaders() -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders of the practice setup (in order, not shuffled)."""
    text = _verdict_text()
    split = int(TRAIN_RATIO * len(text))
    context = PRACTICE_CONFIG["context_length"]
    settings = {"batch_size": PRACTICE_BATCH_SIZE, "max_length": context, "stride": context,
                "shuffle": False, "num_workers": 0}
    train_loader = gpt2.create_dataloader_v1(text[:PRACTICE_CHARS], drop_last=True, **settings)
    val_loader = gpt2.create_dataloader_v1(text[split:], drop_last=False, **settings)
    return train_loader, val_loader


def practice_model() -> gpt2.GPTModel:
    """The practice GPT, initialised from seed 123 (so every call gives the same weights)."""
    torch.manual_seed(123)
    return gpt2.GPTModel(PRACTICE_CONFIG)


def practice_optimizer(model: torch.nn.Module, lr: float = PRACTICE_LR) -> torch.optim.AdamW:
    """AdamW with the chapter's weight decay."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)


def _train_quietly(model: gpt2.GPTModel, optimizer: torch.optim.Optimizer,
                   num_epochs: int) -> None:
    """train_model_simple on the practice data, without its printed progress."""
    train_loader, val_loader = practice_loaders()
    with contextlib.redirect_stdout(io.StringIO()):
        gpt2.train_model_simple(model, train_loader, val_loader, optimizer, "cpu", num_epochs,
                                eval_freq=len(train_loader), eval_iter=1,
                                start_context="Every effort moves you",
                                tokenizer=gpt2.get_tokenizer())


@functools.lru_cache(maxsize=1)
def _reference_runs() -> tuple[dict, dict]:
    """State dicts of the practice model after one and after two epochs, trained in one go."""
    with torch.random.fork_rng():  # leave the learner's random numbers alone
        model = practice_model()
        optimizer = practice_optimizer(model)
        _train_quietly(model, optimizer, num_epochs=1)
        one_epoch = {k: v.clone() for k, v in model.state_dict().items()}
        _train_quietly(model, optimizer, num_epochs=1)
    return one_epoch, model.state_dict()


def _same_weights(model: torch.nn.Module, state: dict) -> bool:
    mine = model.state_dict()
    return mine.keys() == state.keys() and all(
        torch.allclose(mine[k].detach().cpu().float(), v, atol=1e-6) for k, v in state.items())


def check_resumed_training(model: gpt2.GPTModel | None) -> bool:
    """Exercise 4: one epoch, saved, reloaded and trained one more epoch, as if never stopped."""
    if model is None:
        return verdict(False, "load the checkpoint, train one more epoch and pass the model")
    if model.cfg != PRACTICE_CONFIG:
        return verdict(False, "this is not the practice model; load it from the checkpoint")
    one_epoch, two_epochs = _reference_runs()
    if _same_weights(model, two_epochs):
        return verdict(True, "the resumed run ends with the very weights of an uninterrupted "
                             "two-epoch run: AdamW's moving averages came back from the file")
    if _same_weights(model, one_epoch):
        return verdict(False, "these are the weights from the checkpoint; train one more epoch")
    return verdict(False, "the weights differ from a run that never stopped; did you give the "
                          "new AdamW the saved optimizer state (optimizer.load_state_dict) "
                          "before training, and train exactly one epoch on practice_loaders()?")


@functools.lru_cache(maxsize=None)
def _val_loss_after_one_epoch(lr: float) -> float:
    with torch.random.fork_rng():
        model = practice_model()
        _train_quietly(model, practice_optimizer(model, lr), num_epochs=1)
        model.eval()
        with torch.no_grad():
            return gpt2.calc_loss_loader(practice_loaders()[1], model, "cpu")


def check_learning_rates(answer: dict | None) -> bool:
    """Exercise 5: {learning rate: validation loss after one practice epoch}, with PRACTICE_LR
    and at least one learning rate that ends lower."""
    if not isinstance(answer, dict) or PRACTICE_LR not in answer or len(answer) < 2:
        return verdict(False, f"give a dict {{learning rate: validation loss}} with {PRACTICE_LR} "
                              "and at least one other learning rate")
    if len(answer) > MAX_LEARNING_RATES or any(lr <= 0 for lr in answer):
        return verdict(False, f"give at most {MAX_LEARNING_RATES} positive learning rates")
    expected = {lr: _val_loss_after_one_epoch(lr) for lr in answer}
    wrong = [lr for lr in answer if not math.isclose(answer[lr], expected[lr],
                                                     abs_tol=LOSS_TOLERANCE)]
    if wrong:
        return verdict(False, f"the validation loss for lr={wrong[0]} should be close to "
                              f"{expected[wrong[0]]:.3f}; train a fresh practice_model() with "
                              "practice_optimizer(model, lr) for one epoch on practice_loaders(), "
                              "then average the loss over the whole validation loader")
    best = min(expected, key=expected.get)
    if best == PRACTICE_LR:
        return verdict(False, f"none of your learning rates beats {PRACTICE_LR}; try others")
    return verdict(True, f"lr={best} ends at {expected[best]:.3f} against "
                         f"{expected[PRACTICE_LR]:.3f}: a model this small, trained this "
                         "briefly, takes bigger steps well")
