"""Checks for the exercises of chapter 7b, preference tuning with DPO.

The expected answers are worked out here, with `math` and `torch`, when a check runs.
"""
from __future__ import annotations

import math

import torch

from . import verdict

# One preference pair: each response's mean log-probability per token under the policy and
# under the reference model (Exercises 1 and 2).
PAIR = {"policy_chosen": -0.8, "policy_rejected": -1.6,
        "reference_chosen": -1.0, "reference_rejected": -1.2}
PAIR_BETA = 0.5

# Exercise 4: two rows of per-token log-probabilities, already lined up with their mask (the
# shift by one position is done); True marks the tokens of the response.
TOKEN_LOGPROBS = torch.tensor([[-2.0, -4.0, -0.5, -1.5, -3.0],
                               [-0.3, -0.6, -0.9, -1.8, -5.0]])
TOKEN_MASK = torch.tensor([[False, False, True, True, False],
                           [False, True, True, True, False]])


def _loss(z: float) -> float:
    """-log sigmoid(z), written so that it does not overflow for large |z|."""
    return math.log1p(math.exp(-z)) if z > 0 else -z + math.log1p(math.exp(z))


def _log_ratio_gap(pair: dict) -> float:
    """(log pi(c) - log ref(c)) - (log pi(r) - log ref(r)) for one pair."""
    return ((pair["policy_chosen"] - pair["reference_chosen"])
            - (pair["policy_rejected"] - pair["reference_rejected"]))


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_dpo_loss(answer: float | None) -> bool:
    """Exercise 1: the DPO loss of PAIR at beta = PAIR_BETA, worked out by hand."""
    if not _is_number(answer):
        return verdict(False, "give one number: the loss of the pair")
    gap = _log_ratio_gap(PAIR)
    expected = _loss(PAIR_BETA * gap)
    if math.isclose(answer, expected, abs_tol=1e-3):
        return verdict(True, f"beta times the gap of log-ratios is {PAIR_BETA * gap:.2f}, and "
                             f"-log sigmoid of it is {expected:.4f}: a little below ln 2, because "
                             "the policy already leans towards the chosen response")
    wrong = {
        _loss(0.1 * gap): "that is the loss at beta = 0.1; this exercise uses beta = 0.5",
        _loss(gap): "multiply the gap of log-ratios by beta before the sigmoid",
        _loss(-PAIR_BETA * gap): "a sign is swapped: the chosen log-ratio comes first",
        1 / (1 + math.exp(-PAIR_BETA * gap)): "that is sigmoid(z) itself; the loss is -log of it",
        math.log(2): "ln 2 is the loss when the policy equals the reference; here it does not",
    }
    for value, hint in wrong.items():
        if math.isclose(answer, value, abs_tol=1e-3):
            return verdict(False, hint)
    return verdict(False, "first the two log-ratios, log pi - log ref, for chosen and rejected; "
                          "then z = beta x (chosen one - rejected one); the loss is -log sigmoid(z)")


def check_beta_limits(small_beta_loss: float | None, large_beta_loss: float | None) -> bool:
    """Exercise 2: what PAIR's loss tends to as beta goes to 0, and as beta grows without end."""
    if not (_is_number(small_beta_loss) and _is_number(large_beta_loss)):
        return verdict(False, "give two numbers: the limit as beta -> 0, then as beta -> infinity")
    small_ok = math.isclose(small_beta_loss, math.log(2), abs_tol=1e-3)
    large_ok = math.isclose(large_beta_loss, 0.0, abs_tol=1e-3)
    if small_ok and large_ok:
        return verdict(True, "with a tiny beta every pair costs about ln 2 whatever the policy "
                             "does, so the log-ratios must grow large before the loss falls: the "
                             "policy is free to move far from the reference. With a large beta a "
                             "small lead of the chosen response already brings the loss to 0, so "
                             "the policy stays close to the reference")
    if math.isclose(small_beta_loss, 0.0, abs_tol=1e-3) and \
            math.isclose(large_beta_loss, math.log(2), abs_tol=1e-3):
        return verdict(False, "the two are swapped: what is sigmoid(beta x gap) when beta is 0?")
    if not small_ok:
        return verdict(False, "as beta -> 0, z = beta x gap -> 0 for any gap: what is "
                              "-log sigmoid(0)?")
    return verdict(False, "the gap of log-ratios of this pair is positive, so z = beta x gap "
                          "grows without end: what does -log sigmoid(z) tend to?")


def _expected_margins(pc, pr, rc, rr, beta):
    return beta * ((pc - rc) - (pr - rr))


def check_reward_margin(reward_margin) -> bool:
    """Exercise 3: reward_margin(policy_chosen, policy_rejected, reference_chosen,
    reference_rejected, beta), one margin per pair (a tensor of shape (b,))."""
    if not callable(reward_margin):
        return verdict(False, "define reward_margin(...) and pass the function itself")
    generator = torch.Generator().manual_seed(0)
    for beta in (0.1, 0.5, 2.0):
        pc, pr, rc, rr = (-3 * torch.rand(6, generator=generator) for _ in range(4))
        expected = _expected_margins(pc, pr, rc, rr, beta)
        try:
            got = reward_margin(pc, pr, rc, rr, beta)
        except Exception as err:  # a learner's function may fail in any way
            return verdict(False, f"reward_margin failed: {err!r}")
        if not torch.is_tensor(got) or got.shape != expected.shape:
            return verdict(False, f"return a tensor with one margin per pair, shape "
                                  f"{tuple(expected.shape)}, not the batch mean")
        if torch.allclose(got, expected, atol=1e-5):
            continue
        if torch.allclose(got, expected / beta, atol=1e-5):
            return verdict(False, "a reward is beta times a log-ratio: multiply by beta")
        if torch.allclose(got, -expected, atol=1e-5):
            return verdict(False, "the sign is swapped: the chosen reward minus the rejected one")
        return verdict(False, "each reward is beta x (log pi - log ref) of its response; the "
                              "margin is the chosen reward minus the rejected reward")
    return verdict(True, "the mean of these margins is chosen_rewards - rejected_rewards as "
                         "dpo.compute_dpo_loss returns them: the margin the training plots show")


def check_masked_mean(answer) -> bool:
    """Exercise 4: each row's mean of TOKEN_LOGPROBS over the positions TOKEN_MASK marks."""
    try:
        got = torch.as_tensor(answer, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError):
        return verdict(False, "give two numbers, one per row (a list or a tensor)")
    if answer is None or got.numel() != 2:
        return verdict(False, "give two numbers, one per row (a list or a tensor)")
    mask = TOKEN_MASK.float()
    expected = (TOKEN_LOGPROBS * mask).sum(1) / mask.sum(1)
    if torch.allclose(got, expected, atol=1e-3):
        return verdict(True, "this is what dpo.compute_logprobs returns for each row, once it "
                             "has shifted the mask by one position to line it up with the "
                             "targets")
    if torch.allclose(got, TOKEN_LOGPROBS.mean(1), atol=1e-3):
        return verdict(False, "that is the mean over every position; count only the response "
                              "tokens, where the mask is True")
    if torch.allclose(got, (TOKEN_LOGPROBS * mask).sum(1), atol=1e-3):
        return verdict(False, "that is the sum; divide by the number of response tokens")
    if torch.allclose(got, (TOKEN_LOGPROBS * mask).sum(1) / mask.shape[1], atol=1e-3):
        return verdict(False, "divide by the number of response tokens, not by the row's length")
    return verdict(False, "add up the values where the mask is True and divide by how many "
                          "there are, row by row")
