"""grade.py: verdicts recorded as JSON lines, chapters recognised, bad submissions graded
without stopping the others, and the CSV, summary and chart written.

One grading run of a few hand-made notebooks (a module-scoped fixture) serves most tests; it
lasts about the --timeout given to it, which the endless loop uses up.
"""
import contextlib
import csv
import io
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import grade
from exercises import attention

TIMEOUT = 20  # seconds per notebook: the endless loop's, and room for alice's torch import


def write_notebook(path: Path, *sources: str) -> Path:
    """A notebook of one markdown cell, then one code cell per source."""
    cells = [new_markdown_cell("# A submission")] + [new_code_cell(s) for s in sources]
    nbformat.write(new_notebook(cells=cells), path)
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Grade a folder of submissions plus two stray files in one run; return its CSV rows by
    file, its printed output and where it wrote."""
    tmp = tmp_path_factory.mktemp("grading")
    folder = tmp / "submissions"
    folder.mkdir()
    write_notebook(folder / "alice_03_attention.ipynb",
                   "from exercises.attention import check_attn_weights_shape, check_wrapper_d_out",
                   "check_wrapper_d_out(1)",
                   "check_attn_weights_shape((1, 2, 3))")
    write_notebook(folder / "bob_03_attention.ipynb", "x = 1", "def broken(:\n    pass")
    write_notebook(folder / "carol_03_attention.ipynb", "while True:\n    pass")
    (folder / "dave_03_attention.ipynb").write_text("my answers are in the e-mail")
    (tmp / "notes.txt").write_text("not a notebook")
    out = tmp / "report" / "grades.csv"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = grade.main([str(folder), str(tmp / "notes.txt"), "--out", str(out),
                           "--timeout", str(TIMEOUT)])
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_file = {}
    for row in rows:
        by_file.setdefault(Path(row["file"]).name, []).append(row)
    return {"code": code, "rows": by_file, "printed": printed.getvalue(), "out": out}


def test_grading_finishes_with_exit_code_0(graded: dict) -> None:
    assert graded["code"] == 0


def test_hand_made_notebook_gets_one_pass_one_fail_and_the_rest_unchecked(graded: dict) -> None:
    rows = {row["exercise"]: row for row in graded["rows"]["alice_03_attention.ipynb"]}
    assert list(rows) == list(grade._check_functions(Path(attention.__file__)))
    assert {row["chapter"] for row in rows.values()} == {"03_attention"}
    assert {row["status"] for row in rows.values()} == {"ok"}
    assert rows["check_wrapper_d_out"]["passed"] == "True"
    assert rows["check_attn_weights_shape"]["passed"] == "False"
    assert "(8, 12, 1024, 1024); you said (1, 2, 3)" in rows["check_attn_weights_shape"]["message"]
    unchecked = set(rows) - {"check_wrapper_d_out", "check_attn_weights_shape"}
    assert {rows[name]["message"] for name in unchecked} == {"never checked"}
    assert {rows[name]["passed"] for name in unchecked} == {"False"}


def test_syntax_error_is_graded_error_at_its_cell(graded: dict) -> None:
    rows = graded["rows"]["bob_03_attention.ipynb"]
    assert len(rows) == 5 and {row["status"] for row in rows} == {"error"}
    assert {row["passed"] for row in rows} == {"False"}
    assert rows[0]["message"].startswith("never checked (error at cell index 2: SyntaxError")


def test_endless_loop_is_graded_timeout(graded: dict) -> None:
    rows = graded["rows"]["carol_03_attention.ipynb"]
    assert {row["status"] for row in rows} == {"timeout"}
    assert rows[0]["message"] == (f"never checked (timeout at cell index 1: still running after "
                                  f"{TIMEOUT} s)")


def test_files_that_are_not_notebooks_are_skipped_with_a_line(graded: dict) -> None:
    assert "dave_03_attention.ipynb" not in graded["rows"] and "notes.txt" not in graded["rows"]
    lines = graded["printed"].splitlines()
    assert any("dave_03_attention.ipynb ... skipped: not a notebook (NotJSONError" in line
               for line in lines)
    assert any("notes.txt ... skipped: not a notebook (not an .ipynb file)" in line
               for line in lines)


def test_summary_csv_and_chart_are_written(graded: dict) -> None:
    printed = graded["printed"]
    assert "Pass rate per exercise" in printed and "Score per notebook" in printed
    assert re.search(r"\n03_attention +check_wrapper_d_out +1/3  33%\n", printed)
    assert re.search(r"alice_03_attention\.ipynb +03_attention +ok +1/5  20%\n", printed)
    header = graded["out"].read_text(encoding="utf-8").splitlines()[0]
    assert header == "file,chapter,exercise,passed,message,status"
    chart = graded["out"].with_suffix(".png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verdict_prints_as_before_and_records_the_check_that_called_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    log = tmp_path / "verdicts.jsonl"
    monkeypatch.setenv(grade.LOG_VARIABLE, str(log))
    assert attention.check_wrapper_d_out(1)
    assert not attention.check_masked_entries(None)
    assert capsys.readouterr().out.splitlines() == [
        "Correct: 2 heads of d_out=1 concatenate to 2 columns; d_out=1 gives 2.",
        "Not yet: count the entries above the diagonal of an n x n matrix."]
    entries = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert entries == [
        {"exercise": "check_wrapper_d_out", "passed": True,
         "message": "2 heads of d_out=1 concatenate to 2 columns; d_out=1 gives 2."},
        {"exercise": "check_masked_entries", "passed": False,
         "message": "count the entries above the diagonal of an n x n matrix."}]


def test_verdict_records_nothing_without_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(grade.LOG_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    assert attention.check_wrapper_d_out(1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, code, chapter", [
    ("alice_06_classification.ipynb", "", "06_classification"),
    ("05b_openai_weights_solutions.ipynb", "", "05b_openai_weights"),
    ("Bob-05b-weights.ipynb", "from exercises.text import check_vocab_size", "05b_openai_weights"),
    ("homework.ipynb", "from exercises.classification import check_lora", "06_classification"),
    ("homework.ipynb", "from exercises import attention as ex", "03_attention"),
    ("2024_homework.ipynb", "import torch", None),
])
def test_chapter_comes_from_the_name_then_the_imports(name: str, code: str,
                                                      chapter: str | None) -> None:
    notebook = new_notebook(cells=[new_code_cell(code)])
    found = grade.find_chapter(Path(name), notebook)
    assert (found.name if found else None) == chapter


def test_exercises_of_a_chapter_are_its_check_functions() -> None:
    chapters = {chapter.key: chapter for chapter in grade.course_chapters()}
    assert chapters["03"].module == "attention"
    assert chapters["03"].exercises == ("check_wrapper_d_out", "check_gpt2_attention_params",
                                        "check_heads_at_equal_params", "check_attn_weights_shape",
                                        "check_masked_entries")
    assert chapters["05c"].exercises == ()  # a chapter without exercises


def test_a_check_run_twice_passes_only_if_it_passed_both_times() -> None:
    chapter = next(c for c in grade.course_chapters() if c.key == "03")
    verdicts = [{"exercise": "check_gpt2_attention_params", "passed": True, "message": "a"},
                {"exercise": "check_gpt2_attention_params", "passed": False, "message": "b"},
                {"exercise": "check_of_another_chapter", "passed": True, "message": "c"}]
    results = grade.exercise_results(chapter, verdicts, "never checked")
    assert [r.exercise for r in results] == [*chapter.exercises, "check_of_another_chapter"]
    assert results[1] == grade.Result("check_gpt2_attention_params", False, "b")
    assert results[-1].passed


@pytest.mark.parametrize("argv", [["--timeout", "soon", "x.ipynb"], ["--timeout", "0", "x"],
                                  ["--colour", "x.ipynb"], []])
def test_bad_flags_say_so_in_one_line_and_exit_2(argv: list[str],
                                                 capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        grade.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("grade.py: ") and err.count("\n") == 1


def test_help_warns_that_this_is_not_a_sandbox(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        grade.main(["--help"])
    assert "NOT A SANDBOX" in capsys.readouterr().out
