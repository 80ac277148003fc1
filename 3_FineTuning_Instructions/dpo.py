"""Chapter 7b: preference tuning with DPO (Direct Preference Optimization, Rafailov et al. 2023).

After chapter 7 a model answers instructions; DPO makes it prefer one kind of answer over
another, learning straight from pairs of a preferred ("chosen") and a dispreferred ("rejected")
response, with no reward model and no reinforcement learning. The pieces, under the names of the
book's companion notebook: the pairs batched with masks that keep only response tokens, the
log-probability of a response, `compute_dpo_loss`, and `train_model_dpo_simple`.
07b_preference_tuning.ipynb builds them step by step; preference_tune.py runs them from the shell.
"""
from __future__ import annotations

import json

import tiktoken
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import gpt2
import gpt_download
import instruct

PREFERENCE_FILE = "instruction-data-with-preference.json"  # a key of gpt_download.DATA_FILES


def load_preference_data() -> list[dict]:
    """The 1,100 instructions of chapter 7, each with a "chosen" and a "rejected" response."""
    with open(gpt_download.fetch_data(PREFERENCE_FILE), encoding="utf-8") as f:
        data = json.load(f)
    for i, entry in enumerate(data):
        missing = {"instruction", "chosen", "rejected"} - entry.keys()
        if missing:
            raise ValueError(f"{PREFERENCE_FILE}, entry {i}: no {', '.join(sorted(missing))}")
    return data


class PreferenceDataset(Dataset):
    """Each entry as (prompt ids, chosen response ids, rejected response ids), the prompt in
    chapter 7's Alpaca format and each response encoded after it as in instruction tuning."""

    def __init__(self, data: list[dict], tokenizer: tiktoken.Encoding):
        self.items = []
        for entry in data:
            prompt, chosen = instruct.encode_entry({**entry, "output": entry["chosen"]}, tokenizer)
            _, rejected = instruct.encode_entry({**entry, "output": entry["rejected"]}, tokenizer)
            self.items.append((prompt, chosen, rejected))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> tuple[list[int], list[int], list[int]]:
        return self.items[idx]


def _pad(rows: list[tuple[list[int], list[int]]], pad_token_id: int, max_length: int | None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt + response rows padded to one length: (ids, mask), the mask True on response
    tokens only, so prompt and padding count for nothing."""
    texts = [(prompt + response)[:max_length] for prompt, response in rows]
    width = max(len(text) for text in texts)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for row, ((prompt, _), text) in enumerate(zip(rows, texts)):
        ids[row, :len(text)] = torch.tensor(text)
        mask[row, len(prompt):len(text)] = True
    return ids, mask


def preference_collate_fn(batch: list[tuple[list[int], list[int], list[int]]],
                          pad_token_id: int = 50256, allowed_max_length: int | None = None,
                          device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A batch of pairs: {"chosen", "chosen_mask", "rejected", "rejected_mask"}, each (b, t)."""
    out = {}
    for name, column in (("chosen", 1), ("rejected", 2)):
        ids, mask = _pad([(item[0], item[column]) for item in batch], pad_token_id,
                         allowed_max_length)
        out[name], out[f"{name}_mask"] = ids.to(device), mask.to(device)
    return out


def create_preference_dataloader(data: list[dict], tokenizer: tiktoken.Encoding,
                                 batch_size: int = 8, shuffle: bool = True,
                                 allowed_max_length: int | None = None,
                                 device: torch.device | str = "cpu") -> DataLoader:
    """A DataLoader of padded, masked preference pairs (see `preference_collate_fn`)."""
    def collate(batch):
        return preference_collate_fn(batch, allowed_max_length=allowed_max_length, device=device)
    return DataLoader(PreferenceDataset(data, tokenizer), batch_size=batch_size, shuffle=shuffle,
                      collate_fn=collate, drop_last=False)


def compute_logprobs(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's mean log-probability of its response tokens: (b,).

    logits (b, t, vocab) come from ids (b, t); position j predicts token j + 1, so the logits
    drop their last position and the labels and mask their first. Only masked-in positions
    count, so a prompt's or padding's logits can be anything.
    """
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (b, t - 1)
    mask = mask[:, 1:].float()
    return (picked * mask).sum(-1) / mask.sum(-1)


def compute_dpo_loss(model_chosen_logprobs: torch.Tensor, model_rejected_logprobs: torch.Tensor,
                     reference_chosen_logprobs: torch.Tensor,
                     reference_rejected_logprobs: torch.Tensor, beta: float = 0.1
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-log sigmoid(beta ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r)))), batch mean.

    Returns (loss, chosen_rewards, rejected_rewards), each a batch mean; a reward is the
    policy's log-ratio to the reference times beta, detached: how much more likely training
    made the response. With the policy equal to the reference the loss is ln 2.
    """
    chosen_log_ratio = model_chosen_logprobs - reference_chosen_logprobs
    rejected_log_ratio = model_rejected_logprobs - reference_rejected_logprobs
    losses = -F.logsigmoid(beta * (chosen_log_ratio - rejected_log_ratio))
    chosen_rewards = (beta * chosen_log_ratio).detach()
    rejected_rewards = (beta * rejected_log_ratio).detach()
    return losses.mean(), chosen_rewards.mean(), rejected_rewards.mean()


def batch_logprobs(model: gpt2.GPTModel, batch: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) response log-probabilities of `model` for one batch, each (b,)."""
    return tuple(compute_logprobs(model(batch[name]), batch[name], batch[f"{name}_mask"])
                 for name in ("chosen", "rejected"))


def compute_dpo_loss_batch(batch: dict[str, torch.Tensor], policy_model: gpt2.GPTModel,
                           reference_model: gpt2.GPTModel, beta: float = 0.1
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, chosen reward, rejected reward, share of pairs ranked right) of one batch; the
    frozen reference runs in inference mode, so it keeps no graph and no gradients."""
    with torch.inference_mode():
        reference = batch_logprobs(reference_model, batch)
    policy = batch_logprobs(policy_model, batch)
    loss, chosen, rejected = compute_dpo_loss(*policy, *(r.clone() for r in reference), beta)
    with torch.no_grad():
        right = ((policy[0] - reference[0]) > (policy[1] - reference[1])).float().mean()
    return loss, chosen, rejected, right


@torch.no_grad()
def evaluate_dpo_loader(loader: DataLoader, policy_model: gpt2.GPTModel,
                        reference_model: gpt2.GPTModel, beta: float = 0.1,
                        num_batches: int | None = None) -> dict[str, float]:
    """Means over the first `num_batches` batches (all by default), dropout off: loss,
    chosen and rejected reward, margin (chosen minus rejected) and accuracy (the share of
    pairs whose chosen response gains more than the rejected one)."""
    policy_model.eval()
    totals, n = torch.zeros(4), 0
    for i, batch in enumerate(loader):
        if i == num_batches:
            break
        totals += torch.stack(compute_dpo_loss_batch(batch, policy_model, reference_model, beta))
        n += 1
    loss, chosen, rejected, accuracy = (totals / n).tolist()
    return {"loss": loss, "chosen_reward": chosen, "rejected_reward": rejected,
            "margin": chosen - rejected, "accuracy": accuracy}


def train_model_dpo_simple(policy_model: gpt2.GPTModel, reference_model: gpt2.GPTModel,
                           train_loader: DataLoader, val_loader: DataLoader,
                           optimizer: torch.optim.Optimizer, num_epochs: int, beta: float,
                           eval_freq: int, eval_iter: int, progress: bool = True
                           ) -> dict[str, list[float]]:
    """DPO training; every `eval_freq` steps record train and validation loss, reward margin
    and accuracy over `eval_iter` batches. Returns the records, lists keyed by name."""
    history = {key: [] for key in ("step", "train_loss", "val_loss", "train_margin",
                                   "val_margin", "train_accuracy", "val_accuracy")}
    bar = tqdm(total=num_epochs * len(train_loader), desc="DPO", unit="step",
               disable=not progress)
    step = -1
    for _ in range(num_epochs):
        for batch in train_loader:
            policy_model.train()
            optimizer.zero_grad()
            loss = compute_dpo_loss_batch(batch, policy_model, reference_model, beta)[0]
            loss.backward()
            optimizer.step()
            step += 1
            bar.update()
            if step % eval_freq == 0:
                scores = {split: evaluate_dpo_loader(loader, policy_model, reference_model, beta,
                                                     eval_iter)
                          for split, loader in (("train", train_loader), ("val", val_loader))}
                history["step"].append(step)
                for split, s in scores.items():
                    for key in ("loss", "margin", "accuracy"):
                        history[f"{split}_{key}"].append(s[key])
                bar.write(f"step {step}: loss {scores['train']['loss']:.3f} / "
                          f"{scores['val']['loss']:.3f}, margin {scores['train']['margin']:.3f} / "
                          f"{scores['val']['margin']:.3f} (train / validation)")
    bar.close()
    return history
