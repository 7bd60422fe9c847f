"""What plain ``nbgrader autograde`` does under the course's ``nbgrader_config.py``, and so what
formgrader's per-student "Autograde" button does: the course's confined kernel and the sandbox.

nbgrader alone runs a submitted notebook in an ordinary kernel with the grader's rights, and its
test cells would score the code exercises inside that kernel. ``nbgrader_config.py`` replaces one
step of nbgrader's autograde pipeline and adds one (:func:`autograde_steps`):

- :class:`ConfinedExecute` (instead of nbgrader's ``Execute``) runs the notebook in the
  ``course-sandbox`` kernel of :mod:`grading.kernel` (its own uid, Landlock, limits) with
  ``check()`` deferred, so a test cell scores nothing in the kernel. Where that kernel cannot be
  confined (no Landlock) it refuses, naming ``./course grade``.
- :class:`SandboxScores` (after nbgrader's ``SaveAutoGrades``) scores the submission's code
  exercises in the course's sandbox (:func:`grading.autograde.grade_code`), writes the scores
  into the gradebook as the test cells' ``auto_score`` (:func:`grading.autograde.write_scores`)
  and puts each exercise's result in its test cell's output, for the feedback.

``./course grade`` (:mod:`grading.autograde`) runs ``nbgrader autograde`` itself with
``COURSE_CHECK_DEFER`` set: it has chosen the kernel and scores the code in parallel on its own,
so both steps then do what nbgrader does (the configured kernel, no scoring here).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nbgrader.preprocessors import Execute, NbGraderPreprocessor

from grading import check

def _batch_grader_in_charge() -> bool:
    """Whether ``grading.autograde`` runs this nbgrader (it sets ``COURSE_CHECK_DEFER`` and scores
    the code exercises itself)."""
    return bool(os.environ.get(check.DEFER_ENV))


def kernel_confinement_missing() -> str | None:
    """Why the ``course-sandbox`` kernel cannot confine a notebook here, or None when it can.
    Its file-system confinement is Landlock (Linux 5.13 and later)."""
    from grading import sandbox

    if sandbox.landlock_abi() < 1:
        return "this Linux kernel has no Landlock, which the confined notebook kernel needs"
    return None


class ConfinedExecute(Execute):
    """nbgrader's ``Execute`` in the course's confined kernel, with ``check()`` deferred."""

    _kernel_dirs: list[str] | None = None

    def preprocess(self, nb, resources, km=None):
        if _batch_grader_in_charge():
            return super().preprocess(nb, resources, km)
        from grading import kernel, sandbox

        info = resources["nbgrader"]
        missing = kernel_confinement_missing()
        if missing:
            raise RuntimeError(
                f"not running {info['student']}'s notebook: {missing}, and nbgrader's own kernel would run "
                f"student code with the grader's rights. Grade the code exercises in the sandbox with "
                f"./course grade {info['assignment']} --student {info['student']}")
        with tempfile.TemporaryDirectory(prefix="course-jupyter-") as jupyter:
            self._kernel_dirs = [str(kernel.write_kernelspec(Path(jupyter)).parent)]
            try:
                return super().preprocess(nb, resources, km)
            finally:
                self._kernel_dirs = None
                if sandbox.privileged():
                    sandbox.sweep()  # what the kernel left running

    def create_kernel_manager(self):
        if self._kernel_dirs is None:
            return super().create_kernel_manager()
        from jupyter_client.kernelspec import KernelSpecManager

        from grading import kernel

        self.kernel_name = kernel.KERNEL_NAME
        self.km = self.kernel_manager_class(kernel_name=self.kernel_name, config=self.config,
                                            kernel_spec_manager=KernelSpecManager(kernel_dirs=self._kernel_dirs))
        return self.km

    async def async_start_new_kernel(self, **kwargs):
        if self._kernel_dirs is not None:
            from grading import autograde

            # The batch grader's notebook environment: check() deferred, no Python or pytest options.
            kwargs.setdefault("env", autograde.nbgrader_env(autograde.course_folder()))
        return await super().async_start_new_kernel(**kwargs)


class SandboxScores(NbGraderPreprocessor):
    """Score the submission's code exercises in the sandbox; gradebook and test-cell outputs."""

    def preprocess(self, nb, resources):
        if _batch_grader_in_charge():
            return nb, resources
        from grading import autograde, sandbox

        info = resources["nbgrader"]
        try:
            modules = autograde.assignment_modules(info["assignment"])
        except SystemExit as err:  # not a chapter of the course: a server must not exit over it
            raise RuntimeError(str(err)) from None
        chapter = autograde.assignment_exercises(modules)
        # The folder nbgrader autogrades: the submitted files, the student's chapter module kept.
        folder = Path(resources["metadata"]["path"])
        confinement = autograde.probe(modules)  # raises SandboxUnavailable, naming the missing layer
        log = autograde.course_folder() / "autograde" / info["assignment"] / "logs" / f"{info['student']}.log"
        gpu = next(iter(autograde.cuda_devices()), None)  # as the batch grader, on a GPU where there is one
        result = autograde.grade_code(folder, modules, sandbox.Limits.from_env(), log=log, gpu=gpu)
        autograde.write_scores(info["db_url"], info["assignment"], info["student"], result["exercises"], chapter)
        autograde.set_feedback_outputs(nb, result["exercises"], chapter)
        scored = sum(e["score"] for e in result["exercises"].values())
        self.log.info("code exercises of %s scored in the sandbox: %g of %g points (%s, %.1f s; %s)",
                      info["student"], scored, sum(ex.points for ex in chapter), result["status"],
                      result["seconds"], confinement)
        return nb, resources


def autograde_steps() -> list[type]:
    """nbgrader's autograde preprocessors with ``Execute`` replaced by :class:`ConfinedExecute` and
    :class:`SandboxScores` right after ``SaveAutoGrades`` (for ``Autograde.autograde_preprocessors``)."""
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import SaveAutoGrades

    steps = []
    for step in Autograde.class_traits()["autograde_preprocessors"].default():
        steps.append(ConfinedExecute if step is Execute else step)
        if step is SaveAutoGrades:
            steps.append(SandboxScores)
    if ConfinedExecute not in steps or SandboxScores not in steps:
        raise RuntimeError(f"nbgrader's autograde steps are not what grading.nbgrader_autograde expects: {steps}")
    return steps
