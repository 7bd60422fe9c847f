"""Every chapter's assignment through the instructor's command (``python -m grading.autograde``,
nbgrader notebooks included): a correct, an untouched and a partly wrong submission get exactly the
points they should, exercise by exercise, in the gradebook.

The submissions are made from the repository (grading.submissions): the reference completed, the
released stub, and a stub with some exercises done by a wrong variant from ``tests/mutants/`` and
some left undone. A chapter's exercises may call each other (0.4 calls the student's 0.3, 2.5 their
2.4), so the partly wrong expectations below say which points a mistake costs downstream too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from course_lib import exercises
from grading.submissions import module_with, solved_module
from tests.grading.batch_helpers import ROOT, gradebook_scores, mutant, released_course, sandbox_processes, submit

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux's")]

# chapter module -> (exercise -> wrong variant's name in tests/mutants/<module>.py, or None for the stub;
#                    exercises that lose their points, the replaced ones and those that call them)
PARTLY_WRONG: dict[str, tuple[dict[str, str | None], set[str]]] = {
    "numerics": ({"0.3": "log_softmax_as_log_of_softmax", "0.4": None}, {"0.3", "0.4"}),
    "tokenization": ({"1.1": None, "1.5": "bpe_decode_latin1", "1.7": None}, {"1.1", "1.5", "1.7"}),
    # 2.5 repeats its key/value heads with the student's repeat_kv (2.4)
    "attention": ({"2.3": "mha_heads_split_in_the_wrong_order", "2.4": None}, {"2.3", "2.4", "2.5"}),
    # 3.9 rotates queries and keys with the student's apply_rope (3.3) and normalises with their rms_norm (3.5)
    "transformer": ({"3.1": None, "3.3": "rope_rotates_adjacent_pairs", "3.5": None,
                     "3.10": "count_tied_output_layer_twice"}, {"3.1", "3.3", "3.5", "3.9", "3.10"}),
    # 4.3, 4.9 and 4.10 decode with the student's decode_step (4.2); 4.8 filters with their top_p_filter
    # (4.5), and 4.9 samples from their process_logits
    "generation": ({"4.2": None, "4.5": "top_p_that_drops_the_crossing_token",
                    "4.11": "stop_sequence_by_its_last_token"}, {"4.2", "4.3", "4.5", "4.8", "4.9", "4.10", "4.11"}),
    # 5.8 computes its loss with the student's causal_lm_loss (5.4) and steps with their AdamW (5.10); their
    # clip_grad_norm_ (5.11) is a stub, so it clips with torch's
    "pretraining": ({"5.2": None, "5.4": "loss_without_shift", "5.9": "mfu_six_times_forward_flops",
                     "5.10": "adamw_with_l2_instead_of_decoupled_decay", "5.11": None},
                    {"5.2", "5.4", "5.8", "5.9", "5.10", "5.11"}),
}


def test_every_chapter_has_a_partly_wrong_submission_to_grade():
    assert set(PARTLY_WRONG) == set(exercises.CHAPTER_MODULES)


@pytest.mark.parametrize("chapter", exercises.CHAPTER_MODULES)
def test_correct_untouched_and_partly_wrong_submissions_get_their_exact_scores(chapter, tmp_path):
    if chapter not in PARTLY_WRONG:
        pytest.fail(f"no partly wrong submission written down for {chapter} (PARTLY_WRONG)")
    course = tmp_path / "course"
    release = released_course(course, chapter)
    points = {e.id: e.points for e in exercises.all_exercises() if e.module == chapter}
    replaced, losing = PARTLY_WRONG[chapter]
    modules = {
        "correct": solved_module(chapter),
        "untouched": (release / f"{chapter}.py").read_text(),
        "partly_wrong": module_with(chapter, {ex: name and mutant(chapter, name) for ex, name in replaced.items()}),
    }
    for student, source in modules.items():
        submit(course, student, source, assignment=chapter)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_", "PYTEST_", "PYTHON"))}
    env.update(COURSE_GRADING_DIR=str(course), PATH=str(ROOT / ".venv" / "bin") + os.pathsep + env.get("PATH", os.defpath))
    proc = subprocess.run([sys.executable, "-m", "grading.autograde", chapter, "--jobs", "2", "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print("\n" + proc.stdout)

    expected = {
        "correct": dict(points),
        "untouched": {ex: 0.0 for ex in points},
        "partly_wrong": {ex: 0.0 if ex in losing else p for ex, p in points.items()},
    }
    scores = gradebook_scores(course, expected, chapter)
    for student, per_exercise in expected.items():
        got = {ex: scores[student][f"test_{ex.replace('.', '_')}"][0] for ex in points}
        assert got == per_exercise, f"{chapter}, {student}: autograded {got}, expected {per_exercise}"
        written = [cell for cell in scores[student] if not cell.startswith("test_")]
        assert written, f"{chapter} has no written answer graded by hand"
        assert all(scores[student][cell] == (None, None) or scores[student][cell][0] in (None, 0) for cell in written)

        # The notebook ran to the end for everyone: no cell outside the test cells raised.
        notebook = course / "autograded" / student / chapter / f"{chapter}.ipynb"
        cells = json.loads(notebook.read_text())["cells"]
        errors = [c["metadata"].get("nbgrader", {}).get("grade_id") for c in cells if c["cell_type"] == "code"
                  and not str(c["metadata"].get("nbgrader", {}).get("grade_id", "")).startswith("test_")
                  and any(o["output_type"] == "error" for o in c.get("outputs", []))]
        assert not errors, f"{chapter}, {student}: cells that raised: {errors}"
    assert not sandbox_processes()


def test_the_grading_kernel_imports_earlier_chapters_finished_and_the_students_own_module(tmp_path):
    """What a notebook's experiments see in the batch grader's kernel (grading.kernel): a student of
    Chapter 2 has finished Chapters 0 and 1, and course_lib.attention is their own file."""
    notebook_dir = tmp_path / "submitted" / "attention"
    notebook_dir.mkdir(parents=True)
    own = module_with("attention", {"2.4": None}) + "\n# the student's own file\n"
    (notebook_dir / "attention.py").write_text(own)
    proc = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                           "from pathlib import Path; from grading.kernel import course_library; "
                           f"course_library(Path({str(tmp_path / 'lib')!r}), Path({str(notebook_dir)!r}))"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    package = tmp_path / "lib" / "course_lib"
    assert (package / "attention.py").read_text() == own
    for earlier in exercises.chapters_before("attention"):
        assert (package / f"{earlier}.py").read_text() == solved_module(earlier)
    later = exercises.CHAPTER_MODULES[exercises.CHAPTER_MODULES.index("attention") + 1:]
    for module in later:  # not finished for them: the stubs, as released
        assert (package / f"{module}.py").read_text() == (ROOT / "course_lib" / f"{module}.py").read_text()
