"""Chapter 6, ado: adaptive data optimization with per-domain scaling laws (arXiv 2410.11820)."""
