"""Chapter 5, mohawk: distilling a Transformer into an SSM, stage by stage (arXiv 2408.10189)."""
