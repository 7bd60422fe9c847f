"""Tests of the grading infrastructure (not part of the student handout)."""
