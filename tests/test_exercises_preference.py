"""The checks of chapter 7b's exercises: wrong answers are rejected, right ones accepted.

The right answers are written here independently of the checks.
"""
import math

import torch

from exercises.preference import (PAIR, PAIR_BETA, TOKEN_LOGPROBS, TOKEN_MASK, check_beta_limits,
                                  check_dpo_loss, check_masked_mean, check_reward_margin)


def test_dpo_loss() -> None:
    # chosen log-ratio -0.8 + 1.0 = 0.2, rejected -1.6 + 1.2 = -0.4; z = 0.5 * 0.6 = 0.3
    assert PAIR_BETA == 0.5
    assert check_dpo_loss(math.log(1 + math.exp(-0.3)))
    assert not check_dpo_loss(None)
    assert not check_dpo_loss(True)
    assert not check_dpo_loss(math.log(1 + math.exp(-0.6)))  # beta left out
    assert not check_dpo_loss(math.log(1 + math.exp(0.3)))  # a sign swapped
    assert not check_dpo_loss(1 / (1 + math.exp(-0.3)))  # sigmoid, not -log sigmoid
    assert not check_dpo_loss(math.log(2))


def test_beta_limits() -> None:
    assert PAIR["policy_chosen"] - PAIR["reference_chosen"] > \
        PAIR["policy_rejected"] - PAIR["reference_rejected"]
    assert check_beta_limits(math.log(2), 0.0)
    assert check_beta_limits(0.6931, 1e-5)
    assert not check_beta_limits(None, 0.0)
    assert not check_beta_limits(0.0, math.log(2))  # swapped
    assert not check_beta_limits(0.0, 0.0)
    assert not check_beta_limits(math.log(2), float("inf"))  # the limit of a pair ranked wrong


def test_reward_margin() -> None:
    def right(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
        chosen_reward = beta * (policy_chosen - reference_chosen)
        rejected_reward = beta * (policy_rejected - reference_rejected)
        return chosen_reward - rejected_reward

    assert check_reward_margin(right)
    assert not check_reward_margin(None)
    assert not check_reward_margin(lambda pc, pr, rc, rr, beta: (pc - rc) - (pr - rr))
    assert not check_reward_margin(lambda pc, pr, rc, rr, beta: beta * ((pr - rr) - (pc - rc)))
    assert not check_reward_margin(lambda pc, pr, rc, rr, beta: right(pc, pr, rc, rr, beta).mean())
    assert not check_reward_margin(lambda *args: 1 / 0)


def test_masked_mean() -> None:
    # row 0: (-0.5 - 1.5) / 2; row 1: (-0.6 - 0.9 - 1.8) / 3
    assert TOKEN_LOGPROBS.shape == TOKEN_MASK.shape == (2, 5)
    assert check_masked_mean([-1.0, -1.1])
    assert check_masked_mean(torch.tensor([-1.0, -1.1]))
    assert not check_masked_mean(None)
    assert not check_masked_mean("two numbers")
    assert not check_masked_mean([-1.0])
    assert not check_masked_mean(TOKEN_LOGPROBS.mean(1))  # every position counted
    assert not check_masked_mean([-2.0, -3.3])  # the sums
