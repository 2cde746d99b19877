"""The end-to-end tasks of the course: data and training recipes the e2e stages run.

They belong to the project, not to the learner: the stage tests, the grader's artifacts, the
notebooks and the benchmarks import them from here, so the task cannot be made easier from the
exercise tree. Each works on whatever tree :mod:`grader.tree` binds.
"""
