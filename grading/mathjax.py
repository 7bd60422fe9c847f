"""MathJax 3 in nbgrader's HTML pages, from the course's own copy instead of a CDN.

nbgrader's feedback template (the page a student gets back) and formgrader's grading view call
nbconvert's ``mathjax()`` macro without an address, which loads MathJax 2 from cdnjs: offline, the
math of the notebook's text and of the students' answers shows as raw LaTeX. ``nbgrader_config.py``
puts ``grading/templates`` before nbgrader's templates; its ``base/mathjax.html.j2`` replaces the
macro with :func:`inline_script` (registered as the Jinja filter ``course_mathjax``).

The script is written into the page itself: nbgrader releases a feedback page as a single HTML
file, so no folder of assets can travel with it. The component is ``tex-svg-full.js`` of the npm
package that ``scripts/fetch_mathjax.sh`` installs into ``.cache/npm-mathjax`` for the book: SVG
output needs no font files and the full TeX input needs no extension loaded later, so the page asks
for nothing at all (about 2.3 MB per page).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "templates"  # put first among nbconvert's template folders
PACKAGE = ROOT / ".cache" / "npm-mathjax" / "node_modules" / "mathjax" / "es5"
# The delimiters Jupyter uses; MathJax skips <pre> and <code>, so outputs and code stay as they are.
CONFIG = {
    "tex": {"inlineMath": [["$", "$"], ["\\(", "\\)"]], "displayMath": [["$$", "$$"], ["\\[", "\\]"]],
            "processEscapes": True, "processEnvironments": True, "tags": "ams"},
    "svg": {"fontCache": "global"},
}
# formgrader's grading view (formgrade.js) waits for MathJax 2's startup signal before it finishes
# setting up (keyboard shortcuts, focus on the first score); MathJax 3 gives the same moment as a promise.
MATHJAX2_STARTUP_SIGNAL = ("MathJax.Hub = {Startup: {signal: {Interest: function (listener) {\n"
                           "  MathJax.startup.promise.then(function () { listener('End'); });\n}}}};")


@functools.lru_cache(maxsize=2)
def inline_script(component: str) -> str:
    """``<script>`` elements that configure and load MathJax's ``component`` (a file of its ``es5``
    folder) inside the page. Raises FileNotFoundError, naming the fetch script, when it is missing."""
    path = PACKAGE / component
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `bash scripts/fetch_mathjax.sh` once (npm fetches "
                                "mathjax@3 into .cache/npm-mathjax)")
    code = path.read_text(encoding="utf-8").replace("</script", "<\\/script")  # cannot end the element early
    return (f"<script>window.MathJax = {json.dumps(CONFIG)};</script>\n<script>{code}</script>\n"
            f"<script>{MATHJAX2_STARTUP_SIGNAL}</script>")
