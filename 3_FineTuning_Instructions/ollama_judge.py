"""Score a model's answers with a larger model served by Ollama, as chapter 7 of the book does.

Ollama (https://ollama.com) runs open models such as Llama 3 on your own machine and answers
HTTP requests on port 11434. We ask it, for each test entry, how good the fine-tuned model's
response is on a scale of 0 to 100, and average the scores.

We talk to it with plain HTTP (urllib, from Python's standard library) rather than the `ollama`
package: two small JSON requests need no extra dependency, the tests can answer them from a
tiny local server, and you can see exactly what is sent.

    python ollama_judge.py instruction-data-with-response.json --model llama3
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request

from tqdm import tqdm

import gpt2

DEFAULT_URL = "http://localhost:11434"
DEFAULT_MODEL = "llama3"
START_HINT = ("Start it in another terminal with `ollama serve`, fetch a judge with "
              "`ollama pull {model}` (a 4.7 GB download for llama3), then run this again. "
              "Installation: https://ollama.com/download")


class JudgeError(RuntimeError):
    """The judge could not score one entry; the message says why."""


def _request(url: str, payload: dict | None = None, timeout: float = 120) -> dict:
    """GET `url` (or POST `payload` as JSON) and decode the JSON answer."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:  # before URLError: it is a subclass
        detail = err.read().decode(errors="replace")[:200]
        raise JudgeError(f"the Ollama server answered HTTP {err.code} ({detail})") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise JudgeError(f"no Ollama server answers at {url} ({reason})") from None
    except json.JSONDecodeError:
        raise JudgeError(f"the server at {url} did not answer in JSON: is it Ollama?") from None


def check_if_running(model: str = DEFAULT_MODEL, url: str = DEFAULT_URL) -> bool:
    """Whether an Ollama server answers at `url` and has `model`; if not, print how to fix it."""
    try:
        tags = _request(f"{url}/api/tags", timeout=5)
    except JudgeError as err:
        print(f"{err}. {START_HINT.format(model=model)}")
        return False
    names = [m.get("name", "") for m in tags.get("models", [])]
    if not any(name == model or name.split(":")[0] == model for name in names):
        print(f"The Ollama server runs but has no model {model!r} (it has: "
              f"{', '.join(names) or 'none'}). Fetch it with `ollama pull {model}`.")
        return False
    return True


def query_model(prompt: str, model: str = DEFAULT_MODEL, url: str = DEFAULT_URL,
                timeout: float = 120) -> str:
    """The judge's reply to one user message, generated greedily with a fixed seed so a
    rerun gives the same scores."""
    payload = {"model": model, "messages": [{"role": "user", "content": prompt}],
               "stream": False, "options": {"seed": 123, "temperature": 0, "num_ctx": 2048}}
    reply = _request(f"{url}/api/chat", payload, timeout)
    try:
        return reply["message"]["content"]
    except (KeyError, TypeError):
        raise JudgeError(f"the reply has no message content: {str(reply)[:200]}") from None


def judge_prompt(entry: dict, response_key: str = "model_response") -> str:
    """What the judge is asked about one entry: the task, the reference answer, the response."""
    return (f"Here is a task:\n{gpt2.format_input(entry)}\n\n"
            f"A correct answer is:\n{entry['output']}\n\n"
            f"Rate this answer to the task from 0 (useless) to 100 (as good as the correct one):\n"
            f"{entry[response_key]}\n\n"
            "Reply with a single whole number and nothing else.")


def parse_score(reply: str) -> int:
    """The 0-100 score in the judge's reply; a JudgeError when the reply is anything else."""
    match = re.fullmatch(r"\s*(\d{1,3})(?:\s*/\s*100)?\s*\.?\s*", reply)
    if not match or int(match.group(1)) > 100:
        raise JudgeError(f"the judge's reply is not a score from 0 to 100: {reply[:80]!r}")
    return int(match.group(1))


def generate_model_scores(data: list[dict], response_key: str = "model_response",
                          model: str = DEFAULT_MODEL, url: str = DEFAULT_URL
                          ) -> tuple[list[int], list[str]]:
    """A 0-100 score for each entry's response, and one line for each entry that got none.

    An entry the judge cannot score (no server, an HTTP error, a reply that is not a number)
    is skipped and reported, and the others are still scored.
    """
    scores, skipped = [], []
    for i, entry in enumerate(tqdm(data, desc="judging", unit="entry")):
        try:
            scores.append(parse_score(query_model(judge_prompt(entry, response_key), model, url)))
        except JudgeError as err:
            skipped.append(f"entry {i}: {err}")
    return scores, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("responses", help="a JSON list of entries with the model's responses, "
                        "e.g. instruction-data-with-response.json")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the judge (default: %(default)s)")
    parser.add_argument("--url", default=DEFAULT_URL, help="the server (default: %(default)s)")
    parser.add_argument("--response-key", default="model_response",
                        help="the key holding the responses (default: %(default)s)")
    args = parser.parse_args(argv)
    if not check_if_running(args.model, args.url):
        return 1
    with open(args.responses, encoding="utf-8") as f:
        data = json.load(f)
    scores, skipped = generate_model_scores(data, args.response_key, args.model, args.url)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if not scores:
        print("no entry was scored", file=sys.stderr)
        return 1
    print(f"Average score of {len(scores)} of {len(data)} entries: "
          f"{sum(scores) / len(scores):.2f} / 100")
    return 0


if __name__ == "__main__":
    sys.exit(main())
