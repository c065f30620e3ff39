"""Results of larger-scale runs that ship with the book, and what a page shows until they exist."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Pending:
    """Stands in for results that a larger scale produces and that no one has run yet."""
    what: str
    scale: str = "gpu"

    def _repr_markdown_(self) -> str:
        return (f"**Awaiting a {self.scale}-scale run.** {self.what} is computed at `{self.scale}` scale "
                f"(`LAB_SCALE={self.scale}`, about 20 minutes on one GPU); its results have not been "
                "saved with the book yet, so nothing is shown here rather than something made up.")

    def __repr__(self) -> str:
        return f"Pending({self.what!r}, awaiting a {self.scale}-scale run)"
