"""Chapter 8, clip-differences: finetuning CLIP to reason about pairwise differences (arXiv 2409.09721)."""
