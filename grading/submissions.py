"""Submissions made from the repository itself, for testing the graders (never hand-written copies).

:func:`solved_module` is ``course_lib/<module>.py`` with every exercise stub completed by the body of
the same-named function in ``solutions/<module>.py``: what a student who got everything right hands
in. :func:`module_with` does the same but takes the body of a given function for some exercises (a
wrong variant from ``tests/mutants/``) or leaves their stubs untouched (``None``).

Only the bodies are swapped: the stub's decorator, signature and docstring stay, so the result is
the student's file as the student would write it. Names a new body needs that the chapter module
does not define (a private helper such as ``_finite_max``, an import such as ``import torch.nn.
functional as F``) are carried over from the module the body comes from, transitively: imports go
beside the module's own imports, helpers at the end of the file (function bodies look names up when
they run, so the end is early enough).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from pathlib import Path
from typing import Callable, Mapping

from course_lib import exercises

_CARRIED_HEADER = "# -- carried over from {origin}: helpers the completed exercises use --"


def solved_module(module: str) -> str:
    """Source of ``course_lib/<module>.py`` with every exercise completed by the reference solution."""
    return module_with(module, {})


def module_with(module: str, replacements: Mapping[str, Callable | None]) -> str:
    """Source of ``course_lib/<module>.py`` with its exercises completed.

    ``replacements`` maps an exercise (id ``"0.3"`` or name ``"log_softmax"``) to a function whose
    body completes it instead of the reference solution's, or to ``None`` to leave its stub as it is.
    Every other exercise of ``module`` gets the body of its reference solution.
    """
    chosen: dict[str, Callable | None] = {}
    for key, replacement in replacements.items():
        ex = exercises.find(key)
        if ex.module != module:
            raise ValueError(f"exercise {key!r} belongs to chapter module {ex.module!r}, not {module!r}")
        chosen[ex.qualname] = replacement

    stub_path = _module_file(f"course_lib.{module}")
    stub = _Source(stub_path.read_text())
    reference = _Source(_module_file(f"solutions.{module}").read_text())
    origins: dict[Path, _Source] = {}

    edits: list[tuple[int, int, list[str]]] = []  # (first line, last line, new lines), 1-based inclusive
    carried: dict[str, list[str]] = {}  # origin -> source segments to append
    chapter = [e for e in exercises.all_exercises() if e.module == module]
    entry_points = {e.qualname.split(".")[0] for e in chapter}
    for ex in chapter:
        stub_fn = stub.function(ex.qualname)
        if stub_fn is None:
            raise ValueError(f"{stub_path} has no function {ex.qualname} (exercise {ex.id})")
        if ex.qualname in chosen and chosen[ex.qualname] is None:
            continue
        if ex.qualname in chosen:
            func = inspect.unwrap(chosen[ex.qualname])
            path = Path(inspect.getsourcefile(func)).resolve()
            if path not in origins:
                origins[path] = _Source(path.read_text())
                origins[path].inline_imports_from(f"solutions.{module}", reference)
            origin = origins[path]
            new_fn = origin.function_at(func.__code__.co_firstlineno, func.__name__)
            origin_name = _display(path)
        else:
            origin, origin_name = reference, f"solutions/{module}.py"
            new_fn = reference.function(ex.qualname)
            if new_fn is None:
                raise ValueError(f"solutions/{module}.py has no function {ex.qualname} (exercise {ex.id})")
        _check_parameters(stub_fn, new_fn, ex)
        first, last = _body_span(stub_fn)
        edits.append((first, last, _reindent(origin.body_lines(new_fn), stub_fn.body[0].col_offset)))
        for name in origin.names_needed(new_fn, defined=stub.top_level, entry_points=entry_points):
            carried.setdefault(origin_name, [])
            segment = origin.top_level[name]
            if segment not in carried[origin_name]:
                carried[origin_name].append(segment)

    lines = stub.text.splitlines()
    for first, last, new in sorted(edits, reverse=True):
        lines[first - 1:last] = new
    imports = [seg for segments in carried.values() for seg in segments if _is_import(seg)]
    if imports:  # beside the module's own imports (all of them above the first exercise)
        last_import = max((n.end_lineno for n in stub.tree.body if isinstance(n, (ast.Import, ast.ImportFrom))),
                          default=0)
        lines[last_import:last_import] = imports
    text = "\n".join(lines) + "\n"
    for origin_name, segments in carried.items():
        helpers = [seg for seg in segments if not _is_import(seg)]
        if helpers:
            text += "\n\n" + _CARRIED_HEADER.format(origin=origin_name) + "\n" + "\n\n\n".join(helpers) + "\n"
    compile(text, str(stub_path), "exec")  # a broken splice fails here, not in the grader
    for node in ast.walk(ast.parse(text)):  # what the handout leaves out, a student's file cannot import
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if _left_out_of_handout(name):
                raise ValueError(f"the completed course_lib/{module}.py would import {name} (line {node.lineno}), "
                                 f"which the student handout leaves out")
    return text


# -- helpers ------------------------------------------------------------------------------------
def _left_out_of_handout(module: str) -> bool:
    """Whether :func:`grading.release.build_handout` leaves ``module`` out: the reference solutions, the
    release script, and every subfolder of ``tests/`` (hidden tests, wrong variants, infrastructure)."""
    parts = module.split(".")
    return parts[0] == "solutions" or module == "grading.release" or (parts[0] == "tests" and len(parts) > 2)


class _Source:
    """A parsed Python file: its functions by qualified name and its top-level definitions."""

    def __init__(self, text: str):
        self.text = text
        self.tree = ast.parse(text)
        self._lines = text.splitlines()
        self.top_level: dict[str, str] = {}  # name -> source segment defining it (imports too)
        self._nodes: dict[str, ast.stmt] = {}
        for node in self.tree.body:
            for name in _defined_names(node):
                self.top_level[name] = self.segment(node)
                self._nodes[name] = node

    def segment(self, node: ast.stmt) -> str:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        return "\n".join(self._lines[start - 1:node.end_lineno])

    def function(self, qualname: str) -> ast.FunctionDef | None:
        body: list[ast.stmt] = self.tree.body
        node = None
        for part in qualname.split("."):
            node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                         and n.name == part), None)
            if node is None:
                return None
            body = node.body
        return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None

    def function_at(self, lineno: int, name: str) -> ast.FunctionDef:
        """The function named ``name`` whose ``def`` (or first decorator) is on line ``lineno``."""
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                if lineno in [node.lineno] + [d.lineno for d in node.decorator_list]:
                    return node
        raise ValueError(f"no function {name} at line {lineno}")

    def body_lines(self, fn: ast.FunctionDef) -> list[str]:
        """The lines of ``fn``'s body after its docstring, dedented."""
        body = fn.body[1:] if _has_docstring(fn) and len(fn.body) > 1 else fn.body
        return _dedent(self._lines[body[0].lineno - 1:fn.end_lineno], body[0].col_offset)

    def inline_imports_from(self, dotted: str, source: "_Source") -> None:
        """Names this file imports from the module ``dotted`` (whose text is ``source``) become that
        module's own definitions, as if written here; names only ``source`` defines come along for
        the definitions that use them. A wrong variant may import the reference's private helpers
        (``from solutions.quantization import _groups``): the student's file gets their code."""
        imported = [a for node in self.tree.body if isinstance(node, ast.ImportFrom)
                    and node.module == dotted and node.level == 0 for a in node.names]
        for alias in imported:
            name = alias.name
            if alias.asname not in (None, name) or name not in source.top_level:
                raise ValueError(f"cannot carry {name} from {dotted} (renamed, or not defined there)")
            self.top_level[name], self._nodes[name] = source.top_level[name], source._nodes[name]
        if imported:
            for name, segment in source.top_level.items():
                if name not in self.top_level:
                    self.top_level[name], self._nodes[name] = segment, source._nodes[name]

    def names_needed(self, fn: ast.FunctionDef, defined: Mapping[str, str], entry_points: set[str]) -> list[str]:
        """Top-level names of this file that ``fn`` uses, directly or through them, and ``defined``
        lacks; in the order they appear in this file. A name both define must mean the same, except
        the chapter's ``entry_points`` (the stub module's exercise, completed too, is the one meant)."""
        needed: set[str] = set()
        todo = _used_names(fn)
        while todo:
            name = todo.pop()
            if name in needed or name not in self.top_level or name == "annotations":
                continue
            if name in defined:
                # The reference may import a name from the chapter module itself: same meaning.
                same = (name in entry_points or _imports_from_course_lib(self.top_level[name])
                        or _meaning(defined[name], name) == _meaning(self.top_level[name], name))
                if not same:
                    raise ValueError(f"{name} means different things in the chapter module and in the "
                                     f"module a completion comes from; rename one of them")
                continue
            needed.add(name)
            todo |= _used_names(self._nodes[name])
        return [n for n in self.top_level if n in needed]


def _module_file(dotted: str) -> Path:
    return Path(importlib.import_module(dotted).__file__).resolve()


def _display(path: Path) -> str:
    root = _module_file("course_lib").parent.parent
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Import):
        return [a.asname or a.name.split(".")[0] for a in node.names]
    if isinstance(node, ast.ImportFrom):
        return [] if node.module == "__future__" else [a.asname or a.name for a in node.names]
    if isinstance(node, ast.Assign):  # names, and the names of tuple targets (IM_START, IM_END = ...)
        return [n.id for target in node.targets for n in ast.walk(target)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _used_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _is_import(segment: str) -> bool:
    return isinstance(ast.parse(textwrap.dedent(segment)).body[0], (ast.Import, ast.ImportFrom))


def _imports_from_course_lib(segment: str) -> bool:
    node = ast.parse(textwrap.dedent(segment)).body[0]
    return isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "course_lib"


def _meaning(segment: str, name: str) -> str:
    """What ``name`` stands for in the top-level statement ``segment``: the dotted path it imports
    (``from transformers import Cache, DynamicCache`` and ``from transformers import DynamicCache``
    mean the same ``DynamicCache``), else the statement itself, normalised."""
    node = ast.parse(textwrap.dedent(segment)).body[0]
    if isinstance(node, ast.Import):
        for alias in node.names:
            if (alias.asname or alias.name.split(".")[0]) == name:
                return alias.name if alias.asname else alias.name.split(".")[0]
    if isinstance(node, ast.ImportFrom):
        for alias in node.names:
            if (alias.asname or alias.name) == name:
                return f"{'.' * node.level}{node.module or ''}.{alias.name}"
    return ast.dump(node)


def _has_docstring(fn: ast.FunctionDef) -> bool:
    first = fn.body[0]
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def _body_span(fn: ast.FunctionDef) -> tuple[int, int]:
    """Lines (1-based, inclusive) of the stub's body after its docstring (the part replaced)."""
    if _has_docstring(fn):
        return fn.body[0].end_lineno + 1, fn.end_lineno
    return fn.body[0].lineno, fn.end_lineno


def _dedent(lines: list[str], width: int) -> list[str]:
    return [line[width:] if line[:width].strip() == "" else line.lstrip() for line in lines]


def _reindent(lines: list[str], width: int) -> list[str]:
    return [" " * width + line if line.strip() else "" for line in lines]


def _check_parameters(stub_fn: ast.FunctionDef, new_fn: ast.FunctionDef, ex: exercises.Exercise) -> None:
    def names(fn):
        a = fn.args
        return [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]

    if names(stub_fn) != names(new_fn):
        raise ValueError(f"exercise {ex.id} ({ex.qualname}): the completion's parameters {names(new_fn)} "
                         f"differ from the stub's {names(stub_fn)}")
