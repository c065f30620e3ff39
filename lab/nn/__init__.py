"""Small models shared by the chapters."""
from .denoiser import Decoder, TemporalLayer, timestep_embedding

__all__ = ["Decoder", "TemporalLayer", "timestep_embedding"]
