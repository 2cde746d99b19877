"""The words the grader's parts share: statuses, exit codes, and the results file's variable.

Kept apart from :mod:`grader.plugin` (which imports pytest, for the stage subprocess) so that the
runner and the command line (``python -m grader --help``, ``list``) start without importing pytest.
"""

RESULTS_ENV = "GRADER_RESULTS"  # the file the plugin and the guard append their JSON lines to
HIDDEN_ENV = "GRADER_HIDDEN"  # "1": run the tests marked hidden (an instructor's run)

# Statuses of one test; a stage takes the same words, plus "locked".
PASSED = "passed"
FAILED = "failed"
NOT_STARTED = "not started"
ERROR = "error"
TIMED_OUT = "timed out"
CRASHED = "crashed"
SKIPPED = "skipped"
LOCKED = "locked"
NOT_RUN = "not run"  # a test the stage never reached, or a stage this tree has not run yet
PUBLIC_PASSED = "public tests passed"  # passed, with the stage's hidden tests left out

# Which problem a stage reports when its tests disagree: the first one the learner must fix.
PRIORITY = (ERROR, CRASHED, TIMED_OUT, FAILED, NOT_STARTED)

# Exit codes of `python -m grader ...`.
EXIT_OK = 0  # every stage graded passed (or the command did what was asked)
EXIT_FAILED = 1  # some stage did not pass
EXIT_USAGE = 2  # a request the grader cannot serve (grader.tree.UsageError), said in one line
