"""Per-example statistics of some members, as they are filled in (by a collection pass, or
by the training passes themselves with `--collect during`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import GradfilterError


@dataclass
class Collected:
    """One collected epoch's results for some members: [examples, members] arrays (and
    [examples, members, sketch_dim] float32 sketches, None when sketches are off)."""

    filled: np.ndarray  # bool: the value is there
    losses: np.ndarray
    sqnorms: np.ndarray
    sketches: np.ndarray | None = None

    @classmethod
    def empty(cls, n: int, members: int, sketch_dim: int = 0) -> Collected:
        sketches = (np.full((n, members, sketch_dim), np.nan, dtype=np.float32)
                    if sketch_dim else None)
        return cls(np.zeros((n, members), dtype=bool), np.full((n, members), np.nan),
                   np.full((n, members), np.nan), sketches)

    def put(self, rows: np.ndarray, column: int | slice, losses: np.ndarray,
            sqnorms: np.ndarray, sketches: np.ndarray | None = None) -> None:
        self.losses[rows, column], self.sqnorms[rows, column] = losses, sqnorms
        if self.sketches is not None:
            if sketches is None:
                raise GradfilterError("collection results without the sketches this run "
                                      "needs (a checkpoint made without --sketch-dim?)")
            self.sketches[rows, column] = sketches
        self.filled[rows, column] = True

    def column(self, k: int) -> dict[str, torch.Tensor]:
        """Column k as tensors (a checkpoint payload; `merge_column` takes it back)."""
        payload = {"filled": torch.from_numpy(self.filled[:, k].copy()),
                   "losses": torch.from_numpy(self.losses[:, k].copy()),
                   "sqnorms": torch.from_numpy(self.sqnorms[:, k].copy())}
        if self.sketches is not None:
            payload["sketches"] = torch.from_numpy(self.sketches[:, k].copy())
        return payload

    def merge_column(self, k: int, payload: dict[str, torch.Tensor]) -> None:
        """Column k takes the values `payload` (a `column`) holds; the others stay."""
        rows = np.flatnonzero(payload["filled"].numpy())
        if self.sketches is not None and "sketches" not in payload:
            raise GradfilterError("a checkpoint without the sketches this run needs (made "
                                  "with another --sketch-dim?)")
        sketches = payload["sketches"].numpy()[rows] if self.sketches is not None else None
        self.put(rows, k, payload["losses"].numpy()[rows], payload["sqnorms"].numpy()[rows],
                 sketches)
