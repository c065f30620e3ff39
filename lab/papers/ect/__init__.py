"""Chapter 2, ect: Easy Consistency Tuning (arXiv 2406.14548)."""
