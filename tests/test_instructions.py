"""Chapter 7's pieces: prompt formats, batches, response extraction, scores, the Ollama client,
the chat tokenizer and the grown model, the command line and the fine-tuning script."""
import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import gpt2
import instruct
import ollama_judge
from gpt2_fixtures import run_gpt2_cli, write_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY = {**gpt2.GPT_CONFIG_124M, "context_length": 128, "emb_dim": 32, "n_heads": 4, "n_layers": 2}
PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.")
IGNORE = -100
PAD = 50256


# --- prompt formats ---------------------------------------------------------------------------

def test_format_input_without_input() -> None:
    entry = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    assert gpt2.format_input(entry) == f"{PREAMBLE}\n\n### Instruction:\nName a colour."
    assert instruct.format_response(entry) == "\n\n### Response:\nBlue."


def test_format_input_with_input() -> None:
    entry = {"instruction": "Translate to French.", "input": "cat", "output": "chat"}
    assert gpt2.format_input(entry) == (f"{PREAMBLE}\n\n### Instruction:\nTranslate to French."
                                        "\n\n### Input:\ncat")


def test_chat_format() -> None:
    entry = {"instruction": "Translate to French.", "input": "cat", "output": "chat"}
    assert instruct.format_chat_input(entry) == ("<|im_start|>user\nTranslate to French.\n\ncat"
                                                 "<|im_end|>\n<|im_start|>assistant\n")
    assert instruct.format_chat_response(entry) == "chat<|im_end|>"


def test_missing_key_names_the_key() -> None:
    with pytest.raises(ValueError, match="no 'output'.*'instruction'"):
        instruct.format_response({"instruction": "Say hi.", "input": ""})


def test_split_is_85_10_5_in_file_order() -> None:
    data = list(range(1100))
    train, test, val = instruct.split_instruction_data(data)
    assert (len(train), len(test), len(val)) == (935, 110, 55)
    assert train + test + val == data


def test_filter_reports_what_it_skips() -> None:
    tokenizer = gpt2.get_tokenizer()
    short = {"instruction": "Hi.", "input": "", "output": "Hello."}
    long = {"instruction": "Hi.", "input": "", "output": "word " * 200}
    kept, skipped = instruct.filter_instruction_data([short, {"input": ""}, long], tokenizer, 128)
    assert kept == [short]
    assert skipped[0].startswith("entry 1:") and "'instruction'" in skipped[0]
    assert skipped[1].startswith("entry 2:") and "context of 128" in skipped[1]


# --- batches ----------------------------------------------------------------------------------

def test_dataset_holds_prompt_then_response() -> None:
    tokenizer = gpt2.get_tokenizer()
    entry = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    prompt = tokenizer.encode(gpt2.format_input(entry))
    response = tokenizer.encode("\n\n### Response:\nBlue.")
    assert instruct.InstructionDataset([entry], tokenizer)[0] == prompt + response
    assert instruct.InstructionDataset([entry], tokenizer, with_prompt_lengths=True)[0] == \
        (len(prompt), prompt + response)


BATCH = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]


def test_collate_pads_shifts_and_masks() -> None:
    inputs, targets = instruct.custom_collate_fn(BATCH)
    assert torch.equal(inputs, torch.tensor([[0, 1, 2, 3, 4],
                                             [5, 6, PAD, PAD, PAD],
                                             [7, 8, 9, PAD, PAD]]))
    assert torch.equal(targets, torch.tensor([[1, 2, 3, 4, PAD],
                                              [6, PAD, IGNORE, IGNORE, IGNORE],
                                              [8, 9, PAD, IGNORE, IGNORE]]))


def test_collate_truncates() -> None:
    inputs, targets = instruct.custom_collate_fn(BATCH, allowed_max_length=3)
    assert torch.equal(inputs, torch.tensor([[0, 1, 2], [5, 6, PAD], [7, 8, 9]]))
    assert torch.equal(targets, torch.tensor([[1, 2, 3], [6, PAD, IGNORE], [8, 9, PAD]]))


def test_collate_masks_the_instructions() -> None:
    batch = [(2, BATCH[0]), (1, BATCH[1]), (3, BATCH[2])]  # (prompt length, token ids)
    inputs, targets = instruct.custom_collate_fn_masked(batch)
    assert torch.equal(inputs, instruct.custom_collate_fn(BATCH)[0])
    assert torch.equal(targets, torch.tensor([[IGNORE, 2, 3, 4, PAD],
                                              [6, PAD, IGNORE, IGNORE, IGNORE],
                                              [IGNORE, IGNORE, PAD, IGNORE, IGNORE]]))


# --- responses and scores ---------------------------------------------------------------------

def test_extract_response() -> None:
    prompt = f"{PREAMBLE}\n\n### Instruction:\nName a colour."
    generated = prompt + "\n\n### Response:\nBlue.<|endoftext|><|endoftext|>"
    assert instruct.extract_response(generated, prompt) == "Blue."
    chat = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert instruct.extract_response(chat + " Hello! <|im_end|>junk", chat) == "Hello!"


@pytest.mark.parametrize("candidate, reference, expected", [
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6),  # LCS "the cat on the mat"
    ("a b c d", "a c", 2 / 3),             # LCS 2: precision 2/4, recall 2/2
    ("d c b a", "a b c d", 1 / 4),         # reversed: any one word is the LCS
    ("Blue.", "blue", 1.0),                # case and punctuation aside
    ("red", "blue", 0.0),
    ("", "blue", 0.0),
    ("", "", 1.0),
])
def test_rouge_l_by_hand(candidate, reference, expected) -> None:
    assert instruct.rouge_l(candidate, reference) == pytest.approx(expected)


def test_exact_match() -> None:
    assert instruct.exact_match("The answer is 4.", "the answer is 4")
    assert not instruct.exact_match("The answer is 4.", "The answer is 5.")


def test_response_loss_counts_only_the_response() -> None:
    torch.manual_seed(0)
    model = gpt2.GPTModel(TINY).eval()
    tokenizer = gpt2.get_tokenizer()
    entry = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    prompt, response = (tokenizer.encode(gpt2.format_input(entry)),
                        tokenizer.encode(instruct.format_response(entry)))
    ids = torch.tensor([prompt + response + [PAD]])
    with torch.no_grad():
        logits = model(ids[:, :-1])[0]
    expected = torch.nn.functional.cross_entropy(logits[len(prompt) - 1:], ids[0, len(prompt):])
    losses = instruct.response_losses(model, [entry, entry], tokenizer)
    assert losses == pytest.approx([expected.item()] * 2, rel=1e-5)


# --- the Ollama judge -------------------------------------------------------------------------

class FakeOllama:
    """A loopback server speaking Ollama's /api/tags and /api/chat. It answers the chats with the
    scores of SCORES in turn, unless the response it is asked about says "junk" (a reply that is
    not a number) or "crash" (HTTP 500)."""
    SCORES = (60, 90, 75)

    def __init__(self) -> None:
        scores = iter(self.SCORES * 10)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"models": [{"name": "llama3:latest"}]})

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = request["messages"][0]["content"]
                if "crash" in prompt:
                    self._send(500, {"error": "model runner crashed"})
                else:
                    content = "I liked it a lot." if "junk" in prompt else str(next(scores))
                    self._send(200, {"model": request["model"], "done": True,
                                     "message": {"role": "assistant", "content": content}})

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_ollama():
    server = FakeOllama()
    yield server
    server.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once it is closed


def entry_with(response: str) -> dict:
    return {"instruction": "Name a colour.", "input": "", "output": "Blue.",
            "model_response": response}


def test_judge_scores_skips_junk_and_errors(fake_ollama) -> None:
    assert ollama_judge.check_if_running("llama3", fake_ollama.url)
    data = [entry_with("Blue."), entry_with("junk"), entry_with("crash"), entry_with("Red.")]
    scores, skipped = ollama_judge.generate_model_scores(data, url=fake_ollama.url)
    assert scores == [60, 90]  # the replies to the two good entries, in order
    assert skipped[0].startswith("entry 1:") and "not a score" in skipped[0]
    assert skipped[1].startswith("entry 2:") and "HTTP 500" in skipped[1]


def test_judge_missing_model_says_pull(fake_ollama, capsys) -> None:
    assert not ollama_judge.check_if_running("mistral", fake_ollama.url)
    assert "ollama pull mistral" in capsys.readouterr().out


def test_judge_refused_connection(capsys) -> None:
    url = closed_port_url()
    assert not ollama_judge.check_if_running("llama3", url)
    assert "ollama serve" in capsys.readouterr().out
    scores, skipped = ollama_judge.generate_model_scores([entry_with("Blue.")], url=url)
    assert scores == [] and "no Ollama server answers" in skipped[0]


@pytest.mark.parametrize("reply, score", [("85", 85), (" 100\n", 100), ("0.", 0), ("70/100", 70)])
def test_parse_score_accepts_numbers(reply, score) -> None:
    assert ollama_judge.parse_score(reply) == score


@pytest.mark.parametrize("reply", ["", "eighty", "Score: 85", "101", "85 or 90"])
def test_parse_score_rejects_the_rest(reply) -> None:
    with pytest.raises(ollama_judge.JudgeError):
        ollama_judge.parse_score(reply)


# --- the chat tokenizer and the grown model ---------------------------------------------------

def test_chat_tokenizer_round_trips_and_keeps_gpt2_ids() -> None:
    chat, base = instruct.chat_tokenizer(), gpt2.get_tokenizer()
    text = "<|im_start|>user\nHello, world!<|im_end|>\n"
    ids = chat.encode(text, allowed_special="all")
    assert ids[0] == 50257 and 50258 in ids and chat.n_vocab == 50259
    assert chat.decode(ids) == text
    plain = "Every effort moves you <|endoftext|> onwards."
    assert chat.encode(plain, allowed_special="all") == base.encode(plain, allowed_special="all")


@pytest.mark.parametrize("tied", [True, False])
def test_resized_model_keeps_old_logits(tied) -> None:
    torch.manual_seed(0)
    model = gpt2.GPTModel(TINY).eval()
    if tied:
        model.out_head.weight = model.tok_emb.weight
    ids = torch.tensor([[15496, 11, 995, 0, 50256]])
    with torch.no_grad():
        before = model(ids)
        instruct.resize_token_embeddings(model, 50259)
        after = model(ids)
        model(torch.tensor([[50257, 50258]]))  # the new ids exist
    assert after.shape[-1] == 50259 and model.cfg["vocab_size"] == 50259
    assert torch.allclose(after[..., :50257], before, rtol=1e-5, atol=1e-5)
    assert (model.out_head.weight is model.tok_emb.weight) == tied
    mean = model.tok_emb.weight[:50257].mean(dim=0)
    assert torch.allclose(model.tok_emb.weight[50257:], mean.expand(2, -1))


# --- command line and script ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), TINY)


def test_cli_instruction_prints_only_the_response(tiny_checkpoint, capsys) -> None:
    code, out, err = run_gpt2_cli(capsys, "--checkpoint", str(tiny_checkpoint), "--instruction",
                                  "Name a colour.", "--temperature", "0", "--max-new-tokens", "8")
    assert code == 0, err
    model = gpt2.load_checkpoint(tiny_checkpoint)[0].eval()
    expected = instruct.generate_response(model, {"instruction": "Name a colour."},
                                          gpt2.get_tokenizer(), max_new_tokens=8)
    assert out == expected + "\n" and "Instruction" not in out


def test_finetune_script_quick_run(tiny_checkpoint, tmp_path, fake_ollama) -> None:
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "3_FineTuning_Instructions" / "finetune_instructions.py"),
         "--init", str(tiny_checkpoint), "--quick", "--epochs", "1", "--max-new-tokens", "4",
         "--format", "chat", "--mask-instructions", "--judge", "llama3",
         "--ollama-url", fake_ollama.url, "--out-dir", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_entries"] == 3 and summary["judge_score"] == 75  # (60 + 90 + 75) / 3
    responses = json.loads((out / "instruction-data-with-response.json").read_text())
    assert len(responses) == 3 and all("model_response" in e for e in responses)
    model = gpt2.load_checkpoint(out / "model.pth")[0]
    assert model.cfg["vocab_size"] == 50259  # grown for <|im_start|> and <|im_end|>
    assert (out / "evaluation.csv").read_text().startswith("instruction,reference,response,")
