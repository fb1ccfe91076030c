"""Diversity-aware selection: top-k by utility with near-duplicate suppression, measured by the
cosine similarity of gradient sketches (numpy only: no torch here).

Greedy, in the utility's order (ties by position): a record is kept unless its similarity to a
record already kept is at least `threshold`; then it is removed, and counted in the group of
the highest-ranked kept record it duplicates. It stops once `count` records are kept, so the
subset has the size plain top-k would have. `threshold` is the trade-off: 1 keeps (almost) the
plain top-k, lower values remove more redundancy at the cost of lower-utility replacements.

Similarity of records i and j: the mean over members m of cos(s_i^m, s_j^m), the sketches of
the late epoch. Members are compared one by one because each member's LoRA parameters are its
own coordinates (a random A per member); with f = concat_m(s^m / |s^m|) / sqrt(M), it is the
dot product f_i . f_j.

Which pairs are compared: those sharing a bucket in at least one of `tables` tables of
random-hyperplane LSH (`bits` signs of (f - mu) . w per table, mu the mean feature of the first
pool read: centring balances the buckets of gradients that share a common direction). Pairs
with cosine c collide in one table with probability about (1 - angle/pi)^bits, so near-
duplicates are found with high probability and unrelated records are rarely compared. A
candidate pair is then screened by a 256-bit sign signature of the raw features (the share of
differing bits estimates angle/pi): only pairs within four standard deviations of the
threshold's angle have their cosine computed. Records are processed in blocks in rank order;
per (record, table), at most `max_candidates` kept records of its bucket (the highest-ranked)
are looked at, so the time is bounded whatever the data; how often that cap bit is reported.
`bits=0` compares every pair exactly (no buckets, no screen, no cap): the definition, for
small selections and for tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import GradfilterError
from .seeds import LSH_STREAM, derived_seed
from .selection import Selection

DIVERSITY = ("none", "dedup")
DEFAULT_THRESHOLD = 0.95  # measured: docs/results.md, near-duplicates
TABLES = 16
MAX_CANDIDATES = 256
BLOCK = 2048
SIGNATURE_BITS = 256
GROUPS_REPORTED = 10
RECORDS_PER_GROUP = 20

FeatureLoader = Callable[[np.ndarray], np.ndarray]  # record indices -> [n, M * dim] unit rows


@dataclass
class DedupReport:
    """What near-duplicate suppression did, for the run record."""

    threshold: float
    similarity: str = "mean over members of the cosine of the late-epoch gradient sketches"
    kept: int = 0
    removed: int = 0
    processed: int = 0  # records looked at, in rank order (kept + removed)
    pool_reads: int = 0  # passes over the table's sketch columns
    bits: int = 0
    tables: int = TABLES
    candidates: int = 0  # pairs sharing a bucket (a pair may count once per table)
    comparisons: int = 0  # of those, the pairs left by the signature screen: cosine computed
    capped_lookups: int = 0  # (record, table) lookups cut to max_candidates
    groups: list[dict] = field(default_factory=list)  # the largest, by records removed

    def as_dict(self) -> dict:
        return asdict(self)


def lsh_bits(count: int) -> int:
    """Bits per table for `count` kept records: about 16 kept records per bucket, 0 (exact,
    every pair compared) for small selections."""
    return int(min(24, max(0, math.ceil(math.log2(max(count, 1) / 16)))))


class _Greedy:
    """The greedy state: kept records (pool positions, rank order) and their LSH buckets."""

    def __init__(self, features: np.ndarray, count: int, threshold: float, bits: int,
                 tables: int, seed: int, max_candidates: int) -> None:
        self.count, self.threshold = count, threshold
        self.exact = bits == 0
        self.bits, self.tables = bits, tables if bits else 1
        self.max_candidates = max_candidates if bits else np.iinfo(np.int64).max
        rng = np.random.default_rng(derived_seed(seed, LSH_STREAM))
        dim = features.shape[1]
        self.planes = rng.standard_normal((dim, self.tables * bits)).astype(np.float32)
        self.signature_planes = rng.standard_normal((dim, SIGNATURE_BITS)).astype(np.float32)
        self.centre = _mean_row(features)
        self.weights = (1 << np.arange(bits, dtype=np.int64)) if bits else None
        angle = math.acos(max(-1.0, min(1.0, threshold))) / math.pi
        spread = math.sqrt(SIGNATURE_BITS * angle * (1 - angle))
        self.max_hamming = math.ceil(SIGNATURE_BITS * angle + 4 * spread)
        self.signatures = np.zeros((0, SIGNATURE_BITS // 64), np.uint64)
        self.buckets = [np.zeros(0, np.int64) for _ in range(self.tables)]  # key << 32 | pos
        self.kept: list[int] = []
        self.duplicate_of: dict[int, int] = {}  # removed pool position -> kept pool position
        self.processed = 0
        self.candidates = 0
        self.comparisons = 0
        self.capped = 0

    @property
    def done(self) -> bool:
        return len(self.kept) >= self.count

    def extend(self, features: np.ndarray) -> None:
        """Sign signatures of the pool rows added since the last call."""
        rows = []
        for start in range(len(self.signatures), len(features), BLOCK):
            block = features[start:start + BLOCK].astype(np.float32)
            bits = np.packbits(block @ self.signature_planes > 0, axis=1, bitorder="little")
            rows.append(bits.view(np.uint64))
        self.signatures = np.concatenate([self.signatures, *rows])

    def keys(self, block: np.ndarray) -> np.ndarray:
        """[n, tables] bucket keys of feature rows."""
        if not self.bits:
            return np.zeros((len(block), 1), np.int64)
        signs = ((block - self.centre) @ self.planes) > 0
        return signs.reshape(len(block), self.tables, self.bits).astype(np.int64) @ self.weights

    def process(self, features: np.ndarray, start: int, stop: int) -> None:
        """Pool positions start..stop-1 (rank order), until `count` are kept."""
        block = features[start:stop].astype(np.float32)
        keys = self.keys(block)
        best_kept = self._against_kept(features, block, keys, start)
        earlier = self._within_block(features, block, keys, start)
        kept_here: list[int] = []
        kept_mask = np.zeros(len(block), bool)
        for i in range(len(block)):
            if len(self.kept) + len(kept_here) >= self.count:
                break
            self.processed += 1
            found = int(best_kept[i])
            if found < 0 and i in earlier:
                partners = earlier[i]
                partners = partners[kept_mask[partners]]
                found = start + int(partners.min()) if len(partners) else -1
            if found >= 0:
                self.duplicate_of[start + i] = found
            else:
                kept_mask[i] = True
                kept_here.append(start + i)
        self._insert(np.asarray(kept_here, np.int64), keys[kept_mask])
        self.kept.extend(kept_here)

    def _against_kept(self, features: np.ndarray, block: np.ndarray, keys: np.ndarray,
                      start: int) -> np.ndarray:
        """For each block row, the highest-ranked kept record (pool position) at similarity >=
        threshold among its bucket mates, else -1."""
        best = np.full(len(block), -1, np.int64)
        rows, partners = [], []
        for t in range(self.tables):
            table = self.buckets[t]
            if not len(table):
                continue
            lo = np.searchsorted(table, keys[:, t] << 32)
            hi = np.searchsorted(table, (keys[:, t] + 1) << 32)
            row, index = self._ranges(lo, hi - lo)
            rows.append(row)
            partners.append(table[index] & 0xFFFFFFFF)
        if not rows:
            return best
        row, partner = self._similar(features, block, start, np.concatenate(rows),
                                     np.concatenate(partners))
        order = np.lexsort((partner, row))  # per row, its highest-ranked (lowest) partner first
        row, partner = row[order], partner[order]
        first = np.r_[True, row[1:] != row[:-1]]
        best[row[first]] = partner[first]
        return best

    def _within_block(self, features: np.ndarray, block: np.ndarray, keys: np.ndarray,
                      start: int) -> dict[int, np.ndarray]:
        """For each block row, the earlier block rows at similarity >= threshold that share a
        bucket with it."""
        later, earlier = [], []
        for t in range(self.tables):
            order = np.lexsort((np.arange(len(block)), keys[:, t]))
            sorted_keys = keys[order, t]
            run_start = np.r_[0, np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1]
            starts = np.repeat(run_start, np.diff(np.r_[run_start, len(block)]))
            # the earlier rows of the same bucket: sorted positions starts[p] .. p - 1
            row, index = self._ranges(starts, np.arange(len(block)) - starts)
            later.append(order[row])
            earlier.append(order[index])
        row, partner = self._similar(features, block, start, np.concatenate(later),
                                     start + np.concatenate(earlier))
        partner = partner - start
        order = np.argsort(row, kind="stable")
        row, partner = row[order], partner[order]
        cuts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
        return {int(row[c]): part for c, part in zip(cuts, np.split(partner, cuts[1:]),
                                                       strict=True)} if len(row) else {}

    def _ranges(self, first: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, index) for index in first[row] .. first[row] + size - 1, sizes capped."""
        self.capped += int((sizes > self.max_candidates).sum())
        sizes = np.minimum(sizes, self.max_candidates)
        row = np.repeat(np.arange(len(sizes)), sizes)
        offset = np.arange(len(row)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return row, np.repeat(first, sizes) + offset

    def _similar(self, features: np.ndarray, block: np.ndarray, start: int, rows: np.ndarray,
                 partners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The candidate pairs (block row, pool position) at similarity >= threshold: screened
        by signature (unless exact), then the cosine of those left, in chunks."""
        self.candidates += len(rows)
        if not self.exact and len(rows):
            differ = np.bitwise_count(self.signatures[start + rows] ^ self.signatures[partners])
            close = differ.sum(1, dtype=np.int64) <= self.max_hamming
            rows, partners = rows[close], partners[close]
        self.comparisons += len(rows)
        similar = np.zeros(len(rows), bool)
        for first in range(0, len(rows), 1 << 15):
            part = slice(first, first + (1 << 15))
            right = features[partners[part]].astype(np.float32)
            similar[part] = np.einsum("ij,ij->i", block[rows[part]], right) >= self.threshold
        return rows[similar], partners[similar]

    def _insert(self, positions: np.ndarray, keys: np.ndarray) -> None:
        for t in range(self.tables):
            new = (keys[:, t] << 32) | positions
            self.buckets[t] = np.sort(np.concatenate([self.buckets[t], new]), kind="stable")


def _mean_row(features: np.ndarray) -> np.ndarray:
    total = np.zeros(features.shape[1], np.float64)
    for start in range(0, len(features), BLOCK):
        total += features[start:start + BLOCK].astype(np.float64).sum(0)
    return (total / max(1, len(features))).astype(np.float32)


def dedup(selection: Selection, load: FeatureLoader, threshold: float = DEFAULT_THRESHOLD, *,
          tables: int = TABLES, bits: int | None = None, pool_factor: float = 1.5,
          seed: int = 0, max_candidates: int = MAX_CANDIDATES,
          block: int = BLOCK) -> tuple[Selection, DedupReport]:
    """Top `selection.requested` of `selection.ranked` with near-duplicates removed.

    `load(records)` gives the records' unit features (see the module doc); it is called for a
    pool of the best-ranked records, pool_factor times the budget, and again for the next
    records (doubling) while the pool runs out before the budget is kept. The returned
    selection ranks the kept records first, then the records never looked at; the removed
    ones are left out.
    """
    if not -1 <= threshold <= 1:
        raise GradfilterError(f"--diversity-threshold must be within [-1, 1], got {threshold}")
    ranked = selection.ranked
    count = min(selection.requested, len(ranked))
    report = DedupReport(threshold=threshold, tables=tables)
    if count == 0:
        return selection, report
    report.bits = lsh_bits(count) if bits is None else bits
    size = min(len(ranked), max(count, math.ceil(pool_factor * count)))
    features = _unit_rows(load(ranked[:size]))
    report.pool_reads = 1
    greedy = _Greedy(features, count, threshold, report.bits, tables, seed, max_candidates)
    greedy.extend(features)
    start = 0
    while not greedy.done and start < len(ranked):
        if start == len(features):
            more = min(len(ranked), 2 * len(features))
            features = np.concatenate([features, _unit_rows(load(ranked[start:more]))])
            greedy.extend(features)
            report.pool_reads += 1
        stop = min(start + block, len(features))
        greedy.process(features, start, stop)
        start = stop
    kept = ranked[np.asarray(greedy.kept, np.int64)]
    untouched = ranked[greedy.processed:]
    report.kept, report.processed = len(kept), greedy.processed
    report.removed = len(greedy.duplicate_of)
    report.candidates, report.comparisons = greedy.candidates, greedy.comparisons
    report.capped_lookups = greedy.capped
    report.tables = greedy.tables
    report.groups = _largest_groups(greedy.duplicate_of, ranked)
    diverse = Selection(np.concatenate([kept, untouched]), selection.requested,
                        selection.n_records, selection.n_nonfinite)
    return diverse, report


def _unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length where not zero (float16; the loader's are already, up to
    float16 rounding), a block at a time."""
    out = np.empty(features.shape, np.float16)
    for start in range(0, len(features), BLOCK):
        values = np.asarray(features[start:start + BLOCK], dtype=np.float32)
        norms = np.linalg.norm(values, axis=1, keepdims=True)
        out[start:start + BLOCK] = values / np.where(norms > 0, norms, 1)
    return out


def _largest_groups(duplicate_of: dict[int, int], ranked: np.ndarray) -> list[dict]:
    """The kept records with the most near-duplicates removed: record numbers (0-based input
    positions), the first RECORDS_PER_GROUP removed ones of each in rank order."""
    groups: dict[int, list[int]] = {}
    for removed, kept in duplicate_of.items():
        groups.setdefault(kept, []).append(removed)
    largest = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return [{"kept": int(ranked[kept]), "removed_count": len(members),
             "removed": [int(ranked[r]) for r in sorted(members)[:RECORDS_PER_GROUP]]}
            for kept, members in largest[:GROUPS_REPORTED]]
