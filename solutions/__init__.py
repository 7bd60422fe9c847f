"""Reference solutions, one module per ``course_lib`` chapter module (instructors only).

Each module defines the exercises of its chapter under the same qualified names and signatures.
Students never receive this package; ``course_lib`` reaches it only in solution mode.
"""
