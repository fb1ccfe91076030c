"""Seeds derived from the user's one seed, each use of it a named stream of its own.

A stream depends only on its parts (e.g. (seed, member, epoch)), never on what else runs
beside it: member m of an M-member run is the same model as member m of any other run.
"""

from __future__ import annotations

import numpy as np

# The last part of the derived seed, keeping each use of the user's seed apart.
INIT_STREAM = 0  # (seed, member, INIT_STREAM): member m's LoRA initialisation
ORDER_STREAM = 1  # (seed, member, epoch, ORDER_STREAM): member m's data order in an epoch
SCHEDULE_STREAM = 2  # (seed, epoch, SCHEDULE_STREAM): the bucketed batches' shared schedule
RANDOM_STREAM = 7  # (seed, RANDOM_STREAM): the random baseline's draw
CORRUPTION_STREAM = 11  # (seed, CORRUPTION_STREAM): the noise benchmark's corruptions
SKETCH_STREAM = 13  # (seed, layer, part, SKETCH_STREAM): a gradient sketch's projection factors
LSH_STREAM = 17  # (seed, LSH_STREAM): the random hyperplanes of diversity-aware selection
HELD_OUT_STREAM = 19  # (seed, HELD_OUT_STREAM): the fine-tune benchmark's held-out records
# (seed, value, FINETUNE_STREAM): a fine-tune run's seed for the --seeds entry `value` (its
# LoRA initialisation and data order), whatever else --seeds lists
FINETUNE_STREAM = 23
RESELECT_STREAM = 29  # (seed, draw, RESELECT_STREAM): the fine-tune benchmark's random subsets
CLUSTER_STREAM = 31  # (seed, CLUSTER_STREAM): k-means of --stratify clusters
WITHIN_STREAM = 37  # (seed, WITHIN_STREAM): --within random's draw inside each stratum
SKETCH_PROJECTION_STREAM = 41  # (seed, ...): the sketches' projection for clustering


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on `parts` (e.g. (seed, member, epoch))."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
