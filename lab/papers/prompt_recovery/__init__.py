"""Prompt recovery for image generation models (Williams, Schwarzschild, Kolter 2024)."""
