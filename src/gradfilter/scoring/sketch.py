"""Per-example gradient sketches: a fixed, seeded random projection of each example's LoRA
gradient into `dim` numbers, formed from the same hooks that give the squared norms.

Every LoRA gradient block of a row is `g = G^T Z` for the row's T tokens: grad A = (dL/dh)^T x
([r, in]) and grad B = (dL/du)^T h ([out, r]). A block [p, q] is projected by the Kronecker
product of two Gaussian factors, Left [a, p] and Right [b, q] with a * b = dim:

    (Left ⊗ Right) vec(g) = vec(Left g Right^T) = vec((G Left^T)^T (Z Right^T))

so the T-long factors are projected first and no per-row p x q matrix is formed: the cost is
O(T (p a + q b + a b)) per row and block. The sketch of a row is the sum of its blocks'
projections (all target layers, A and B) divided by sqrt(dim): a projection of the whole
concatenated gradient by one matrix with independent N(0, 1/dim) entries blockwise, so
E[<s_i, s_j>] = <g_i, g_j> (Johnson-Lindenstrauss; squared norms and inner products preserved
in expectation). The factors depend only on (seed, layer name, A or B, the block's shape and
dim): never on the batch, the members sharing it, or the other layers.
"""

from __future__ import annotations

import hashlib
import math

import torch

from ..seeds import SKETCH_STREAM, derived_seed

PARTS = ("A", "B")


def split_dim(dim: int, p: int, q: int) -> tuple[int, int]:
    """(a, b) with a * b = dim: the factor on the block's smaller side (the LoRA rank) is the
    largest divisor of dim not above that side's size, the other side gets the rest."""
    small = min(p, q)
    k = max(d for d in range(1, min(small, dim) + 1) if dim % d == 0)
    return (k, dim // k) if p <= q else (dim // k, k)


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


class BlockProjection:
    """The Kronecker factors of one gradient block [p, q]: Left [a, p], Right [b, q]."""

    def __init__(self, seed: int, layer: str, part: str, p: int, q: int, dim: int,
                 device: torch.device) -> None:
        a, b = split_dim(dim, p, q)
        generator = torch.Generator().manual_seed(
            derived_seed(seed, _name_key(layer), PARTS.index(part), p, q, dim, SKETCH_STREAM))
        self.left = torch.randn(a, p, generator=generator).to(device)
        self.right = torch.randn(b, q, generator=generator).to(device)
        self.scale = 1.0 / math.sqrt(dim)

    def apply(self, out_grad: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """[rows, dim]: each row's projected block `out_grad^T inputs` (float32 [rows, T, p]
        and [rows, T, q])."""
        left = torch.matmul(out_grad, self.left.t())  # [rows, T, a]
        right = torch.matmul(inputs, self.right.t())  # [rows, T, b]
        return torch.bmm(left.transpose(1, 2), right).flatten(1) * self.scale

    def dense(self) -> torch.Tensor:
        """The explicit [dim, p * q] matrix (row-major vec of the block), for checking only."""
        return torch.kron(self.left, self.right) * self.scale


class SketchProjection:
    """The projection of every target layer's A and B gradients into `dim` numbers."""

    def __init__(self, dim: int, seed: int, shapes: dict[str, tuple[int, int, int]],
                 device: torch.device) -> None:
        """`shapes`: layer name -> (rank, in_features, out_features)."""
        if dim < 1:
            raise ValueError("a sketch needs dim >= 1")
        self.dim, self.seed, self.shapes = dim, seed, dict(shapes)
        self.blocks = {
            name: (BlockProjection(seed, name, "A", r, n_in, dim, device),
                   BlockProjection(seed, name, "B", n_out, r, dim, device))
            for name, (r, n_in, n_out) in shapes.items()}

    def metadata(self) -> dict:
        """What regenerates the projection: dim, seed and each block's factor shapes."""
        blocks = {}
        for name, (block_a, block_b) in self.blocks.items():
            blocks[name] = {part: [list(block.left.shape), list(block.right.shape)]
                            for part, block in zip(PARTS, (block_a, block_b), strict=True)}
        return {"dim": self.dim, "seed": self.seed, "stream": SKETCH_STREAM,
                "factors": "gaussian kronecker, scaled 1/sqrt(dim)", "blocks": blocks}
