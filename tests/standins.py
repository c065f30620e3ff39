"""Small local stand-ins for hub models, shared by the tests of the gpu-scale code paths."""


def tiny_clip_config(transformers, *, vocab: int, positions: int, bos: int, eos: int, pad: int):
    """A one-layer ``transformers.CLIPConfig`` (width 16, 16-pixel images in 8-pixel patches,
    projection 8) with the given text vocabulary, length and special ids."""
    text = {"vocab_size": vocab, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": positions, "bos_token_id": bos,
            "eos_token_id": eos, "pad_token_id": pad}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 16, "patch_size": 8}
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
