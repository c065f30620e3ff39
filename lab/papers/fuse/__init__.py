"""FUSE: one gradient across two tokenizers (arXiv 2408.04816)."""
