"""The grader: runs each stage's tests against a tree of code and tells the learner where they are.

``python -m grader ch2`` grades ``exercises/``; see ``python -m grader --help``.
"""
