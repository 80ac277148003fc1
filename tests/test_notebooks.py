"""Runs every notebook of the course top to bottom in a fresh kernel, as a learner would.

They run through grade.py's runner, in a temporary copy of their chapter folder, which also
grades them. GPT2_QUICK=1 asks the chapters whose full run takes long to shrink it; the 0_Basics
notebooks ignore it and run in full. The committed notebooks are not modified: they are
executed in memory.
"""
import warnings
from pathlib import Path

import nbformat
import pytest

import gpt_download
import grade
from gpt2_fixtures import random_tf_variables, tiny_hparams, write_tf_checkpoint

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(ROOT.glob("[0-9]_*/*.ipynb"))
# Notebooks that download OpenAI's GPT-2 124M, which cannot be had here: they get a small
# random checkpoint in OpenAI's format instead (see serve_small_gpt2).
OPENAI_WEIGHTS_NOTEBOOKS = {"05b_openai_weights.ipynb", "05b_openai_weights_solutions.ipynb"}
MODELS_HOST_PATH = "openaipublic.blob.core.windows.net/gpt-2/models"
NOTEBOOK_TIMEOUT = 3600  # seconds for all the cells of one notebook together


def serve_small_gpt2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point GPT2_MIRROR at a folder whose "124M" is a tiny GPT-2 (GPT-2's vocabulary and
    context, 32 wide, 2 layers) and GPT2_MODELS_DIR at an empty folder to download it into.

    The Verdict is fetched first, through the usual mirror, as that one lacks it."""
    gpt_download.fetch_data("the-verdict.txt")
    hparams = tiny_hparams(n_vocab=50257, n_ctx=1024, n_embd=32, n_head=4, n_layer=2)
    write_tf_checkpoint(tmp_path / "mirror" / MODELS_HOST_PATH / "124M", hparams,
                        random_tf_variables(hparams))
    monkeypatch.setenv("GPT2_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("GPT2_MODELS_DIR", str(tmp_path / "models"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Run through grade.py, as a teacher grades: a solutions notebook passes every exercise
    of its chapter, a chapter notebook (its answers left as None) checks every one and passes
    none, and neither raises."""
    if path.name in OPENAI_WEIGHTS_NOTEBOOKS:
        serve_small_gpt2(tmp_path, monkeypatch)
    graded = grade.grade_notebook(path, timeout=NOTEBOOK_TIMEOUT, quick=True)
    assert graded.run.status == "ok", graded.run.detail
    checked = {entry["exercise"] for entry in graded.run.verdicts}
    assert set(graded.chapter.exercises) <= checked
    passed = [result.exercise for result in graded.results if result.passed]
    assert passed == (list(graded.chapter.exercises) if path.stem.endswith("_solutions") else [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_notebook_is_valid_ran_in_order_and_has_no_errors(path: Path) -> None:
    """What a learner opens: every cell with an id (nbformat 4.5), code cells numbered in the
    order they appear (one top-to-bottom run) and no error among the committed outputs."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. MissingIDFieldWarning
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code if cell.execution_count is not None]
    assert counts == list(range(1, len(counts) + 1)), "re-run the notebook top to bottom"
    assert not [out for cell in code for out in cell.outputs if out.output_type == "error"]
