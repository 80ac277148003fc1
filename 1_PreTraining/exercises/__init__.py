"""Checks for the exercises of 1_PreTraining: call one on your answer to hear whether it is right.

Each notebook has its own module; every `check_...` function prints a verdict with the reason
and returns True or False, so a test can use it too.
`verdict` itself is grade.py's, at the repository's root: it also records each verdict for
`python grade.py` when GPT2_GRADE_LOG is set.
"""
from grade import verdict  # noqa: F401  (the check modules import it from here)
