"""Every chapter's assignment, from the student's handout to the instructor's gradebook.

For each chapter, one grading run of the instructor's command (``python -m grading.autograde``,
nbgrader notebooks included) grades three submissions, and the tests below read its results:

- **the student's path, walked** (``walker``): in a copy of the handout (``./course release``), a
  student who finished the earlier chapters works in ``course_lib/<chapter>.py``, the one file the
  README names, and leaves it *partly wrong*: some exercises done right, some by a wrong variant from
  ``tests/mutants/``, some untouched (:data:`PARTLY_WRONG`). They run ``pytest --exercise`` on a
  finished exercise and on an untouched one; run the notebook's setup cell and those two exercises'
  test cells in a kernel of the handout's Python; and hand in the assignment's folder as
  ``nbgrader submit`` or a zip would (the file beside the notebook is a link: the copy stores what it
  points to). Exactly the points of the exercises they got right must appear in the gradebook. A
  chapter's exercises may call each other (0.4 calls the student's 0.3, 2.5 their 2.4), so
  :data:`PARTLY_WRONG` also says which points a mistake costs downstream.
- **made from the repository** (grading.submissions): the reference completed (``correct``) and the
  stub as released (``untouched``).

The autograded notebooks show that the experiments run to the end on the stub, on a partly wrong
module and on the reference, report unfinished exercises, and print what a finished chapter prints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib import exercises
from grading import release, sandbox
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
    # 6.7 signs with the student's minhash_signatures (6.5) and bands with their lsh_candidate_pairs (6.6)
    "instruct": ({"6.1": None, "6.5": "minhash_max_instead_of_min", "6.12": "few_shot_prompt_with_a_trailing_space"},
                 {"6.1", "6.5", "6.7", "6.12"}),
    # Chapter 7's exercises do not call each other
    "sft": ({"7.2": None, "7.3": "sft_loss_mean_of_example_means"}, {"7.2", "7.3"}),
    # every LoRALinear draws its adapter with the student's init_lora_weights (8.1): with B random, the
    # model their inject_lora (8.5) adapts no longer starts as the pretrained one
    "lora": ({"8.1": "init_b_random", "8.12": "pack_nibbles_first_in_the_low_bits", "8.16": None},
             {"8.1", "8.5", "8.12", "8.16"}),
    # Chapter 9's exercises do not call each other's entry points (9.2's reference calls 9.1, which stays right)
    "alignment": ({"9.2": "sequence_log_probs_including_the_prompt", "9.7": "gae_running_past_the_end", "9.12": None},
                  {"9.2", "9.7", "9.12"}),
    # Chapter 10's exercises call each other only in corpus_bleu (10.5 tokenizes with the student's 10.4)
    "evaluation": ({"10.1": "perplexity_as_the_mean_of_batch_losses", "10.6": "chrf_averaging_f_scores_over_orders", "10.9": None},
                   {"10.1", "10.6", "10.9"}),
    # QuantizedLinear.forward (11.6) dequantizes with the student's dequantize (11.3), and awq_search_scales
    # (11.15) rounds through round_to_nearest, their 11.2 and 11.3: with group scales cycled, both go wrong
    "quantization": ({"11.3": "dequantize_cycling_the_group_scales", "11.9": "q4_0_nibbles_swapped", "11.13": None},
                     {"11.3", "11.6", "11.9", "11.13", "11.15"}),
}

# What each chapter's experiments print when every exercise is right.
SOLVED_OUTPUT = {
    "numerics": ["cross_entropy: yours"],
    "tokenization": ["joined back to the text: True", "train_bpe: 768 merges", " 1024 tokens: ",
                     "word_tokenize: ", "decode(encode(held-out text)) == text: True",
                     "encode_iterable over", "gives the same ids: True\ntokenizers.Tokenizer from your "
                     "tokenizer.json gives the same ids: True", "tokenizers' trainer: 768 merges", "bytes/token"],
}


def _chapter_exercises(chapter: str) -> list[exercises.Exercise]:
    return [e for e in exercises.all_exercises() if e.module == chapter]


def _grade_id(cell) -> str:
    return cell.metadata.get("nbgrader", {}).get("grade_id", "")


def _printed(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _errors(cell) -> list[str]:
    return [f"{o['ename']}: {o['evalue']}" for o in cell.get("outputs", []) if o.get("output_type") == "error"]


# -- the student's path --------------------------------------------------------------------------------
def _student_kernel(python: Path, where: Path):
    """A manager of a Jupyter kernel of the handout's Python (``python3``, as a student's own install
    names it), and nothing else: no kernel of this process's Python can stand in for it."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec = where / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (handout)", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(where / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def walk(chapter: str, handout: Path, tmp_path: Path) -> dict:
    """The student's path through one chapter (see the module docstring); what they saw."""
    mine = tmp_path / "handout"
    shutil.copytree(handout, mine, symlinks=True)
    replaced, losing = PARTLY_WRONG[chapter]
    chapter_exercises = _chapter_exercises(chapter)
    done = next(e for e in chapter_exercises if e.id not in losing)
    undone = next(e for e in chapter_exercises if e.id in replaced and replaced[e.id] is None)
    for earlier in exercises.chapters_before(chapter):  # a student at this chapter finished the earlier ones
        (mine / "course_lib" / f"{earlier}.py").write_text(solved_module(earlier))
    own = mine / "course_lib" / f"{chapter}.py"  # the one file the README names
    own.write_text(module_with(chapter, {ex: name and mutant(chapter, name) for ex, name in replaced.items()}))

    python = release.student_python(mine, tmp_path / "venv")
    env = {**release.student_env(), "OMP_NUM_THREADS": "1"}
    env.pop("MPLBACKEND", None)  # a student's kernel draws inline
    seen = {}
    for ex in (done, undone):
        proc = subprocess.run([str(python), "-m", "pytest", "--exercise", ex.id, "-p", "no:cacheprovider"],
                              cwd=mine, env=env, capture_output=True, text=True, timeout=600)
        seen[f"pytest {ex.id}"] = (proc.returncode, proc.stdout + proc.stderr)

    # The notebook: its setup and the test cells of those two exercises (all of it, experiments
    # included, runs again when it is graded).
    folder = mine / "assignments" / chapter
    nb = nbformat.read(folder / f"{chapter}.ipynb", as_version=4)
    wanted = {"helpers", "setup", f"test_{done.id.replace('.', '_')}", f"test_{undone.id.replace('.', '_')}"}
    from nbclient import NotebookClient

    ran = nbformat.from_dict(json.loads(json.dumps(nb)))
    ran.cells = [c for c in ran.cells if c.cell_type == "code" and _grade_id(c) in wanted]
    kernel = _student_kernel(python, tmp_path / "jupyter")
    try:
        NotebookClient(ran, km=kernel, timeout=600, allow_errors=True,
                       resources={"metadata": {"path": str(folder)}}).execute(env=env)
    finally:  # a client given a kernel manager leaves its kernel running
        if kernel.has_kernel:
            kernel.shutdown_kernel(now=True)
    by_id = {c.id: c for c in ran.cells}
    for cell in nb.cells:  # the student's notebook, with the outputs of what they ran
        if cell.id in by_id:
            cell.outputs = by_id[cell.id].outputs
    nbformat.write(nb, folder / f"{chapter}.ipynb")
    seen["cells"] = {_grade_id(c): c for c in ran.cells}
    seen["done"], seen["undone"], seen["folder"] = done, undone, folder
    return seen


def _autograded_cells(graded, student: str) -> list:
    path = graded["course"] / "autograded" / student / graded["chapter"] / f"{graded['chapter']}.ipynb"
    return nbformat.read(path, as_version=4).cells


def _scores(graded, student: str) -> dict[str, float]:
    proc = graded["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cells = graded["scores"][student]
    return {ex.id: cells[f"test_{ex.id.replace('.', '_')}"][0] for ex in _chapter_exercises(graded["chapter"])}


def test_every_chapter_has_a_partly_wrong_submission_to_grade():
    assert set(PARTLY_WRONG) == set(exercises.CHAPTER_MODULES)


@pytest.mark.parametrize("chapter", sorted(PARTLY_WRONG))
def test_a_partly_wrong_submission_imports_only_what_the_handout_has(chapter):
    """The walker's file is made quickly here (``module_with`` refuses one that imports what the handout
    leaves out), so that a wrong variant importing from the reference fails in seconds rather than
    after the chapter's graded walk."""
    replaced, _ = PARTLY_WRONG[chapter]
    module_with(chapter, {ex: name and mutant(chapter, name) for ex, name in replaced.items()})


def test_module_with_refuses_a_completion_that_imports_what_the_handout_leaves_out(tmp_path, monkeypatch):
    variants = tmp_path / "variants_that_import.py"
    variants.write_text("from tests.mutants.numerics import logsumexp_naive\n\n\ndef log_softmax(logits, dim=-1):\n"
                        "    return logits - logsumexp_naive(logits, dim, keepdim=True)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import variants_that_import

    with pytest.raises(ValueError, match="tests.mutants"):
        module_with("numerics", {"log_softmax": variants_that_import.log_softmax})


class ChapterGrading:
    """One chapter's grading, read by the tests below (one subclass per chapter, made after the class:
    pytest-xdist's ``--dist loadscope`` keeps a class's tests on one worker, so each chapter is graded
    once, and different chapters on different workers)."""

    chapter: str

    @pytest.fixture(scope="class")
    def graded(self, request, handout, tmp_path_factory):
        """One chapter graded: the walk and the two made-up submissions, through the instructor's command."""
        chapter = request.cls.chapter
        if chapter not in PARTLY_WRONG:
            pytest.fail(f"no partly wrong submission written down for {chapter} (PARTLY_WRONG)")
        tmp_path = tmp_path_factory.mktemp(f"grading-{chapter}")
        walked = walk(chapter, handout, tmp_path / "student")

        course = tmp_path / "course"
        released_course(course, chapter)
        submit(course, "correct", solved_module(chapter), assignment=chapter)
        submit(course, "untouched", (ROOT / "course_lib" / f"{chapter}.py").read_text(), assignment=chapter)
        handed_in = course / "submitted" / "walker" / chapter  # what `nbgrader submit`/`nbgrader collect` store
        shutil.copytree(walked["folder"], handed_in, symlinks=False)
        (handed_in / "timestamp.txt").write_text("2026-11-26 12:00:00.000000 UTC")

        env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_", "PYTEST_", "PYTHON"))}
        env.update(COURSE_GRADING_DIR=str(course), COURSE_SANDBOX_UID_BASE=os.environ[sandbox.UID_BASE_ENV],
                   PATH=str(ROOT / ".venv" / "bin") + os.pathsep + env.get("PATH", os.defpath))
        proc = subprocess.run([sys.executable, "-m", "grading.autograde", chapter, "--jobs", "2", "--no-progress"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
        students = ["correct", "untouched", "walker"]
        return {"chapter": chapter, "walked": walked, "proc": proc, "course": course,
                "scores": gradebook_scores(course, students, chapter) if proc.returncode == 0 else None,
                "no_sandbox_left": not sandbox_processes()}

    def test_the_student_edits_one_file_and_pytest_reads_it(self, graded):
        walked = graded["walked"]
        done, undone = walked["done"], walked["undone"]
        status, output = walked[f"pytest {done.id}"]
        assert status == 0 and " passed" in output and "failed" not in output, output[-3000:]
        status, output = walked[f"pytest {undone.id}"]
        assert status == 1, output[-3000:]
        first_failure = output.split("= FAILURES =", 1)[1].split("\n")[2]  # the line under the test's name
        assert first_failure.startswith(f"NotImplementedError: Exercise {undone.id}"), output[-3000:]


    def test_the_notebook_reads_the_same_file_and_its_test_cells_agree_with_pytest(self, graded):
        walked, chapter = graded["walked"], graded["chapter"]
        cells = walked["cells"]
        setup = _printed(cells["setup"])
        assert f"{chapter}.py here is your" in setup and not _errors(cells["setup"]), setup
        done, undone = walked["done"], walked["undone"]
        passed = cells[f"test_{done.id.replace('.', '_')}"]
        assert not _errors(passed) and "passed" in _printed(passed), _printed(passed) + str(_errors(passed))
        failed = cells[f"test_{undone.id.replace('.', '_')}"]
        assert any(f"NotImplementedError: Exercise {undone.id}" in e for e in _errors(failed)), _errors(failed)


    def test_what_the_student_hands_in_is_graded_exercise_by_exercise(self, graded):
        chapter = graded["chapter"]
        _, losing = PARTLY_WRONG[chapter]
        points = {e.id: e.points for e in _chapter_exercises(chapter)}
        assert _scores(graded, "walker") == {ex: 0.0 if ex in losing else p for ex, p in points.items()}


    def test_correct_and_untouched_submissions_get_their_exact_scores(self, graded):
        chapter = graded["chapter"]
        points = {e.id: e.points for e in _chapter_exercises(chapter)}
        expected = {"correct": dict(points), "untouched": {ex: 0.0 for ex in points}}
        for student in ("correct", "untouched", "walker"):
            if student in expected:
                assert _scores(graded, student) == expected[student], f"{chapter}, {student}"
            written = [cell for cell in graded["scores"][student] if not cell.startswith("test_")]
            assert written, f"{chapter} has no written answer graded by hand"
            assert all(graded["scores"][student][cell] == (None, None) or graded["scores"][student][cell][0] in (None, 0)
                       for cell in written)
        assert graded["no_sandbox_left"]


    def test_the_experiments_run_to_the_end_on_the_stub_on_a_partly_wrong_module_and_on_the_reference(self, graded):
        chapter = graded["chapter"]
        chapter_index = exercises.CHAPTER_MODULES.index(chapter)
        first = _chapter_exercises(chapter)[0]
        for student in ("correct", "untouched", "walker"):
            cells = _autograded_cells(graded, student)
            errors = {_grade_id(c): _errors(c) for c in cells if c.cell_type == "code"
                      and not _grade_id(c).startswith("test_") and _errors(c)}
            assert not errors, f"{chapter}, {student}: cells that raised: {errors}"
        untouched = "".join(_printed(c) for c in _autograded_cells(graded, "untouched"))
        assert f"not done yet: Exercise {first.id}" in untouched, untouched[-2000:]
        walker = "".join(_printed(c) for c in _autograded_cells(graded, "walker") if not _grade_id(c).startswith("test_"))
        assert re.search(rf"not done yet: Exercise {chapter_index}\.\d+:", walker), "an unfinished exercise is reported"
        correct = "".join(_printed(c) for c in _autograded_cells(graded, "correct") if not _grade_id(c).startswith("test_"))
        assert "not done yet" not in correct and " raised " not in correct and "Error:" not in correct, correct[-3000:]
        for expected in SOLVED_OUTPUT.get(chapter, []):
            assert expected in correct, f"{expected!r} not in\n{correct}"
        if chapter == "tokenization":
            compression = next(c for c in _autograded_cells(graded, "correct") if _grade_id(c) == "experiment_compression")
            assert any("image/png" in o.get("data", {}) for o in compression.outputs), "no plot"


for _chapter in exercises.CHAPTER_MODULES:
    globals()[f"TestChapter_{_chapter}"] = type(f"TestChapter_{_chapter}", (ChapterGrading,), {"chapter": _chapter})


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
