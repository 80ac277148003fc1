"""Chapter 7b: the DPO loss against a hand computation, its value at the start, the masks that
keep prompt and padding out, a few training steps, and the script's answers to bad input."""
import copy
import math

import pytest
import torch

import dpo
import gpt2
import preference_tune
from gpt2_fixtures import write_tiny_checkpoint

TINY = {**gpt2.GPT_CONFIG_124M, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
        "drop_rate": 0.0}
PAIRS = [{"instruction": "Say hi.", "input": "", "chosen": "Hello there, friend.",
          "rejected": "Go away."},
         {"instruction": "Name a fruit.", "input": "", "chosen": "An apple.",
          "rejected": "Why should I tell you, fool?"}]


def test_loss_equals_the_formula_worked_by_hand():
    policy_c, policy_r = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.5])
    ref_c, ref_r = torch.tensor([-1.5, -2.5]), torch.tensor([-2.0, -1.0])
    loss, chosen, rejected = dpo.compute_dpo_loss(policy_c, policy_r, ref_c, ref_r, beta=0.5)
    # pair 1: 0.5 * ((-1 + 1.5) - (-3 + 2)) = 0.75; pair 2: 0.5 * ((-2 + 2.5) - (-1.5 + 1)) = 0.5
    expected = (-math.log(1 / (1 + math.exp(-0.75))) - math.log(1 / (1 + math.exp(-0.5)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert chosen.item() == pytest.approx(0.5 * (0.5 + 0.5) / 2)      # mean of 0.5 * (0.5, 0.5)
    assert rejected.item() == pytest.approx(0.5 * (-1.0 - 0.5) / 2)   # mean of 0.5 * (-1, -0.5)
    assert not chosen.requires_grad


def test_loss_is_ln2_when_the_policy_is_the_reference():
    torch.manual_seed(0)
    model = gpt2.GPTModel(TINY).eval()
    batch = dpo.preference_collate_fn(dpo.PreferenceDataset(PAIRS, gpt2.get_tokenizer()).items)
    loss, chosen, rejected, right = dpo.compute_dpo_loss_batch(batch, model, copy.deepcopy(model))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert chosen.item() == rejected.item() == right.item() == 0.0


def test_prompt_and_padding_positions_count_for_nothing():
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 8))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, 3:6] = True  # a prompt of 3 tokens, a response of 3, then 2 of padding
    mask[1, 2:8] = True
    logits = torch.randn(2, 8, 50)
    base = dpo.compute_logprobs(logits, ids, mask)
    changed_logits, changed_ids = logits.clone(), ids.clone()
    changed_logits[0, :2] += 5.0  # logits that predict prompt tokens (positions 1 and 2)
    changed_logits[0, 5:] = torch.randn(3, 50)  # logits at the last response token and beyond
    changed_ids[0, 6:] = 7  # padding tokens
    changed_ids[0, :3] = 9  # prompt tokens
    assert torch.allclose(dpo.compute_logprobs(changed_logits, changed_ids, mask), base)
    changed_logits[0, 3, changed_ids[0, 4]] += 5.0  # the logit of a response token does count
    assert not torch.allclose(dpo.compute_logprobs(changed_logits, changed_ids, mask), base)


def test_collate_masks_only_the_response_tokens():
    tokenizer = gpt2.get_tokenizer()
    prompt, chosen, rejected = dpo.PreferenceDataset(PAIRS[:1], tokenizer)[0]
    batch = dpo.preference_collate_fn([(prompt, chosen, rejected)] * 2)
    assert batch["chosen"].shape[1] == len(prompt) + len(chosen)
    assert batch["chosen_mask"][0].tolist() == [False] * len(prompt) + [True] * len(chosen)
    assert batch["rejected_mask"].sum(1).tolist() == [len(rejected)] * 2


def test_a_few_steps_raise_the_margin_on_the_training_pairs():
    torch.manual_seed(0)
    reference = gpt2.GPTModel(TINY).eval()
    policy = copy.deepcopy(reference)
    loader = dpo.create_preference_dataloader(PAIRS, gpt2.get_tokenizer(), batch_size=2,
                                              shuffle=False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    history = dpo.train_model_dpo_simple(policy, reference, loader, loader, optimizer,
                                         num_epochs=10, beta=0.1, eval_freq=9, eval_iter=1,
                                         progress=False)
    after = dpo.evaluate_dpo_loader(loader, policy, reference)
    assert history["train_margin"][0] > 0 and after["margin"] > history["train_margin"][0]
    assert after["loss"] < math.log(2) and after["accuracy"] == 1.0


def test_script_quick_run_writes_model_and_metrics(tmp_path):
    checkpoint = write_tiny_checkpoint(tmp_path, {**TINY, "context_length": 256})
    out = tmp_path / "dpo"
    assert preference_tune.main(["--policy", str(checkpoint), "--quick", "--out", str(out),
                                 "--max-new-tokens", "4", "--lr", "1e-4"]) == 0
    metrics = (out / "metrics.json").read_text()
    for key in ("likelihood_accuracy", "reward_margin", "rouge_l_chosen", "rouge_l_rejected",
                "answer_words"):
        assert key in metrics
    assert gpt2.load_checkpoint(out / "model.pth")[0].cfg["emb_dim"] == 32


@pytest.mark.parametrize("argv, message", [
    (["--policy", "missing.pth"], "finetune_instructions.py"),
    (["--beta", "0"], "--beta and --lr must be above 0"),
    (["--epochs", "0"], "must be at least 1"),
])
def test_script_bad_input_gets_one_line_and_exit_2(argv, message, tmp_path, capsys):
    try:
        code = preference_tune.main([*argv, "--out", str(tmp_path / "o")])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_script_refuses_a_file_that_is_no_checkpoint(tmp_path, capsys):
    (tmp_path / "model.pth").write_text("not a model")
    assert preference_tune.main(["--policy", str(tmp_path / "model.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "finetune_instructions.py" in err
