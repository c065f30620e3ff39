"""Expected values of the FUSE chapter's exercises (out of the reader's sight)."""
from __future__ import annotations


def map_parameters(maps) -> int:
    """Numbers in all fitted maps T_k (d_A · d_B · k summed over the fitted k)."""
    return int(sum(T.numel() for T in maps.maps.values()))


def gcg_evaluations(cfg) -> int:
    """Exact evaluations of J in one GCG run: the start plus batch per step."""
    return 1 + cfg.steps * cfg.batch


def t_transpose_source_face(k: int = 4, face: int = 1) -> int:
    """Which face of A, transposed, becomes face `face` of Aᵀ when A has k faces."""
    return (-face) % k
