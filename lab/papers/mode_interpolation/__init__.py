"""Chapter 1, mode-interpolation: where diffusion models' hallucinations come from (arXiv 2406.09358)."""
