"""Benchmarks: the course's code against the library a user would pick instead, in the same run.

Each ``benchmarks/bench_<module>.py`` defines ``run(device) -> list[Row]``. The runner prints one
table of ratios (course time / library time; below 1 means the course's code is faster).
"""
