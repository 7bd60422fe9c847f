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

Instructor flow (from the repository root; the README says what to set up for release and collection)::

    nbgrader generate_assignment numerics     # student release in _grading/release/numerics
    nbgrader release_assignment numerics      # into the exchange ($COURSE_EXCHANGE_DIR), if there is one
    nbgrader collect numerics                 # or place files in _grading/submitted/<student>/numerics/
    ./course grade numerics --jobs 4          # every submission, sandboxed, in parallel, resumable
    ./course formgrader                       # nbgrader's web UI: manual grading, per-student Autograde
    nbgrader generate_feedback numerics       # HTML in _grading/feedback/<student>/numerics/
    nbgrader export --to grades.csv           # one row per student and assignment

Student code never runs with the grader's rights, whichever way a notebook is autograded. Plain
``nbgrader autograde`` (and formgrader's per-student Autograde button, which runs it) executes the
notebook in the confined kernel of grading.kernel with ``check()`` deferred, then scores the code
exercises in the course's sandbox and writes those scores into the gradebook
(grading.nbgrader_autograde; it refuses where the kernel cannot be confined). ``./course grade``
(grading.autograde) does the same for a whole class, scoring submissions in parallel and resuming
after a crash.

Feedback pages leave out the hidden-test lines of the test cells (nbgrader's ClearHiddenTests; the
scores stay) and carry their own MathJax (grading.mathjax); so does formgrader's grading view.
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

# Autograding defers the test cells (the sandbox scores the code), so a cell that runs long is the
# student's code hanging the kernel: the limit of `./course grade --cell-timeout`'s default.
c.Execute.timeout = 120
c.Execute.startup_timeout = 120

# Plain `nbgrader autograde` and formgrader's Autograde button: the confined kernel and the sandbox.
from grading.nbgrader_autograde import autograde_steps  # noqa: E402

c.Autograde.autograde_preprocessors = autograde_steps()

# Feedback: the test cells without their hidden-test lines (the scores come from the gradebook).
from nbgrader.converters import GenerateFeedback  # noqa: E402
from nbgrader.preprocessors import ClearHiddenTests  # noqa: E402

c.GenerateFeedback.preprocessors = [*GenerateFeedback.class_traits()["preprocessors"].default(), ClearHiddenTests]

# nbgrader's HTML (feedback, formgrader's grading view) with the course's MathJax, not a CDN's:
# grading/templates/base/mathjax.html.j2 shadows nbconvert's macro (see grading/mathjax.py).
import nbgrader  # noqa: E402
from grading.mathjax import TEMPLATES  # noqa: E402

nbgrader_templates = Path(nbgrader.__file__).parent / "server_extensions" / "formgrader" / "templates"
c.HTMLExporter.extra_template_basedirs = [str(TEMPLATES), str(nbgrader_templates)]
c.HTMLExporter.filters = {"course_mathjax": "grading.mathjax.inline_script"}

# Release and collection through an exchange folder shared with the students (README, "Instructors").
if os.environ.get("COURSE_EXCHANGE_DIR"):
    c.Exchange.root = str(Path(os.environ["COURSE_EXCHANGE_DIR"]).resolve())

# The grading kernel imports grading.check from this tree (also where course_lib is not installed).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(here)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
