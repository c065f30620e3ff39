"""Small models shared by the chapters."""
from .denoiser import Decoder, TemporalLayer, timestep_embedding
from .gpt import GPT, GPTConfig, sequence_losses

__all__ = ["Decoder", "TemporalLayer", "timestep_embedding", "GPT", "GPTConfig", "sequence_losses"]
