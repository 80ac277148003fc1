"""Checks for the exercises of chapter 7: call one on your answer to hear whether it is right.

Every `check_...` function prints a verdict with the reason and returns True or False, so a test
can use it too.
"""


def verdict(ok: bool, why: str) -> bool:
    """Print whether an answer is right, and why; return `ok`."""
    print(("Correct: " if ok else "Not yet: ") + why)
    return ok
