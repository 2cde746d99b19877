"""The instructor's tools: grading a class (``batch``), its isolation (``limits``), the integrity
scan (``integrity``) and the report formats (``report``: JSON; ``formats``: JUnit XML and
Gradescope). The learner's path (``python -m grader ch2``, ``watch``, ``hint``, ...) never imports
this package unless asked for one of these reports (``--json``, ``--junit``, ``--gradescope``).
"""
