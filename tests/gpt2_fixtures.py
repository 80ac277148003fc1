"""Test fixtures shared by the tests and the benchmarks.

- `random_tf_variables`: GPT-2 weights with OpenAI's exact TensorFlow variable names and shapes.
- `nest_params`: the same arrays in the nested layout gpt_download returns (written
  independently of gpt_download, so tests of the loader are not tests of itself).
- `write_tf_checkpoint`: a real TF1-format checkpoint folder, the seven files OpenAI ships.
- `write_tiny_checkpoint`: a small untrained model saved by gpt2.save_checkpoint.
- `MirrorServer`: a loopback HTTP mirror (HOST/PATH layout) that can fail on purpose.
- `process_memory_mb`: a memory figure of this process from Linux's /proc.
"""
from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

BPE_HOST_PATH = "openaipublic.blob.core.windows.net/gpt-2/encodings/main"


def bpe_dir() -> Path:
    """A folder holding GPT-2's verified encoder.json and vocab.bpe (found or downloaded)."""
    import gpt_download
    return gpt_download.find_bpe_files(None)


def process_memory_mb(field: str) -> float:
    """One memory figure of this process from Linux's /proc/self/status, in MiB: VmRSS (now),
    VmHWM (peak) or RssFile (pages of mapped files held in memory).

    Not getrusage's ru_maxrss for the peak: that one survives exec, so a child started by a
    big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status (this needs Linux)")


def tiny_hparams(n_vocab: int = 50257, n_ctx: int = 64, n_embd: int = 32, n_head: int = 4,
                 n_layer: int = 2) -> dict:
    return {"n_vocab": n_vocab, "n_ctx": n_ctx, "n_embd": n_embd, "n_head": n_head,
            "n_layer": n_layer}


def hf_gpt2_config(hparams: dict, dropout: float = 0.0):
    """transformers' GPT2Config for OpenAI-style hparams: GPT-2's tanh GELU and epsilon, and
    special-token ids that exist in any vocabulary (HF checks them against its size)."""
    import transformers

    special = min(50256, hparams["n_vocab"] - 1)
    return transformers.GPT2Config(
        vocab_size=hparams["n_vocab"], n_positions=hparams["n_ctx"], n_embd=hparams["n_embd"],
        n_layer=hparams["n_layer"], n_head=hparams["n_head"], activation_function="gelu_new",
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, layer_norm_epsilon=1e-5,
        tie_word_embeddings=True, bos_token_id=special, eos_token_id=special,
        pad_token_id=special)


def random_tf_variables(hparams: dict, seed: int = 0, scale: float = 0.1) -> dict[str, np.ndarray]:
    """{TF variable name: float32 array} shaped exactly like OpenAI's GPT-2 checkpoint."""
    rng = np.random.default_rng(seed)
    d, d4 = hparams["n_embd"], 4 * hparams["n_embd"]

    def normal(*shape, mean=0.0):
        return (mean + scale * rng.standard_normal(shape)).astype(np.float32)

    variables = {"model/wte": normal(hparams["n_vocab"], d), "model/wpe": normal(hparams["n_ctx"], d),
                 "model/ln_f/g": normal(d, mean=1.0), "model/ln_f/b": normal(d)}
    for i in range(hparams["n_layer"]):
        h = f"model/h{i}"
        variables.update({
            f"{h}/ln_1/g": normal(d, mean=1.0), f"{h}/ln_1/b": normal(d),
            f"{h}/attn/c_attn/w": normal(1, d, 3 * d), f"{h}/attn/c_attn/b": normal(3 * d),
            f"{h}/attn/c_proj/w": normal(1, d, d), f"{h}/attn/c_proj/b": normal(d),
            f"{h}/ln_2/g": normal(d, mean=1.0), f"{h}/ln_2/b": normal(d),
            f"{h}/mlp/c_fc/w": normal(1, d, d4), f"{h}/mlp/c_fc/b": normal(d4),
            f"{h}/mlp/c_proj/w": normal(1, d4, d), f"{h}/mlp/c_proj/b": normal(d),
        })
    return variables


def nest_params(variables: dict[str, np.ndarray], n_layer: int) -> dict:
    """OpenAI's flat names -> the book's nested params: blocks[i]["attn"]["c_attn"]["w"], "g", ..."""
    params: dict = {"blocks": [{} for _ in range(n_layer)]}
    for name, array in variables.items():
        first, *rest = name.split("/")[1:]
        if first[0] == "h" and first[1:].isdigit():
            node = params["blocks"][int(first[1:])]
        else:  # wte, wpe and ln_f's g, b sit at the top level
            node = params
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1] if rest else first] = np.squeeze(array, axis=0) if array.ndim == 3 else array
    return params


def write_tiny_checkpoint(folder: Path, cfg: dict) -> Path:
    """A checkpoint of an untrained GPTModel(cfg), seeded, as gpt2.save_checkpoint writes it:
    what the command-line tests generate from."""
    import torch

    import gpt2

    torch.manual_seed(0)
    path = folder / "tiny.pth"
    gpt2.save_checkpoint(path, gpt2.GPTModel(cfg))
    return path


def write_tf_checkpoint(model_dir: Path, hparams: dict, variables: dict[str, np.ndarray]) -> Path:
    """Write OpenAI's seven files for a model into `model_dir` with TensorFlow's TF1 Saver."""
    import tensorflow as tf

    model_dir.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        for name, array in variables.items():
            tf.compat.v1.Variable(array, name=name)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(model_dir / "model.ckpt"))
    (model_dir / "hparams.json").write_text(json.dumps(hparams))
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(bpe_dir() / name, model_dir / name)
    return model_dir


class MirrorServer:
    """Serves `root` (laid out as HOST/PATH) on 127.0.0.1, with Range requests and faults.

    `faults[path] = "404" | "cut" | "corrupt"` makes the next request for that path fail:
    not found, the connection closed halfway through the body, or wrong bytes of the right
    length. "cut" and "corrupt" happen once; "404" stays. `requests` logs (path, Range header).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.faults: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self):
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                mirror.requests.append((path, self.headers.get("Range")))
                fault = mirror.faults.get(path)
                file = mirror.root / path
                if fault == "404" or not file.is_file():
                    self.send_error(404)
                    return
                if fault in ("cut", "corrupt"):
                    del mirror.faults[path]
                body = file.read_bytes()
                start = int(self.headers["Range"][6:].split("-")[0]) if self.headers["Range"] else 0
                if fault == "corrupt":
                    body = bytes(len(body))
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if fault == "cut":
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        return Handler


def run_gpt2_cli(capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python gpt2.py ARGS`, run in this process as the script
    runs it: generating with gpt2_fast's copy of the model."""
    import gpt2
    import gpt2_fast
    try:
        code = gpt2.main(list(args), gpt2_fast.for_generation, gpt2_fast.GENERATION_DTYPES)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err
