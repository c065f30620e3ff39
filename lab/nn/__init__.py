"""Small models shared by the chapters."""
from .denoiser import Decoder, TemporalLayer, timestep_embedding
from .ssm import Mamba1, Mamba2, SSMLM

__all__ = ["Decoder", "Mamba1", "Mamba2", "SSMLM", "TemporalLayer", "timestep_embedding"]
