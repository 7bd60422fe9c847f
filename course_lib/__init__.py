"""course_lib: the package behind the book. One module per chapter; the exercises are stubs.

Each chapter module holds the chapter's working code (data, training scaffolding, plotting) and its
exercises: functions decorated with :func:`course_lib.exercises.exercise`, whose bodies you complete.
``solutions/`` (instructors only) holds the reference for every exercise; which one runs is decided
in one place, :mod:`course_lib.exercises` (``COURSE_LIB_MODE``).
"""

from course_lib.exercises import CHAPTER_MODULES, get_mode, set_mode

__all__ = ["CHAPTER_MODULES", "get_mode", "set_mode"]
