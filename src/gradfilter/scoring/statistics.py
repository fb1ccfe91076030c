"""Per-example statistics of some members, as they are filled in (by a collection pass, or
by the training passes themselves with `--collect during`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Collected:
    """One collected epoch's results for some members: [examples, members] arrays."""

    filled: np.ndarray  # bool: the value is there
    losses: np.ndarray
    sqnorms: np.ndarray

    @classmethod
    def empty(cls, n: int, members: int) -> Collected:
        return cls(np.zeros((n, members), dtype=bool), np.full((n, members), np.nan),
                   np.full((n, members), np.nan))

    def put(self, rows: np.ndarray, column: int | slice, losses: np.ndarray,
            sqnorms: np.ndarray) -> None:
        self.losses[rows, column], self.sqnorms[rows, column] = losses, sqnorms
        self.filled[rows, column] = True

    def column(self, k: int) -> dict[str, torch.Tensor]:
        """Column k as tensors (a checkpoint payload; `set_column` takes it back)."""
        return {"filled": torch.from_numpy(self.filled[:, k].copy()),
                "losses": torch.from_numpy(self.losses[:, k].copy()),
                "sqnorms": torch.from_numpy(self.sqnorms[:, k].copy())}

    def set_column(self, k: int, payload: dict[str, torch.Tensor]) -> None:
        self.filled[:, k] = payload["filled"].numpy()
        self.losses[:, k] = payload["losses"].numpy()
        self.sqnorms[:, k] = payload["sqnorms"].numpy()
