"""Grading: how tests reach student code, the sandboxed runner, nbgrader glue and the handout.

- :mod:`grading.door`: the one narrow door between graded tests and student code (in-process,
  or forwarded to a sandboxed child process when grading a submission).
- :mod:`grading.codec`: the wire format of that door (JSON plus safetensors; never pickle).
- :mod:`grading.pytest_plugin`: the ``student`` and ``device`` fixtures, the ``gpu`` marker,
  selection by chapter or exercise, and the checks of the tests themselves (stubs, mutants).
- :mod:`grading.sandbox`: the operating-system limits of the door's child (bubblewrap's namespaces,
  uid, Landlock, rlimits) and the trusted side's helpers (uid slots, kill by uid, memory and CPU
  accounting, GPU checks).
- :mod:`grading.intake`: what is read from a submission folder (regular files, never links).
- :mod:`grading.check`: what an nbgrader autograded cell calls.
- :mod:`grading.autograde`: the batch grader (``./course grade``): sandboxed scores into nbgrader's
  gradebook; :mod:`grading.results` (its pytest plugin) and :mod:`grading.kernel` (the confined
  notebook kernel) serve it.
- :mod:`grading.release`: writes the student handout.
"""
