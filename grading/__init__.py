"""Grading: how tests reach student code, the sandboxed runner, nbgrader glue and the handout.

- :mod:`grading.door`: the one narrow door between graded tests and student code (in-process,
  or forwarded to a sandboxed child process when grading a submission).
- :mod:`grading.codec`: the wire format of that door (JSON plus safetensors; never pickle).
- :mod:`grading.pytest_plugin`: the ``student`` and ``device`` fixtures, the ``gpu`` marker,
  selection by chapter or exercise, and the checks of the tests themselves (stubs, mutants).
- :mod:`grading.check`: what an nbgrader autograded cell calls.
- :mod:`grading.release`: writes the student handout.
"""
