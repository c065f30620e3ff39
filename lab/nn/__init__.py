"""Small models shared by the chapters."""
from .denoiser import Decoder, TemporalLayer, timestep_embedding
from .gpt import GPT, GPTConfig, sequence_losses
from .residual import ResidualMLP
from .ssm import Mamba1, Mamba2, SSMLM
from .unet import SmallUNet

__all__ = ["Decoder", "ResidualMLP", "SmallUNet", "TemporalLayer", "timestep_embedding",
           "GPT", "GPTConfig", "sequence_losses", "Mamba1", "Mamba2", "SSMLM"]
