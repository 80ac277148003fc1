"""Grade students' notebooks: run each one and collect the verdicts of its exercise checks.

SUBMISSIONS are notebooks, or folders whose .ipynb files (at any depth) are all graded. Each
notebook runs top to bottom in a fresh kernel, in a temporary copy of its chapter's folder,
with GPT2_QUICK=1 unless --full is given, and is stopped after --timeout seconds. Its chapter
comes from its file name (alice_06_classification.ipynb is chapter 06) or, failing that, from
the exercises module it imports. Every check_ function of that module is one exercise; an
exercise the notebook never checked counts as not passed.

Writes the CSV (one row per notebook and exercise), a bar chart of the pass rates next to it
(grades.png for grades.csv) and prints a summary. A notebook that raises is graded "error",
one that runs out of time "timeout"; files that are not notebooks are skipped with a line.

NOT A SANDBOX: the students' code runs with your rights and can read, change or delete
anything you can, and reach the network. For code you do not trust, run the grader in a
throw-away container without network, e.g. `docker run --rm --network none -v "$PWD":/course
-w /course IMAGE python grade.py submissions/`, with the course's requirements in IMAGE and
its data already downloaded into data/.

The same file holds `verdict`, which every exercises package uses: when GPT2_GRADE_LOG names
a file, each verdict is appended there as one JSON line, which is how the grader reads them.
"""
from __future__ import annotations

import argparse
import ast
import csv
import functools
import inspect
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from nbformat import NotebookNode

# The grader's own libraries (nbformat, nbclient, matplotlib) are imported in the functions that
# use them: every exercises package imports this module for `verdict`, in every learner's
# kernel, and that import must stay quick and need nothing beyond the standard library.

ROOT = Path(__file__).resolve().parent
LOG_VARIABLE = "GPT2_GRADE_LOG"
# A chapter's key as it appears in a file name: "06" in alice_06_classification, "07b".
NAME_KEY = re.compile(r"(?<![0-9a-z])(\d{2}[a-z]?)(?![0-9a-z])")
# The exercises module a notebook imports: `from exercises.text import ...`,
# `import exercises.text` or `from exercises import text`.
EXERCISES_IMPORT = re.compile(r"\bexercises(?:\.|\s+import\s+)([A-Za-z_]\w*)")
# Left out of a chapter's temporary copy: notebooks, caches, and what earlier runs wrote
# (checkpoints, runs/), which can be gigabytes and which a submission must not overwrite.
NOT_COPIED = ("*.ipynb", ".ipynb_checkpoints", "__pycache__", "*.pth", "*.pt", "*.safetensors",
              "runs")


# --- Recording verdicts (runs inside the learners' kernels) --------------------------------

def verdict(ok: bool, why: str) -> bool:
    """Print whether an answer is right, and why; return `ok`. Every check of the course ends
    here, so this is also where the verdict is recorded for grading."""
    print(("Correct: " if ok else "Not yet: ") + why)
    record_verdict(ok, why)
    return ok


def record_verdict(ok: bool, why: str) -> None:
    """Append the verdict to the file named by GPT2_GRADE_LOG, if set, as one JSON line
    {"exercise", "passed", "message"}: the grader reads these instead of the printed text."""
    path = os.environ.get(LOG_VARIABLE)
    if not path:
        return
    entry = {"exercise": _calling_check(), "passed": bool(ok), "message": why}
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\n")


def _calling_check() -> str:
    """The name of the nearest check_ function up the call stack: checks often reach `verdict`
    through a helper of their module (such as `_judge`)."""
    frame = inspect.currentframe()
    while frame is not None and not frame.f_code.co_name.startswith("check_"):
        frame = frame.f_back
    return frame.f_code.co_name if frame is not None else "(no check function)"


# --- The course's chapters -----------------------------------------------------------------

@dataclass(frozen=True)
class Chapter:
    """One chapter notebook of the course and the exercises its checks grade."""
    key: str                    # "05b"
    name: str                   # "05b_openai_weights", the committed notebook's name
    folder: Path                # where it runs: its exercises package and modules are there
    module: str | None          # "openai_weights", for exercises/openai_weights.py
    exercises: tuple[str, ...]  # the module's check_ functions, in the module's order


@functools.cache
def course_chapters() -> tuple[Chapter, ...]:
    """The chapters, read from the committed notebooks (not a list kept by hand, so a new
    chapter is graded as soon as its notebook and exercises module exist)."""
    import nbformat
    chapters = []
    for path in sorted(ROOT.glob("[0-9]_*/[0-9][0-9]*.ipynb")):
        if path.stem.endswith("_solutions"):
            continue
        exercises = path.parent / "exercises"
        module = next((name for name in _imported_modules(nbformat.read(path, as_version=4))
                       if (exercises / f"{name}.py").is_file()), None)
        checks = _check_functions(exercises / f"{module}.py") if module else ()
        chapters.append(Chapter(path.stem.split("_")[0], path.stem, path.parent, module, checks))
    return tuple(chapters)


def _check_functions(module_path: Path) -> tuple[str, ...]:
    """The top-level check_ functions of an exercises module, read without importing it (an
    import would load torch and the course)."""
    tree = ast.parse(module_path.read_text(encoding="utf-8"))
    return tuple(node.name for node in tree.body
                 if isinstance(node, ast.FunctionDef) and node.name.startswith("check_"))


def _imported_modules(notebook: NotebookNode) -> list[str]:
    """The names after `exercises.` (or `from exercises import`) in a notebook's code cells."""
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    return EXERCISES_IMPORT.findall(code)


def _first(candidates: list[str], table: dict):
    """The value of the first candidate found in `table`, or None."""
    return next((table[c] for c in candidates if c in table), None)


def find_chapter(path: Path, notebook: NotebookNode) -> Chapter | None:
    """The chapter of a submission: from a chapter key in its file name, else from the
    exercises module its code imports; None if neither says."""
    chapters = course_chapters()
    return (_first(NAME_KEY.findall(path.stem.lower()), {c.key: c for c in chapters})
            or _first(_imported_modules(notebook), {c.module: c for c in chapters if c.module}))


# --- Running one notebook ------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """How one notebook's run ended and the verdicts it recorded."""
    status: str           # "ok", "error" or "timeout"
    message: str          # where it stopped and why, e.g. "error at cell index 4: NameError: ..."
    detail: str           # the full error report, traceback included, for whoever debugs it
    verdicts: list[dict]  # the recorded JSON lines, in order


def run_notebook(notebook: NotebookNode, chapter: Chapter, timeout: float, quick: bool) -> Run:
    """Run a notebook in a fresh kernel, in a temporary copy of its chapter's folder, with
    GPT2_GRADE_LOG pointing into that copy; stop it after `timeout` seconds in all."""
    from nbclient import NotebookClient
    # A submission may leave files it cannot delete; that must not stop the grading.
    with tempfile.TemporaryDirectory(prefix="grade-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp) / chapter.folder.name
        shutil.copytree(chapter.folder, workdir, ignore=shutil.ignore_patterns(*NOT_COPIED))
        # Paths the course writes relative to a chapter folder (GPT2_BASE_MODEL=../data/...)
        # still resolve. Downloads land in the shared data/ either way.
        (Path(tmp) / "data").symlink_to(ROOT / "data", target_is_directory=True)
        log = Path(tmp) / "verdicts.jsonl"
        client = NotebookClient(notebook, kernel_name="python3", shutdown_kernel="immediate",
                                resources={"metadata": {"path": str(workdir)}},
                                # the kernel's own warnings (unencrypted local TCP) are noise here
                                extra_arguments=["--IPKernelApp.log_level=ERROR"])
        status, message, detail = _execute(client, _kernel_env(log, quick), timeout)
        return Run(status, message, detail, _read_log(log))


def _kernel_env(log: Path, quick: bool) -> dict[str, str]:
    """The grader's environment, plus the verdict log, a plotting backend that opens no
    window, and GPT2_QUICK set or removed as asked."""
    env = {**os.environ, "MPLBACKEND": "agg", LOG_VARIABLE: str(log)}
    if quick:
        env["GPT2_QUICK"] = "1"
    else:
        env.pop("GPT2_QUICK", None)
    return env


def _execute(client, env: dict[str, str], timeout: float) -> tuple[str, str, str]:
    """Run the client's cells in order, each with what is left of `timeout`; return the
    status, a one-line message and the full report."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError
    deadline = time.monotonic() + timeout
    index = None
    try:
        with client.setup_kernel(env=env):
            for index, cell in enumerate(client.nb.cells):
                client.timeout = max(1, math.ceil(deadline - time.monotonic()))
                client.execute_cell(cell, index)
    except CellTimeoutError as error:
        return "timeout", f"timeout {_at(index)}: still running after {timeout:g} s", str(error)
    except CellExecutionError as error:
        return "error", f"error {_at(index)}: {error.ename}: {_line(error.evalue)}", str(error)
    except Exception as error:  # a kernel that died or never started: grade the others
        message = f"error {_at(index)}: {type(error).__name__}: {_line(str(error))}"
        return "error", message, repr(error)
    return "ok", "", ""


def _at(index: int | None) -> str:
    """Where a run stopped, in words; cells are counted from 0, markdown ones included."""
    return "before the first cell" if index is None else f"at cell index {index}"


def _line(text: str, width: int = 200) -> str:
    """The first line of an error's text, cut to `width` characters, for a CSV cell."""
    lines = text.strip().splitlines()
    return lines[0][:width] if lines else ""


def _read_log(path: Path) -> list[dict]:
    """The verdicts a run recorded; a line cut short by a killed kernel is left out."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


# --- Grading --------------------------------------------------------------------------------

class NotGradable(Exception):
    """A submission that cannot be graded (no file, not a notebook, no chapter): its reason is
    printed and grading goes on."""


@dataclass(frozen=True)
class Result:
    """The grade of one exercise of one notebook."""
    exercise: str
    passed: bool
    message: str


@dataclass(frozen=True)
class Graded:
    """One graded notebook."""
    file: str
    chapter: Chapter
    run: Run
    results: list[Result]


def grade_notebook(path: Path, timeout: float, quick: bool) -> Graded:
    """Run one submission and grade every exercise of its chapter; raise NotGradable for a
    file that is not a notebook of a chapter of the course."""
    notebook = _read_notebook(path)
    chapter = find_chapter(path, notebook)
    if chapter is None:
        raise NotGradable("no chapter in its name (such as 06_...) nor an exercises import")
    run = run_notebook(notebook, chapter, timeout, quick)
    unchecked = "never checked" + (f" ({run.message})" if run.message else "")
    return Graded(str(path), chapter, run, exercise_results(chapter, run.verdicts, unchecked))


def _read_notebook(path: Path) -> NotebookNode:
    """The notebook at `path`, or NotGradable saying why it is not one."""
    import nbformat
    if not path.is_file():
        raise NotGradable("no such file")
    if path.suffix != ".ipynb":
        raise NotGradable("not a notebook (not an .ipynb file)")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as error:  # nbformat raises many kinds (JSON, schema, type errors)
        raise NotGradable(f"not a notebook ({type(error).__name__}: {_line(str(error))})")


def exercise_results(chapter: Chapter, verdicts: list[dict], unchecked: str) -> list[Result]:
    """One result per exercise of the chapter, in its module's order, then any other exercise
    the notebook checked. An exercise checked more than once passes only if it passed every
    time (chapter 3 checks one exercise in two parts); one never checked does not pass."""
    by_exercise: dict[str, list[dict]] = {name: [] for name in chapter.exercises}
    for entry in verdicts:
        by_exercise.setdefault(entry["exercise"], []).append(entry)
    return [_combine(name, entries, unchecked) for name, entries in by_exercise.items()]


def _combine(exercise: str, entries: list[dict], unchecked: str) -> Result:
    """One exercise's result from its verdicts: the first failure's message, if any."""
    if not entries:
        return Result(exercise, False, unchecked)
    failed = [entry for entry in entries if not entry["passed"]]
    return Result(exercise, not failed, (failed or entries)[0]["message"])


# --- Reports --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One line of the CSV: a notebook's grade on one exercise, and how its run ended."""
    file: str
    chapter: str
    exercise: str
    passed: bool
    message: str
    status: str


def rows_of(graded: list[Graded]) -> list[Row]:
    """The CSV's rows, one per notebook and exercise."""
    return [Row(g.file, g.chapter.name, r.exercise, r.passed, r.message, g.run.status)
            for g in graded for r in g.results]


def write_csv(rows: list[Row], path: Path) -> None:
    """Write the rows, with a header line."""
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=[field.name for field in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)


def pass_rates(rows: list[Row]) -> dict[tuple[str, str], tuple[int, int]]:
    """(passed, graded) per (chapter, exercise), in the order the exercises first appear."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        counts[row.chapter, row.exercise][0] += row.passed
        counts[row.chapter, row.exercise][1] += 1
    return {key: (passed, total) for key, (passed, total) in counts.items()}


def _fraction(passed: int, total: int) -> str:
    """'3/4  75%', or '0/0' when there is nothing to count."""
    return f"{passed}/{total}  {100 * passed / total:.0f}%" if total else "0/0"


def _score(graded: Graded) -> str:
    """How many of its chapter's exercises a notebook passed."""
    return _fraction(sum(r.passed for r in graded.results), len(graded.results))


def _table(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> str:
    """Left-aligned columns, wide enough for their longest entry."""
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in [header, *lines])


def summary(graded: list[Graded]) -> str:
    """The pass rate of every exercise, then every notebook's score and how its run ended."""
    rates = [(chapter, exercise, _fraction(*counts))
             for (chapter, exercise), counts in pass_rates(rows_of(graded)).items()]
    scores = [(g.file, g.chapter.name, g.run.status, _score(g)) for g in graded]
    return ("Pass rate per exercise\n" + _table(("chapter", "exercise", "passed"), rates)
            + "\n\nScore per notebook\n"
            + _table(("file", "chapter", "status", "score"), scores))


def write_chart(rows: list[Row], path: Path) -> None:
    """A horizontal bar per exercise: the share of graded notebooks that passed it."""
    from matplotlib.figure import Figure  # a bare Figure saves through Agg, with no window
    rates = pass_rates(rows)
    labels = [f"{chapter}  {exercise}" for chapter, exercise in rates]
    shares = [100 * passed / total for passed, total in rates.values()]
    figure = Figure(figsize=(9, 1.2 + 0.3 * len(labels)), layout="constrained")
    axes = figure.subplots()
    bars = axes.barh(labels, shares, color="tab:green")
    axes.bar_label(bars, [f"{passed}/{total}" for passed, total in rates.values()], padding=3)
    axes.invert_yaxis()  # the first exercise on top, as in the summary
    axes.set_xlim(0, 112)  # room for the labels of full bars
    axes.set_xticks(range(0, 101, 20))
    axes.set_xlabel("notebooks that passed (%)")
    notebooks = len({row.file for row in rows})
    axes.set_title(f"Pass rate per exercise ({notebooks} notebook{'s' * (notebooks != 1)})")
    figure.savefig(path, dpi=100)


# --- Command line ---------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line gets one line on stderr, like the course's scripts."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _seconds(text: str) -> float:
    """A positive, finite number of seconds, for --timeout."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"a positive number of seconds, not {text!r}")
    return value


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="grade.py", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submissions", nargs="+", type=Path, metavar="SUBMISSIONS",
                        help="notebooks, or folders of notebooks")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"),
                        help="the CSV to write; the chart goes next to it as .png "
                             "(default: grades.csv)")
    parser.add_argument("--timeout", type=_seconds, default=600.0,
                        help="seconds one notebook may run, all cells together (default: 600)")
    parser.add_argument("--full", action="store_true",
                        help="run the notebooks in full, without GPT2_QUICK=1 (slow)")
    return parser.parse_args(argv)


def _submission_files(submissions: list[Path]) -> Iterator[Path]:
    """The files to grade: each folder's notebooks, Jupyter's autosaves left out, and each
    other path as given (grade_notebook says what is wrong with it)."""
    for path in submissions:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*.ipynb")
                              if ".ipynb_checkpoints" not in p.parts)
        else:
            yield path


def main(argv: list[str] | None = None) -> int:
    """Grade every submission, write the CSV and the chart, print the summary; return 0."""
    args = _parse(argv)
    graded = []
    for path in _submission_files(args.submissions):
        print(f"grading {path} ... ", end="", flush=True)
        try:
            graded.append(grade_notebook(path, args.timeout, quick=not args.full))
        except NotGradable as reason:
            print(f"skipped: {reason}")
            continue
        print(f"{graded[-1].chapter.name}: {graded[-1].run.message or 'ok'}, "
              f"{_score(graded[-1])}")
    rows = rows_of(graded)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out)
    write_chart(rows, args.out.with_suffix(".png"))
    print(f"\n{summary(graded)}\n\nwrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
