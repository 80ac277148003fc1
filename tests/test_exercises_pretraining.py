"""The checks of 1_PreTraining/exercises/pretraining.py accept right answers and reject wrong ones.

The right answers are worked out here another way than the checks do: the probabilities by
hand from exp(), the deterministic settings by sampling many times, the resumed run through a
checkpoint file and the learning rates with a hand-written training loop.
"""
import math

import pytest
import torch

import gpt2
from exercises import pretraining as ex


def toy_softmax(temperature: float) -> list[float]:
    weights = [math.exp(logit / temperature) for logit in ex.TOY_LOGITS.tolist()]
    return [w / sum(weights) for w in weights]


def test_pizza_probabilities() -> None:
    pizza = ex.TOY_VOCAB.index("pizza")
    right = {t: toy_softmax(t)[pizza] for t in ex.PIZZA_TEMPERATURES}
    assert ex.check_pizza_probabilities(right)
    assert not ex.check_pizza_probabilities(None)
    assert not ex.check_pizza_probabilities({1.0: right[1.0]})
    assert not ex.check_pizza_probabilities({t: toy_softmax(1 / t)[pizza] for t in right})
    torch.manual_seed(0)  # sampling 1,000 times only estimates the probabilities
    counted = {t: (torch.multinomial(ex.toy_probabilities(t), 1000, replacement=True) == pizza)
               .float().mean().item() for t in right}
    assert not ex.check_pizza_probabilities(counted)


def samples_always_argmax(top_k, top_p) -> bool:
    """Does sampling at temperature 1 pick the likeliest token, on a peaked and a flat row?"""
    generator = torch.Generator().manual_seed(0)
    peaked = torch.randn(1, 50257, generator=generator) * 3
    flat = torch.randn(1, 50257, generator=generator) * 0.01
    for logits in (peaked, flat):
        picks = gpt2.sample_next_token(logits.expand(100, -1), 1.0, top_k, top_p)  # 100 draws
        if not (picks == logits.argmax()).all():
            return False
    return True


def test_deterministic_settings() -> None:
    right_p = 1 / 50257
    assert samples_always_argmax(1, None) and samples_always_argmax(None, right_p)
    assert ex.check_deterministic_settings(1, right_p)
    assert ex.check_deterministic_settings(1, 1e-9)
    assert not ex.check_deterministic_settings(None, None)
    assert not samples_always_argmax(2, None)
    assert not ex.check_deterministic_settings(2, right_p)
    assert not samples_always_argmax(None, 0.01)  # fine for a peaked row, not a flat one
    assert not ex.check_deterministic_settings(1, 0.01)
    assert not ex.check_deterministic_settings(1, 0.0)


def test_two_token_nucleus() -> None:
    probs = toy_softmax(1.0)
    p_forward, p_toward = probs[ex.TOY_VOCAB.index("forward")], probs[ex.TOY_VOCAB.index("toward")]
    inside = (p_forward + (p_forward + p_toward)) / 2
    torch.manual_seed(0)
    picks = {ex.TOY_VOCAB[gpt2.sample_next_token(ex.TOY_LOGITS[None], 1.0, top_p=inside).item()]
             for _ in range(200)}
    assert picks == {"forward", "toward"}
    assert ex.check_two_token_nucleus(p_forward, p_forward + p_toward)
    assert not ex.check_two_token_nucleus(None, None)
    assert not ex.check_two_token_nucleus(p_forward, p_toward)
    assert not ex.check_two_token_nucleus(0.0, p_forward)


@pytest.fixture(scope="module")
def one_epoch_checkpoint(tmp_path_factory) -> str:
    model = ex.practice_model()
    optimizer = ex.practice_optimizer(model)
    ex._train_quietly(model, optimizer, num_epochs=1)
    path = tmp_path_factory.mktemp("practice") / "practice.pth"
    gpt2.save_checkpoint(path, model, optimizer)
    return path


def test_resumed_training(one_epoch_checkpoint) -> None:
    model, optimizer_state = gpt2.load_checkpoint(one_epoch_checkpoint)
    assert not ex.check_resumed_training(model)  # not trained further yet
    assert not ex.check_resumed_training(None)
    fresh_optimizer_model, _ = gpt2.load_checkpoint(one_epoch_checkpoint)
    ex._train_quietly(fresh_optimizer_model, ex.practice_optimizer(fresh_optimizer_model), 1)
    assert not ex.check_resumed_training(fresh_optimizer_model)
    optimizer = ex.practice_optimizer(model)
    optimizer.load_state_dict(optimizer_state)
    ex._train_quietly(model, optimizer, num_epochs=1)
    assert ex.check_resumed_training(model)


def val_loss_after_one_epoch(lr: float) -> float:
    """The practice run written out by hand: one pass over the batches, then the mean loss."""
    model = ex.practice_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=ex.WEIGHT_DECAY)
    train_loader, val_loader = ex.practice_loaders()
    for inputs, targets in train_loader:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten()).backward()
        optimizer.step()
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
                  for x, y in val_loader]
    return sum(losses) / len(losses)


def test_learning_rates() -> None:
    slow, fast, too_slow = ex.PRACTICE_LR, 4e-3, 1e-5
    right = {slow: val_loss_after_one_epoch(slow), fast: val_loss_after_one_epoch(fast)}
    assert right[fast] < right[slow]
    assert ex.check_learning_rates(right)
    assert not ex.check_learning_rates(None)
    assert not ex.check_learning_rates({slow: right[slow]})
    assert not ex.check_learning_rates({slow: right[slow], fast: right[fast] + 0.1})
    assert not ex.check_learning_rates({slow: right[slow],
                                        too_slow: val_loss_after_one_epoch(too_slow)})
    assert not ex.check_learning_rates({slow: right[slow], -1.0: 0.0})
