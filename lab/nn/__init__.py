"""Small models shared by the chapters."""
from .denoiser import Decoder, TemporalLayer, timestep_embedding
from .residual import ResidualMLP

__all__ = ["Decoder", "ResidualMLP", "TemporalLayer", "timestep_embedding"]
