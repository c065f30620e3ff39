"""The book's chapters: ids (stable, kebab-case), titles, papers and whether they are written yet."""
from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Chapter:
    id: str
    title: str
    arxiv: str
    ready: bool

    @property
    def package(self) -> str:
        """The chapter's code: ``lab.papers.<id with underscores>``."""
        return "lab.papers." + self.id.replace("-", "_")

    @property
    def notebook(self) -> Path:
        return Path(__file__).resolve().parent.parent / "book" / f"{self.id}.ipynb"


CHAPTERS = (
    Chapter("mode-interpolation", "Where diffusion models' hallucinations come from", "2406.09358", True),
    Chapter("ect", "Consistency models made easy", "2406.14548", True),
    Chapter("arimec", "Computing low-entropy couplings for large-support distributions", "2405.19540",
            True),
    Chapter("mimetic-init", "Mimetic initialization helps state space models learn to recall",
            "2410.11135", True),
    Chapter("mohawk", "Transformers to SSMs: distilling quadratic knowledge", "2408.10189", True),
    Chapter("ado", "Adaptive data optimization with scaling laws", "2410.11820", True),
    Chapter("context-inversion", "Context-parametric inversion in instruction tuning", "2410.10796",
            True),
    Chapter("clip-differences", "Finetuning CLIP to reason about differences", "2409.09721", True),
    Chapter("prompt-recovery", "Prompt recovery for image generation", "2408.06502", True),
    Chapter("fuse", "Unifying embedding spaces across tokenizers", "2408.04816", True),
)


def get(chapter_id: str) -> Chapter:
    """The chapter with this id; a ValueError lists the ids when it is unknown."""
    for chapter in CHAPTERS:
        if chapter.id == chapter_id:
            return chapter
    raise ValueError(f"chapter must be one of {', '.join(c.id for c in CHAPTERS)}; "
                     f"got {chapter_id!r}")
