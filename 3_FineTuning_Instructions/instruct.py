"""Chapter 7: fine-tuning GPT-2 to follow instructions, and scoring its answers.

What 07_instruction_finetuning.ipynb builds, under the book's names: the Alpaca prompt format
(`format_input`, shared with `python gpt2.py --instruction`), a chat format, the data split,
`InstructionDataset` and `custom_collate_fn`, answers and judge-free scores (ROUGE-L, exact
match, response loss). Training is `gpt2.train_model_simple`, as in the book.
"""
from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import pandas as pd
import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import gpt2
import gpt_download
from gpt2 import RESPONSE_HEADER, format_input

IM_START, IM_END = "<|im_start|>", "<|im_end|>"  # the chat format's turn markers
IGNORE_INDEX = -100  # F.cross_entropy leaves out every target with this value
BOOK_BASE_MODEL = "openai-355M"  # the model the book fine-tunes in chapter 7


def _field(entry: dict, key: str) -> str:
    """entry[key], or an error naming what is missing, since a KeyError alone says too little."""
    if key not in entry:
        raise ValueError(f"an instruction entry has no {key!r} (its keys: "
                         f"{', '.join(map(repr, entry)) or 'none'}); every entry needs "
                         "'instruction' and 'output', and may have an 'input'")
    return entry[key]


def format_response(entry: dict) -> str:
    """The Alpaca-style answer the model learns to write after `format_input`."""
    return f"\n\n{RESPONSE_HEADER}\n{_field(entry, 'output')}"


def format_chat_input(entry: dict) -> str:
    """The same request as one user turn, then the opening of the assistant's turn."""
    request = _field(entry, "instruction")
    if entry.get("input"):
        request += f"\n\n{entry['input']}"
    return f"{IM_START}user\n{request}{IM_END}\n{IM_START}assistant\n"


def format_chat_response(entry: dict) -> str:
    """The assistant's answer, closed by <|im_end|>, the token generation stops at."""
    return f"{_field(entry, 'output')}{IM_END}"


@functools.lru_cache(maxsize=None)
def chat_tokenizer() -> tiktoken.Encoding:
    """GPT-2's tokenizer plus <|im_start|> (id 50257) and <|im_end|> (50258).

    Every GPT-2 id stays what it was, so a model keeps all it learned; only the two new rows
    of its embedding and output layers are new (`resize_token_embeddings`).
    """
    base = gpt2.get_tokenizer()
    specials = {**base._special_tokens, IM_START: base.n_vocab, IM_END: base.n_vocab + 1}
    return tiktoken.Encoding(name="gpt2-chat", pat_str=base._pat_str,
                             mergeable_ranks=base._mergeable_ranks, special_tokens=specials)


class PromptFormat(NamedTuple):
    prompt: Callable[[dict], str]    # the request, up to where the model starts answering
    response: Callable[[dict], str]  # the reference answer as the model should write it
    stop: str                        # the special token that ends an answer
    tokenizer: Callable[[], tiktoken.Encoding]


PROMPT_FORMATS = {
    "alpaca": PromptFormat(format_input, format_response, gpt2.ENDOFTEXT, gpt2.get_tokenizer),
    "chat": PromptFormat(format_chat_input, format_chat_response, IM_END, chat_tokenizer),
}


def get_prompt_format(name: str) -> PromptFormat:
    if name not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {name!r}; use {' or '.join(PROMPT_FORMATS)}")
    return PROMPT_FORMATS[name]


def encode_entry(entry: dict, tokenizer: tiktoken.Encoding, prompt_format: str = "alpaca"
                 ) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids), encoded apart: the prompt as it is when the model answers."""
    fmt = get_prompt_format(prompt_format)
    return (tokenizer.encode(fmt.prompt(entry), allowed_special="all"),
            tokenizer.encode(fmt.response(entry), allowed_special="all"))


def split_instruction_data(data: list, train_frac: float = 0.85, test_frac: float = 0.10
                           ) -> tuple[list, list, list]:
    """(train, test, validation) in the book's proportions, 85/10/5, in the file's order."""
    train_end = int(len(data) * train_frac)
    test_end = train_end + int(len(data) * test_frac)
    return data[:train_end], data[train_end:test_end], data[test_end:]


def filter_instruction_data(data: list[dict], tokenizer: tiktoken.Encoding, max_length: int,
                            prompt_format: str = "alpaca") -> tuple[list[dict], list[str]]:
    """The entries a model of context `max_length` can learn from, and why each other one was
    skipped: a key missing, or prompt plus response longer than the context (which truncation
    would cut off before the answer ends)."""
    kept, skipped = [], []
    for i, entry in enumerate(data):
        try:
            prompt, response = encode_entry(entry, tokenizer, prompt_format)
        except ValueError as err:
            skipped.append(f"entry {i}: {err}")
            continue
        if len(prompt) + len(response) > max_length:
            skipped.append(f"entry {i}: prompt and response take {len(prompt) + len(response)} "
                           f"tokens, more than the model's context of {max_length}")
        else:
            kept.append(entry)
    return kept, skipped


class InstructionDataset(Dataset):
    """Instruction entries, each tokenized once as prompt + response.

    Items are lists of token ids for `custom_collate_fn`; with `with_prompt_lengths` they are
    (prompt length, token ids) pairs for `custom_collate_fn_masked`.
    """

    def __init__(self, data: list[dict], tokenizer: tiktoken.Encoding,
                 prompt_format: str = "alpaca", with_prompt_lengths: bool = False):
        self.encoded_texts, self.prompt_lengths = [], []
        for entry in data:
            prompt, response = encode_entry(entry, tokenizer, prompt_format)
            self.encoded_texts.append(prompt + response)
            self.prompt_lengths.append(len(prompt))
        self.with_prompt_lengths = with_prompt_lengths

    def __len__(self) -> int:
        return len(self.encoded_texts)

    def __getitem__(self, idx: int) -> list[int] | tuple[int, list[int]]:
        if self.with_prompt_lengths:
            return self.prompt_lengths[idx], self.encoded_texts[idx]
        return self.encoded_texts[idx]


def custom_collate_fn(batch: list[list[int]], pad_token_id: int = 50256,
                      ignore_index: int = IGNORE_INDEX, allowed_max_length: int | None = None,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id lists to one length and return (inputs, targets), targets shifted by one.

    Each row is padded with end-of-text tokens. The first of them stays a target, so the model
    learns to stop; the others become `ignore_index`, so padding adds nothing to the loss.
    `allowed_max_length` truncates longer rows.
    """
    width = max(len(ids) for ids in batch) + 1  # room for at least one end-of-text target
    inputs, targets = [], []
    for ids in batch:
        padded = torch.tensor(ids + [pad_token_id] * (width - len(ids)))
        x, y = padded[:-1], padded[1:].clone()
        y[len(ids):] = ignore_index  # y[len(ids) - 1] is the first end-of-text: kept
        inputs.append(x[:allowed_max_length])
        targets.append(y[:allowed_max_length])
    return torch.stack(inputs).to(device), torch.stack(targets).to(device)


def custom_collate_fn_masked(batch: list[tuple[int, list[int]]], pad_token_id: int = 50256,
                             ignore_index: int = IGNORE_INDEX,
                             allowed_max_length: int | None = None,
                             device: torch.device | str = "cpu"
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """`custom_collate_fn` for (prompt length, token ids) pairs, the prompt's targets masked too.

    The loss then counts only the response: the model is not asked to predict the instruction
    it is given, only to answer it.
    """
    inputs, targets = custom_collate_fn([ids for _, ids in batch], pad_token_id, ignore_index,
                                        allowed_max_length)
    for row, (prompt_length, _) in enumerate(batch):
        targets[row, :prompt_length - 1] = ignore_index  # target j is token j + 1
    return inputs.to(device), targets.to(device)


def create_instruction_dataloader(data: list[dict], tokenizer: tiktoken.Encoding,
                                  batch_size: int = 8, shuffle: bool = True,
                                  drop_last: bool = True, prompt_format: str = "alpaca",
                                  mask_instructions: bool = False,
                                  allowed_max_length: int | None = None,
                                  device: torch.device | str = "cpu",
                                  num_workers: int = 0) -> DataLoader:
    """A DataLoader of padded (inputs, targets) batches of instruction entries."""
    dataset = InstructionDataset(data, tokenizer, prompt_format,
                                 with_prompt_lengths=mask_instructions)
    collate = custom_collate_fn_masked if mask_instructions else custom_collate_fn
    collate = functools.partial(collate, allowed_max_length=allowed_max_length, device=device)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate, shuffle=shuffle,
                      drop_last=drop_last, num_workers=num_workers)


def extract_response(generated_text: str, prompt: str) -> str:
    """The answer in `generated_text` (prompt, then the model's text): up to the first end token,
    without the "### Response:" header, stripped."""
    text = generated_text[len(prompt):]
    for stop in (gpt2.ENDOFTEXT, IM_END):
        text = text.split(stop, 1)[0]
    return text.replace(RESPONSE_HEADER, "", 1).strip()


@torch.inference_mode()
def generate_response(model: gpt2.GPTModel, entry: dict, tokenizer: tiktoken.Encoding,
                      max_new_tokens: int = 256, prompt_format: str = "alpaca") -> str:
    """The model's greedy answer to one entry, stopping at the format's end token."""
    fmt = get_prompt_format(prompt_format)
    prompt = fmt.prompt(entry)
    idx = torch.tensor([tokenizer.encode(prompt, allowed_special="all")],
                       device=model.tok_emb.weight.device)
    context = model.cfg["context_length"]
    room = min(max_new_tokens, context - idx.shape[1])
    if room < 1:
        raise ValueError(f"the prompt takes {idx.shape[1]} tokens, the whole context of "
                         f"{context}: the model has no room to answer; shorten the instruction")
    out = gpt2.generate(model, idx, room, context, eos_id=tokenizer.encode_single_token(fmt.stop))
    return extract_response(prompt + tokenizer.decode(out[0, idx.shape[1]:].tolist()), prompt)


def generate_responses(model: gpt2.GPTModel, data: list[dict], tokenizer: tiktoken.Encoding,
                       max_new_tokens: int = 256, prompt_format: str = "alpaca") -> list[str]:
    """`generate_response` for every entry, with a progress bar."""
    model.eval()
    return [generate_response(model, entry, tokenizer, max_new_tokens, prompt_format)
            for entry in tqdm(data, desc="responses", unit="entry")]


@torch.no_grad()
def response_losses(model: gpt2.GPTModel, data: list[dict], tokenizer: tiktoken.Encoding,
                    device: torch.device | str = "cpu", prompt_format: str = "alpaca",
                    batch_size: int = 8) -> list[float]:
    """Each entry's mean cross-entropy on its reference response (and the token that ends it).

    A judge-free score that needs no generation: how likely the model finds the right answer.
    """
    loader = create_instruction_dataloader(data, tokenizer, batch_size, shuffle=False,
                                           drop_last=False, prompt_format=prompt_format,
                                           mask_instructions=True, device=device)
    model.eval()
    losses = []
    for inputs, targets in loader:
        logits = model(inputs)
        per_token = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                    ignore_index=IGNORE_INDEX, reduction="none")
        counted = targets != IGNORE_INDEX
        losses += ((per_token.view_as(targets) * counted).sum(1) / counted.sum(1)).tolist()
    return losses


def _words(text: str) -> list[str]:
    """Lower-cased words and numbers, punctuation dropped: what the text scores compare."""
    return re.findall(r"\w+", text.lower())


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, by dynamic programming one row at a time."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of two texts: from the longest common subsequence of their words, the share
    of the candidate's words it covers (precision) and of the reference's (recall)."""
    cand, ref = _words(candidate), _words(reference)
    if not cand or not ref:
        return float(cand == ref)
    lcs = _lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(candidate: str, reference: str) -> bool:
    """Whether both texts have the same words in the same order (case and punctuation aside)."""
    return _words(candidate) == _words(reference)


def evaluation_table(data: list[dict], responses: list[str], losses: list[float]):
    """A DataFrame, one row per entry: instruction, reference, response, ROUGE-L, exact, loss."""
    references = [entry["output"] for entry in data]
    return pd.DataFrame({
        "instruction": [entry["instruction"] for entry in data],
        "reference": references,
        "response": responses,
        "rouge_l": [rouge_l(r, ref) for r, ref in zip(responses, references)],
        "exact_match": [exact_match(r, ref) for r, ref in zip(responses, references)],
        "response_loss": losses,
    })


def resize_token_embeddings(model: gpt2.GPTModel, new_vocab: int) -> gpt2.GPTModel:
    """Grow the embedding and output layers to `new_vocab` tokens, in place.

    Old rows are kept, so old tokens give the same logits as before; each new row starts as the
    mean of the old ones: a typical token, rather than noise the first steps would have to undo.
    A tied output head stays tied.
    """
    old_vocab = model.tok_emb.weight.shape[0]
    if new_vocab < old_vocab:
        raise ValueError(f"the model has {old_vocab} tokens; resize_token_embeddings only "
                         f"grows it, got {new_vocab}")
    tied = model.out_head.weight is model.tok_emb.weight
    model.tok_emb.weight = nn.Parameter(_grow_rows(model.tok_emb.weight, new_vocab))
    model.tok_emb.num_embeddings = new_vocab
    model.out_head.weight = model.tok_emb.weight if tied else \
        nn.Parameter(_grow_rows(model.out_head.weight, new_vocab))
    model.out_head.out_features = new_vocab
    model.cfg["vocab_size"] = new_vocab
    return model


def _grow_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    mean = weight.detach().mean(dim=0, keepdim=True)
    return torch.cat([weight.detach(), mean.expand(rows - len(weight), -1)]).clone()


def load_instruction_data(tokenizer: tiktoken.Encoding, context_length: int,
                          prompt_format: str = "alpaca") -> tuple[list, list, list]:
    """The book's instructions as (train, test, validation), less those too long (on stderr)."""
    with open(gpt_download.fetch_data("instruction-data.json"), encoding="utf-8") as f:
        data = json.load(f)
    data, skipped = filter_instruction_data(data, tokenizer, context_length, prompt_format)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    return split_instruction_data(data)


def run_dir(init: str, prompt_format: str = "alpaca") -> Path:
    """finetune_instructions.py's output folder for a run from `init`: runs/<name>-<format>."""
    name = Path(init).parent.name if init.endswith(".pth") else init
    return Path(__file__).resolve().parent / "runs" / f"{name}-{prompt_format}"
