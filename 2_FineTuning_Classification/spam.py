"""Chapter 6: fine-tuning GPT-2 to classify SMS messages as spam or not.

What 06_classification.ipynb builds, under the book's names: the SMS Spam Collection (download,
balance, split), `SpamDataset`, the classification head and last-token loss, accuracy and other
metrics, `train_classifier_simple`, `classify_review`, saving and loading a classifier. The model,
its base weights and LoRA come from gpt2.py; finetune_classifier.py and classify.py are the
command-line fronts.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import gpt2
import gpt_download

SPAM_ZIP = "sms_spam_collection.zip"  # a key of gpt_download.DATA_FILES
SPAM_FILE = "SMSSpamCollection"       # the zip's one data file: "label<TAB>text" per line
SPAM_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
SPAM_DIR = gpt_download.DATA_DIR / "sms_spam_collection"
CLASS_NAMES = ("not spam", "spam")  # class id -> name; the data set says "ham" for not spam
PAD_TOKEN_ID = 50256                # <|endoftext|>, the padding of the book's SpamDataset
_CLASSIFIER_KIND = "gpt2-classifier"  # marks the files save_classifier writes

def download_and_unzip_spam_data(data_dir: str | Path = SPAM_DIR) -> Path:
    """Fetch the SMS Spam Collection (from GPT2_MIRROR if set), extract it, verify it.

    The zip's bytes differ between repacks, so it is the extracted file whose SHA-256 is pinned.
    Returns the path of SMSSpamCollection; a verified copy costs no download.
    """
    data_dir = Path(data_dir)
    path = data_dir / SPAM_FILE
    if path.is_file() and gpt_download.sha256_of(path) == SPAM_SHA256:
        return path
    gpt_download.safe_extract(gpt_download.fetch_data(SPAM_ZIP, data_dir), data_dir)
    if not path.is_file():
        raise ValueError(f"the zip in {data_dir} holds no {SPAM_FILE}; delete "
                         f"{data_dir / SPAM_ZIP} "
                         "and run again")
    if (actual := gpt_download.sha256_of(path)) != SPAM_SHA256:
        raise ValueError(f"{path} has SHA-256 {actual}, not the expected {SPAM_SHA256}; delete "
                         f"{data_dir} and run again to download it afresh")
    return path


def load_spam_collection(path: str | Path):
    """The tab-separated file as a DataFrame with columns Label ("ham"/"spam") and Text.

    quoting=csv.QUOTE_NONE: the messages are not quoted, and pandas' default would take a
    double quote inside one as the start of a quoted field running over the next lines.
    """
    df = pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"],
                     quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    broken = df.index[(df["Text"] == "") | ~df["Label"].isin(["ham", "spam"])]
    if len(broken):
        raise ValueError(f"{path}, line {broken[0] + 1}: expected 'ham' or 'spam', a tab, then "
                         f"the message; found {df.iloc[broken[0]].tolist()}")
    return df


def create_balanced_dataset(df, seed: int = 123):
    """As many "ham" messages (a random sample) as there are "spam" ones."""
    spam = df[df["Label"] == "spam"]
    ham = df[df["Label"] == "ham"].sample(len(spam), random_state=seed)
    return pd.concat([ham, spam])


def random_split(df, train_frac: float, validation_frac: float, seed: int = 123):
    """Shuffle the rows, then cut them into (train, validation, test) by these fractions."""
    df = df.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(df) * train_frac)
    validation_end = train_end + int(len(df) * validation_frac)
    return df[:train_end], df[train_end:validation_end], df[validation_end:]


def prepare_spam_splits(data_dir: str | Path = SPAM_DIR, seed: int = 123) -> dict[str, Path]:
    """Download, balance, label (ham 0, spam 1) and split 70/10/20 into train, validation and
    test CSV files in `data_dir`; returns {split name: path}."""
    data_dir = Path(data_dir)
    df = create_balanced_dataset(load_spam_collection(download_and_unzip_spam_data(data_dir)), seed)
    df["Label"] = df["Label"].map({"ham": 0, "spam": 1})
    splits = dict(zip(("train", "validation", "test"), random_split(df, 0.7, 0.1, seed)))
    paths = {name: data_dir / f"{name}.csv" for name in splits}
    for name, split in splits.items():
        split.to_csv(paths[name], index=False)
    return paths


class SpamDataset(Dataset):
    """Messages from a CSV (columns Text, Label) as equal-length token ids and a class label.

    Every message is cut or padded with `pad_token_id` to `max_length` tokens, by default the
    longest message in the file, so a batch is one tensor; the validation and test sets take
    the training set's length, which is the length the classifier learned at.
    """

    def __init__(self, csv_file: str | Path, tokenizer: tiktoken.Encoding,
                 max_length: int | None = None, pad_token_id: int = PAD_TOKEN_ID):
        self.data = pd.read_csv(csv_file, keep_default_na=False)
        missing = {"Text", "Label"} - set(self.data.columns)
        if missing:
            raise ValueError(f"{csv_file} has no column {', '.join(sorted(missing))}; a spam "
                             "data CSV needs Text and Label (see prepare_spam_splits)")
        encoded = [encode_message(text, tokenizer) for text in self.data["Text"]]
        self.max_length = max_length or max(len(ids) for ids in encoded)
        self.encoded_texts = [pad_ids(ids, self.max_length, pad_token_id) for ids in encoded]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = int(self.data.iloc[index]["Label"])
        return torch.tensor(self.encoded_texts[index]), torch.tensor(label)


def encode_message(text: str, tokenizer: tiktoken.Encoding) -> list[int]:
    """Token ids of a message; "<|endoftext|>" typed in a message stays plain text."""
    return tokenizer.encode(str(text), disallowed_special=())


def pad_ids(ids: list[int], length: int, pad_token_id: int = PAD_TOKEN_ID) -> list[int]:
    """`ids` cut or padded on the right to exactly `length` tokens."""
    return ids[:length] + [pad_token_id] * (length - len(ids))


def spam_dataloaders(paths: dict[str, Path], tokenizer: tiktoken.Encoding, max_length: int,
                     batch_size: int = 8, seed: int = 123) -> dict[str, DataLoader]:
    """Loaders for the train, validation and test CSVs, all padded to the training set's
    longest message (at most `max_length`, the model's context). Only training is shuffled,
    and its last partial batch is dropped: a tiny batch would give a noisy update."""
    train = SpamDataset(paths["train"], tokenizer)
    length = min(train.max_length, max_length)
    datasets = {name: SpamDataset(path, tokenizer, length) for name, path in paths.items()}
    generator = torch.Generator().manual_seed(seed)
    return {name: DataLoader(ds, batch_size=batch_size, shuffle=name == "train",
                             drop_last=name == "train", generator=generator)
            for name, ds in datasets.items()}


def add_classification_head(model: gpt2.GPTModel, num_classes: int = 2) -> gpt2.GPTModel:
    """Swap the vocabulary-sized output layer for a `num_classes`-way one (new, trainable)."""
    model.out_head = nn.Linear(model.cfg["emb_dim"], num_classes).to(model.tok_emb.weight.device)
    return model


def freeze_all_but_last_blocks(model: gpt2.GPTModel, n_blocks: int = 1) -> gpt2.GPTModel:
    """Train only the last `n_blocks` transformer blocks, the final norm and the head.

    The early layers hold general features of text that 1,045 messages could not improve
    and would mostly overfit; the layers near the output are the ones to adapt.
    """
    model.requires_grad_(False)
    trainable = [*model.trf_blocks[len(model.trf_blocks) - n_blocks:], model.final_norm,
                 model.out_head]
    for module in trainable:
        module.requires_grad_(True)
    return model


TRAINABLE_CHOICES = ("last-block", "all", "lora")


def prepare_classifier(model: gpt2.GPTModel, trainable: str = "last-block",
                       lora_rank: int = 16, lora_alpha: float = 16,
                       num_classes: int = 2) -> gpt2.GPTModel:
    """A language model made into a classifier: a new head, and what trains.

    "last-block" as in the book; "all" trains every weight; "lora" freezes every weight and
    adds low-rank adapters to every linear layer, the new head's included (appendix E).
    """
    if trainable not in TRAINABLE_CHOICES:
        raise ValueError(f"trainable must be one of {', '.join(TRAINABLE_CHOICES)}, "
                         f"not {trainable!r}")
    add_classification_head(model, num_classes)
    if trainable == "last-block":
        return freeze_all_but_last_blocks(model)
    model.requires_grad_(trainable == "all")
    if trainable == "lora":
        gpt2.replace_linear_with_lora(model, lora_rank, lora_alpha)  # only the adapters train
    return model


def count_trainable_parameters(model: nn.Module) -> int:
    """Parameters that the optimizer will update (requires_grad), a tied tensor once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def calc_loss_batch_classifier(input_batch: torch.Tensor, target_batch: torch.Tensor,
                               model: nn.Module, device: torch.device) -> torch.Tensor:
    """Cross-entropy of the class predicted from each message's last token.

    The book redefines `calc_loss_batch` for this in chapter 6; here the chapter-5 version
    keeps that name, so this one is named for what it is. Only the last token has attended to
    every token of the message (the mask hides later tokens from earlier ones), so its output
    is the one that can speak for the whole message.
    """
    logits = model(input_batch.to(device))[:, -1, :]
    return F.cross_entropy(logits, target_batch.to(device))


@torch.no_grad()
def predict_loader(data_loader: DataLoader, model: nn.Module, device: torch.device,
                   num_batches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted classes, true labels) over the first `num_batches` batches (all by default),
    with dropout off."""
    model.eval()
    predictions, labels = [], []
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i == num_batches:
            break
        predictions.append(model(input_batch.to(device))[:, -1, :].argmax(dim=-1).cpu())
        labels.append(target_batch)
    return torch.cat(predictions), torch.cat(labels)


def calc_accuracy_loader(data_loader: DataLoader, model: nn.Module, device: torch.device,
                         num_batches: int | None = None) -> float:
    """Share of messages classified right over `num_batches` batches (all by default)."""
    predictions, labels = predict_loader(data_loader, model, device, num_batches)
    return (predictions == labels).float().mean().item()


def classification_metrics(predictions: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy, and precision, recall and F1 of the positive class (spam), with the confusion
    matrix [[true negatives, false positives], [false negatives, true positives]].

    Accuracy alone hides which way a classifier errs: precision says how many messages flagged
    as spam were spam, recall how much of the spam was caught.
    """
    tp = int(((predictions == 1) & (labels == 1)).sum())
    fp = int(((predictions == 1) & (labels == 0)).sum())
    fn = int(((predictions == 0) & (labels == 1)).sum())
    tn = len(labels) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall,
            "f1": f1, "confusion_matrix": [[tn, fp], [fn, tp]]}


def train_classifier_simple(model: gpt2.GPTModel, train_loader: DataLoader,
                            val_loader: DataLoader, optimizer: torch.optim.Optimizer,
                            device: torch.device, num_epochs: int, eval_freq: int, eval_iter: int
                            ) -> tuple[list[float], list[float], list[float], list[float], int]:
    """Train on the last-token loss; every `eval_freq` steps record train/val loss, after every
    epoch train/val accuracy (over `eval_iter` batches each). A progress bar counts the steps.

    Returns (train_losses, val_losses, train_accs, val_accs, examples_seen).
    """
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    examples_seen, step = 0, -1
    bar = tqdm(total=num_epochs * len(train_loader), desc="fine-tuning", unit="step",
               mininterval=2)
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch_classifier(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            examples_seen += input_batch.shape[0]
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if step % eval_freq == 0:
                losses = gpt2.evaluate_model(model, train_loader, val_loader, device, eval_iter,
                                             calc_loss_batch_classifier)
                train_losses.append(losses[0])
                val_losses.append(losses[1])
                bar.write(f"Ep {epoch + 1} (Step {step:06d}): "
                          f"Train loss {losses[0]:.3f}, Val loss {losses[1]:.3f}")
        train_accs.append(calc_accuracy_loader(train_loader, model, device, eval_iter))
        val_accs.append(calc_accuracy_loader(val_loader, model, device, eval_iter))
        bar.write(f"Training accuracy: {train_accs[-1] * 100:.2f}% | "
                  f"Validation accuracy: {val_accs[-1] * 100:.2f}%")
    bar.close()
    return train_losses, val_losses, train_accs, val_accs, examples_seen


def plot_values(epochs_seen, examples_seen, train_values, val_values, label: str = "loss"):
    """Training and validation `label` (loss or accuracy) against epochs and examples seen."""
    return gpt2.plot_losses(epochs_seen, examples_seen, train_values, val_values, label,
                            seen_label="Examples seen")


@torch.no_grad()
def spam_probability(text: str, model: gpt2.GPTModel, tokenizer: tiktoken.Encoding,
                     device: torch.device | str, max_length: int,
                     pad_token_id: int = PAD_TOKEN_ID) -> float:
    """The classifier's probability that `text` is spam, padded as in training."""
    ids = encode_message(text, tokenizer)
    if not text.strip() or not ids:
        raise ValueError("the message is empty; give the text of an SMS to classify")
    length = min(max_length, model.cfg["context_length"])
    model.eval()
    logits = model(torch.tensor([pad_ids(ids, length, pad_token_id)], device=device))[:, -1, :]
    return torch.softmax(logits, dim=-1)[0, 1].item()


def classify_review(text: str, model: gpt2.GPTModel, tokenizer: tiktoken.Encoding,
                    device: torch.device | str, max_length: int,
                    pad_token_id: int = PAD_TOKEN_ID) -> str:
    """ "spam" or "not spam", as the fine-tuned classifier sees `text` (the book's name)."""
    probability = spam_probability(text, model, tokenizer, device, max_length, pad_token_id)
    return CLASS_NAMES[int(probability > 0.5)]


def save_classifier(path: str | Path, model: gpt2.GPTModel, max_length: int) -> None:
    """Save a fine-tuned classifier (LoRA merged in) with its config and input length."""
    gpt2.merge_lora(model)
    torch.save({"kind": _CLASSIFIER_KIND, "config": model.cfg, "max_length": max_length,
                "num_classes": model.out_head.out_features,
                "model_state_dict": model.state_dict()}, path)


def load_classifier(path: str | Path, device: torch.device | str = "cpu"
                    ) -> tuple[gpt2.GPTModel, int]:
    """A classifier saved by `save_classifier`: (model in eval mode, max_length)."""
    make = f"make one with python {Path(__file__).parent.name}/finetune_classifier.py"
    if not Path(path).is_file():
        raise FileNotFoundError(f"no classifier at {path}; {make}")
    state = gpt_download.read_checkpoint_file(path, device)
    if state.get("kind") != _CLASSIFIER_KIND:
        raise ValueError(f"{path} is {_describe_checkpoint(state)}, not a classifier saved by "
                         f"spam.save_classifier; {make}")
    model = add_classification_head(gpt2.GPTModel(state["config"]), state["num_classes"])
    try:
        model.load_state_dict(state["model_state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path} does not match the config saved in it "
                         f"({str(err).splitlines()[1].strip()[:160]})") from None
    return model.to(device).eval(), state["max_length"]


def _describe_checkpoint(state: dict) -> str:
    weights = state.get("model_state_dict", state)
    head = weights.get("out_head.weight")
    if head is None:
        return "no GPTModel checkpoint"
    if head.shape[0] > 2 ** 10:
        return f"a language model (its head predicts {head.shape[0]:,} tokens)"
    return f"a bare state dict of a {head.shape[0]}-class model with no config (as the book saves)"
