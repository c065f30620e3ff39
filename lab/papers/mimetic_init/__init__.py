"""Chapter 4, mimetic-init: mimetic initialization helps SSMs learn to recall (arXiv 2410.11135)."""
