"""How far a sketch's cosine is from the full gradients' cosine (docs/method.md, selecting for
a target): the tests' tiny GPT-2 (tests/tiny.py) with a trained-like adapter, each of the
tests' 4 conversations' LoRA gradient (one backward() each, through PEFT) against their mean,
projected by the seeded sketch of several dims and 20 seeds.

    PYTHONPATH=src python benchmarks/perf/sketch_cosine_error.py /tmp/sketch-error
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from test_gradnorms import _ensemble
from test_sketches import _encoded, _explicit_sketch, _reference_gradients
from tiny import make_proxy


def _cosines(vectors: list[torch.Tensor]) -> np.ndarray:
    mean = sum(vectors) / len(vectors)
    return np.array([float(v @ mean / (v.norm() * mean.norm())) for v in vectors])


def main(work: Path, dims=(16, 128, 1024), seeds: int = 20) -> None:
    torch.set_num_threads(1)
    proxy = make_proxy(work / "gpt2", "gpt2")
    encoded = _encoded(proxy)
    ensemble = _ensemble(proxy)
    gradients = _reference_gradients(proxy, ensemble, 0, encoded)
    full = _cosines([torch.cat([g.double().flatten() for name in ensemble.layers
                                for g in gradient[name]]) for gradient in gradients])
    print(f"full-gradient cosines with the mean: {full.round(3).tolist()}")
    for dim in dims:
        errors = np.array([np.abs(_cosines([_explicit_sketch(
            ensemble.sketch_projection(dim, seed), g) for g in gradients]) - full)
            for seed in range(seeds)])
        print(f"dim {dim}: |sketch cosine - full cosine| mean {errors.mean():.3f}, "
              f"95th percentile {np.quantile(errors, 0.95):.3f}, max {errors.max():.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
