"""nbgrader configuration of the course. nbgrader reads it when it runs in this folder (the repository
root); run every ``nbgrader`` command from here.

- The nbgrader *source* of each assignment is ``assignments/<chapter>/`` in this repository (the
  notebook made by ``scripts/make_assignment.py``). A submission carries the student's chapter
  module ``<chapter>.py`` beside the notebook (in the handout, a link to their ``course_lib/<chapter>.py``).
- Everything nbgrader writes (``release/``, ``submitted/``, ``autograded/``, ``feedback/`` and the
  gradebook) lives in the course folder: ``$COURSE_GRADING_DIR``, default ``_grading/`` here.
  Student work never lands in the repository's tracked files.
- The gradebook is SQLite in the course folder (``gradebook.db``) unless ``$COURSE_GRADEBOOK_URL``
  names another SQLAlchemy URL (``postgresql://user@host/course``).

Instructor flow (from the repository root)::

    nbgrader generate_assignment numerics     # student release in _grading/release/numerics
    nbgrader collect numerics                 # or place files in _grading/submitted/<student>/numerics/
    ./course grade numerics --jobs 4          # NOT plain `nbgrader autograde`: see below
    nbgrader formgrader / manual grading of the written answers
    nbgrader generate_feedback numerics       # HTML in _grading/feedback/<student>/numerics/
    nbgrader export --to grades.csv           # one row per student and assignment

Grade with ``./course grade`` (``python -m grading.autograde``): it runs ``nbgrader autograde`` for the
notebooks in a confined kernel (grading.kernel) with the test cells deferred, scores every code
exercise in the course's sandbox (grading.door, grading.sandbox) and writes those scores into this
gradebook as the test cells' ``auto_score``. Plain ``nbgrader autograde`` still works (its test cells
then run ``check()``), but its kernel runs student code with the grader's rights: a hostile notebook
can read the solutions or rewrite the gradebook there.
"""

import os
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
c = get_config()  # noqa: F821 (injected by traitlets)

sys.path.insert(0, str(here))
from course_lib.exercises import CHAPTER_MODULES  # noqa: E402  (light: no torch)

c.CourseDirectory.course_id = "llm-course"
course_folder = Path(os.environ.get("COURSE_GRADING_DIR") or here / "_grading").resolve()
course_folder.mkdir(parents=True, exist_ok=True)
c.CourseDirectory.root = str(course_folder)
c.CourseDirectory.source_directory = str(here / "assignments")  # absolute: nbgrader joins it as is
if os.environ.get("COURSE_GRADEBOOK_URL"):
    c.CourseDirectory.db_url = os.environ["COURSE_GRADEBOOK_URL"]

# The student's chapter module is what is graded: never replace it with the source's stub.
c.Autograde.exclude_overwriting = {module: [f"{module}.py"] for module in CHAPTER_MODULES}

# A test cell runs check() for the public and then the hidden tests, each within
# grading.check.DEFAULT_TIMEOUT (300 s); the cell's own limit lies above both together.
c.Execute.timeout = 900
c.Execute.startup_timeout = 120

# The grading kernel imports grading.check from this tree (also where course_lib is not installed).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(here)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
