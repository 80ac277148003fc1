"""Tokenise a corpus once into uint16 shards on disk, for pretrain.py to read memory-mapped.

A corpus is either local text (a file, a folder of .txt files, or a glob; each file is one
document) or a Hub data set (`fineweb-edu[:config]`, `tinystories`, or a local folder of
parquet/json files laid out like one), streamed document by document. Every document is
preceded by GPT-2's end-of-text token, so the model learns where one text stops and the next
begins. GPT-2's vocabulary (50,257) fits in 16 bits: a token costs two bytes on disk.

Layout, under `tokens_dir/<name>/`: `train_NNNNNN.bin` and `val_NNNNNN.bin` shards (raw
uint16, `np.memmap`-able) and `index.json` listing them with their token counts. A shard only
ever appears under its final name once complete (written as `.part`, then renamed), and the
index is rewritten the same way after each one, so a cut run leaves nothing half-written.

Local text is read whole (two bytes of memory per token) and its LAST `val_fraction` of tokens
is the validation split. A Hub data set is too big for that: it is cut into shards of
`shard_tokens` tokens as it streams, several worker processes tokenise, and a cut run resumes at
the next unwritten shard. Its own validation split, where it has one (TinyStories does), is the
validation split; otherwise (FineWeb-Edu) the first shard of its training split is.
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import json
import multiprocessing
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

import gpt2
import gpt_download

EOT_ID = 50256  # <|endoftext|>
TOKEN_DTYPE = np.uint16
INDEX_NAME = "index.json"
TOKENS_DIR = gpt_download.DATA_DIR / "tokens"
DEFAULT_SOURCE = "tinyshakespeare"
DEFAULT_SHARD_TOKENS = 100_000_000
# Short names for the Hub data sets GPT-2 reproductions train on: repository, default config,
# and the name of the data set's own validation split (None: it has none).
HUB_DATASETS = {
    "fineweb-edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT", None),
    "tinystories": ("roneneldan/TinyStories", None, "validation"),
}
VALIDATION_SPLITS = ("validation", "valid", "val")  # names a local Hub-layout folder may use
HUB_FILE_TYPES = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}


class CorpusError(ValueError):
    """The corpus cannot be tokenised as asked; the message says what to change."""

# ---------------------------------------------------------------------------------------------
# Shards and the index
# ---------------------------------------------------------------------------------------------


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` holds either its old contents or all of `data`."""
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(data)
    os.replace(partial, path)


def write_shard(folder: Path, split: str, number: int, tokens: np.ndarray) -> dict:
    """Write one shard; returns its index entry."""
    name = f"{split}_{number:06d}.bin"
    write_atomically(folder / name, tokens.astype(TOKEN_DTYPE, copy=False).tobytes())
    return {"file": name, "tokens": int(len(tokens))}


def write_index(folder: Path, index: dict) -> None:
    write_atomically(folder / INDEX_NAME, json.dumps(index, indent=1).encode())


def read_index(folder: Path) -> dict | None:
    path = Path(folder) / INDEX_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def load_split(folder: str | Path, split: str) -> list[np.memmap]:
    """The shards of one split ("train" or "val"), memory-mapped read-only, in order."""
    folder = Path(folder)
    index = read_index(folder)
    if index is None or not index.get("complete"):
        raise CorpusError(f"{folder} holds no complete tokenised corpus; run prepare_tokens first")
    return [np.memmap(folder / shard["file"], dtype=TOKEN_DTYPE, mode="r")
            for shard in index[split]]

# ---------------------------------------------------------------------------------------------
# Which corpus
# ---------------------------------------------------------------------------------------------


def parse_hub_name(source: str) -> tuple[str, str | None, str | None] | None:
    """("repo", config, validation split) for `fineweb-edu`, `fineweb-edu:sample-100BT` or
    `tinystories`."""
    name, _, config = source.partition(":")
    if name not in HUB_DATASETS:
        return None
    repo, default_config, validation = HUB_DATASETS[name]
    return repo, config or default_config, validation


def split_of(path: Path) -> str:
    """The split a file of a Hub-layout folder belongs to, from its name (validation-0000.parquet,
    val.jsonl) or its folder's (validation/part0.parquet): "val" or "train"."""
    names = [path.stem.split("-")[0].split("_")[0].lower(), path.parent.name.lower()]
    return "val" if any(name in VALIDATION_SPLITS for name in names) else "train"


def hub_layout_files(path: Path) -> list[Path]:
    """The parquet/json files of a local copy of a Hub data set (none for a text folder)."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.rglob("*") if p.suffix in HUB_FILE_TYPES and p.is_file())


def text_files(source: str) -> list[Path]:
    """The files of a local text corpus: one file, every .txt under a folder, or a glob."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise CorpusError(f"{path} holds no .txt files (and no parquet/json files either)")
        return files
    files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    if not files:
        raise CorpusError(f"no file, folder or glob match for {source!r}; give the path of a "
                          f"text corpus or one of: {', '.join(HUB_DATASETS)}")
    return files


def corpus_name(source: str) -> str:
    """The folder name under tokens_dir: readable, and unique per source."""
    if source == DEFAULT_SOURCE or parse_hub_name(source):
        return source.replace(":", "-")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(source).stem or "corpus").strip("-")
    digest = hashlib.sha1(str(Path(source).resolve()).encode()).hexdigest()[:8]
    return f"{stem}-{digest}"


def prepare_tokens(source: str = DEFAULT_SOURCE, tokens_dir: str | Path = TOKENS_DIR,
                   val_fraction: float = 0.1, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                   workers: int | None = None) -> Path:
    """Tokenise `source` into shards (once: a finished corpus is reused) and return its folder.

    `source` is "tinyshakespeare" (the course's default, fetched through gpt_download), a
    text file, folder or glob, a Hub name, or a folder in the Hub's parquet/json layout.
    """
    folder = Path(tokens_dir) / corpus_name(source)
    hub = parse_hub_name(source)
    if hub is not None:
        repo, config, validation = hub
        val_documents = hub_documents(repo, config, validation) if validation else None
        return prepare_stream(hub_documents(repo, config), source, folder, shard_tokens, workers,
                              val_documents)
    if files := hub_layout_files(Path(source)):
        val_files = [p for p in files if split_of(p) == "val"]
        train_files = [p for p in files if split_of(p) == "train"]
        return prepare_stream(local_hub_documents(train_files), source, folder, shard_tokens,
                              workers, local_hub_documents(val_files) if val_files else None)
    if source == DEFAULT_SOURCE:
        files = [gpt_download.fetch_data("tinyshakespeare.txt")]
    else:
        files = text_files(source)
    return prepare_text(files, source, folder, val_fraction, shard_tokens)

# ---------------------------------------------------------------------------------------------
# Local text: read whole, last val_fraction of tokens for validation
# ---------------------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """One document; a clear error for text that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"{path} is not UTF-8 text (byte {err.start} cannot be decoded); "
                          "convert it first, e.g. iconv -f latin1 -t utf-8") from None


def text_fingerprint(files: list[Path]) -> list[list]:
    """Name, size and modification time of each file: an edited corpus is tokenised again."""
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def tokenize_files(files: list[Path]) -> np.ndarray:
    """All files as one token array, an end-of-text token before each."""
    tokenizer = gpt2.get_tokenizer()
    pieces = []
    with tqdm(total=sum(p.stat().st_size for p in files), unit="B", unit_scale=True,
              desc="tokenising", leave=False) as bar:
        for path in files:
            pieces.append(np.array([EOT_ID] + tokenizer.encode_ordinary(read_text(path)),
                                   dtype=TOKEN_DTYPE))
            bar.update(path.stat().st_size)
    tokens = np.concatenate(pieces)
    if len(tokens) == len(files):  # nothing but the end-of-text tokens we added
        raise CorpusError(f"the corpus {', '.join(map(str, files[:3]))} holds no text")
    return tokens


def prepare_text(files: list[Path], source: str, folder: Path, val_fraction: float,
                 shard_tokens: int) -> Path:
    settings = {"source": source, "files": text_fingerprint(files),
                "val_fraction": val_fraction, "shard_tokens": shard_tokens}
    index = read_index(folder)
    if index and index.get("complete") and index["settings"] == settings:
        return folder
    tokens = tokenize_files(files)
    cut = len(tokens) - int(round(len(tokens) * val_fraction))
    folder.mkdir(parents=True, exist_ok=True)
    index = {"settings": settings, "documents": len(files), "complete": True,
             "train": write_split(folder, "train", tokens[:cut], shard_tokens),
             "val": write_split(folder, "val", tokens[cut:], shard_tokens)}
    write_index(folder, index)
    return folder


def write_split(folder: Path, split: str, tokens: np.ndarray, shard_tokens: int) -> list[dict]:
    return [write_shard(folder, split, i, tokens[start:start + shard_tokens])
            for i, start in enumerate(range(0, len(tokens), shard_tokens))]

# ---------------------------------------------------------------------------------------------
# Hub data sets: streamed, fixed-size shards, the first one for validation, resumable
# ---------------------------------------------------------------------------------------------


def hub_documents(repo: str, config: str | None, split: str = "train") -> Iterator[str]:
    """The "text" of every document of one split of a Hub data set, streamed (nothing is
    downloaded first)."""
    datasets = _import_datasets()
    try:
        stream = datasets.load_dataset(repo, name=config, split=split, streaming=True)
    except Exception as err:  # the library raises many kinds; all mean "cannot read it"
        raise CorpusError(f"cannot open {repo}{':' + config if config else ''} on the Hugging "
                          f"Face Hub ({type(err).__name__}: {err}). Check the name and your "
                          "network, or download it and give the local folder instead") from None
    return (row["text"] for row in stream)


def local_hub_documents(files: list[Path]) -> Iterator[str]:
    """The "text" of every document in some files of a local copy of a Hub data set."""
    if not files:
        raise CorpusError("a Hub-layout folder needs training files besides its validation ones")
    datasets = _import_datasets()
    kinds = {HUB_FILE_TYPES[p.suffix] for p in files}
    if len(kinds) > 1:
        raise CorpusError(f"{files[0].parent} mixes parquet and json files; keep one kind")
    stream = datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in files],
                                   split="train", streaming=True)
    return _texts(stream, files[0].parent)


def _texts(stream: Iterable[dict], where: Path) -> Iterator[str]:
    try:
        for row in stream:
            yield row["text"]
    except KeyError:
        raise CorpusError(f"the rows under {where} have no 'text' column") from None
    except Exception as err:  # pyarrow's and json's errors for a malformed file
        raise CorpusError(f"cannot read the data set under {where}: "
                          f"{type(err).__name__}: {err}") from None


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise CorpusError("Hub data sets need the `datasets` library: pip install datasets") from None
    datasets.logging.set_verbosity_error()
    return datasets


def tokenize_document(text: str) -> np.ndarray:
    """End-of-text, then the document's tokens (special-token text in it is plain text)."""
    return np.array([EOT_ID] + gpt2.get_tokenizer().encode_ordinary(text), dtype=TOKEN_DTYPE)


def prepare_stream(documents: Iterable[str], source: str, folder: Path, shard_tokens: int,
                   workers: int | None = None, val_documents: Iterable[str] | None = None
                   ) -> Path:
    """Cut a stream of documents into shards of `shard_tokens` tokens. `val_documents`, the
    data set's own validation split, become the validation shards; without them the first
    shard of `documents` is validation.

    The index records, after each shard, where the stream stands (the next document and how
    many of its tokens are already in shards), so a cut run skips what is written and
    continues with the next shard. A document that does not fit in a shard continues in the
    next one; the last shard holds what is left.
    """
    settings = {"source": source, "shard_tokens": shard_tokens,
                "validation_split": val_documents is not None}
    index = read_index(folder) or {"settings": settings, "complete": False, "train": [],
                                   "val": [], "next_document": 0, "next_offset": 0}
    if index["settings"] != settings:
        raise CorpusError(f"{folder} was tokenised with {index['settings']}; use the same "
                          "--shard-tokens, or delete the folder to start again")
    if index["complete"]:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    workers = workers or max(1, (os.cpu_count() or 1) - 1)
    with multiprocessing.Pool(workers) as pool:
        if val_documents is not None and not index.get("val_complete"):
            index["val"] = []  # a validation split cut short is tokenised again, whole
            _shard_stream(pool, val_documents, folder, index, shard_tokens, "val", resume=False)
            index["val_complete"] = True
            write_index(folder, index)
        _shard_stream(pool, documents, folder, index, shard_tokens,
                      "train" if val_documents is not None else None, resume=True)
    if not index["val"] or (val_documents is not None and not index["train"]):
        raise CorpusError(f"{source} holds no documents" if not index["train"] else
                          f"{source}'s validation split holds no documents")
    index["complete"] = True
    write_index(folder, index)
    return folder


def _shard_stream(pool, documents: Iterable[str], folder: Path, index: dict, shard_tokens: int,
                  split: str | None, resume: bool) -> None:
    """Tokenise `documents` into shards of `split` ("val" or "train"; None: the first shard
    "val", the rest "train"), continuing where the index says when `resume`."""
    buffer = np.empty(shard_tokens, dtype=TOKEN_DTYPE)
    filled, document, skip = 0, 0, 0
    if resume:
        document, skip = index["next_document"], index["next_offset"]
    with tqdm(desc=f"tokenising {split or ''}".strip(), unit=" docs", initial=document) as bar:
        for tokens in pool.imap(tokenize_document, itertools.islice(documents, document, None),
                                chunksize=16):
            start, skip = skip, 0
            while start < len(tokens):
                take = min(shard_tokens - filled, len(tokens) - start)
                buffer[filled:filled + take] = tokens[start:start + take]
                filled, start = filled + take, start + take
                if filled == shard_tokens:
                    position = (document + 1, 0) if start == len(tokens) else (document, start)
                    _add_shard(folder, index, split, buffer, position if resume else None)
                    filled = 0
            document += 1
            bar.update()
    if filled:
        _add_shard(folder, index, split, buffer[:filled], (document, 0) if resume else None)


def _add_shard(folder: Path, index: dict, split: str | None, tokens: np.ndarray,
               position: tuple[int, int] | None) -> None:
    """Write the next shard of `split` (None: "val" for the very first shard, then "train"),
    then record in the index where a resumed stream continues after it, `position`: the next
    document, and how many of its tokens are already written."""
    split = split or ("val" if not index["val"] else "train")
    number = len(index["val"]) + len(index["train"])
    index[split].append(write_shard(folder, split, number, tokens))
    if position is not None:
        index["next_document"], index["next_offset"] = position
    write_index(folder, index)
