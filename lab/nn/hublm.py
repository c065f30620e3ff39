"""Causal language models of the hub's architectures, built from a config (no weights needed),
behind the interface of :class:`lab.nn.gpt.GPT`: ``model(tokens)`` returns (B, T, vocab) logits,
so :func:`lab.nn.gpt.sequence_losses` and the trainer use them unchanged.

``transformers`` is imported only when a model is built; without it the error says what to
install. Nothing is downloaded: an architecture is a config, the weights start random.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import _check

# The Pythia suite's sizes (Biderman et al. 2023, arXiv 2304.01373): GPT-NeoX blocks with
# parallel attention and MLP, rotary embeddings on a quarter of each head, untied embeddings.
PYTHIA = {
    "pythia-70m": {"hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8,
                   "intermediate_size": 2048},
    "pythia-160m": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "intermediate_size": 3072},
}
PYTHIA_VOCAB = 50_304          # the suite's padded embedding size (its tokenizer has 50 277 ids)


class LogitsOnly(nn.Module):
    """Wraps a ``transformers`` causal LM so that ``forward(tokens)`` returns the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens, use_cache=False).logits


def pythia_from_scratch(size: str = "pythia-70m", *, vocab: int = PYTHIA_VOCAB, context: int = 2048) -> LogitsOnly:
    """A randomly initialised GPT-NeoX of one of the Pythia sizes (`size` in :data:`PYTHIA`)."""
    _check.choice("size", size, PYTHIA)
    vocab = _check.integer("vocab", vocab, low=2)
    context = _check.integer("context", context, low=1)
    try:
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    except ImportError as e:
        raise RuntimeError(f"the {size} architecture needs `transformers`: pip install 'lab[gpu]' "
                           "(or pip install transformers)") from e
    # rotary on a quarter of each head is GPT-NeoX's default (named differently across versions)
    config = GPTNeoXConfig(vocab_size=vocab, max_position_embeddings=context, use_parallel_residual=True,
                           tie_word_embeddings=False, **PYTHIA[size])
    return LogitsOnly(GPTNeoXForCausalLM(config))
