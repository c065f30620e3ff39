"""Chapter 3, arimec: low-entropy couplings and steganography (arXiv 2405.19540)."""
