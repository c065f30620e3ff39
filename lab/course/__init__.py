"""The book as a course: nbgrader assignments built from the chapters (``python -m lab course
build``), the student's feedback in them, and the instructor's solutions."""
