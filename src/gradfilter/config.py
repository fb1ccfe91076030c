"""The run configuration: every setting that affects the scores, typed (method.md §2-3).

No torch here: the command line builds its options (and `--help`) from this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

from .arguments import real_number, whole_number
from .errors import GradfilterError

# perplexity-low / perplexity-high: one perplexity pass, the table ranks by it in that direction
# (plain `perplexity` is perplexity-high, the name earlier tables and commands use)
Method = Literal["gsnr", "ifd", "perplexity-low", "perplexity-high", "perplexity", "loss",
                 "length", "random"]
METHODS: tuple[Method, ...] = get_args(Method)
BASELINES: tuple[Method, ...] = METHODS[1:]  # one pass of the proxy at most
DeviceChoice = Literal["auto", "cpu", "cuda"]
DtypeChoice = Literal["auto", "float32", "bfloat16"]
TemplateChoice = Literal["auto", "plain", "chat"]
TurnsChoice = Literal["all", "last"]
CollectChoice = Literal["during", "snapshot"]
TruncationChoice = Literal["keep", "drop"]


@dataclass(frozen=True)
class ScoreConfig:
    """Every setting that affects the scores; method.md §2-3 defaults."""

    proxy: str = "gpt2"
    members: int = 4
    epochs: int = 2
    early: int = 1
    late: int = 2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] | None = None  # None: the architecture's default targets
    lr: float = 2e-4
    batch_size: int = 16
    collect_batch_size: int = 32
    max_length: int = 512
    grad_clip: float = 1.0
    seed: int = 0
    device: DeviceChoice = "auto"
    dtype: DtypeChoice = "auto"
    template: TemplateChoice = "auto"
    turns: TurnsChoice = "all"
    length_bucketing: bool = True
    # method.md §3: the gradients of the training passes of epochs s and t themselves
    # (during, the default: half the cost), or a separate pass over frozen snapshots after
    # them (snapshot).
    collect: CollectChoice = "during"
    # Padded tokens per micro-batch (all M members' rows together); None: chosen from the
    # device and the proxy (scoring/budget.py). Changes no number beyond float rounding.
    batch_tokens: int | None = None
    sketch_dim: int = 128  # gradient sketch size per member and collected epoch; 0: none
    # Every record's IFD ratio by the untrained proxy, stored for the gated utilities (two
    # forward passes before training).
    ifd_pass: bool = True
    # A record longer than max_length: scored on its first max_length tokens (keep), or left
    # unscored with that reason (drop).
    truncation: TruncationChoice = "keep"

    def validate(self) -> None:
        for name in ("members", "epochs", "early", "late", "lora_rank", "batch_size",
                     "collect_batch_size", "max_length", "seed", "sketch_dim"):
            whole_number(getattr(self, name), f"--{name.replace('_', '-')}")
        for name in ("lora_alpha", "lr", "grad_clip"):
            real_number(getattr(self, name), f"--{name.replace('_', '-')}")
        if self.batch_tokens is not None:
            whole_number(self.batch_tokens, "--batch-tokens")
        positive = ("members", "epochs", "lora_rank", "batch_size", "collect_batch_size",
                    "max_length")
        for name in positive:
            if getattr(self, name) < 1:
                raise GradfilterError(f"--{name.replace('_', '-')} must be at least 1")
        if not 1 <= self.early < self.late <= self.epochs:
            raise GradfilterError(
                f"need 1 <= --early < --late <= --epochs, got early={self.early}, "
                f"late={self.late}, epochs={self.epochs}"
            )
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise GradfilterError("--batch-tokens must be auto or at least 1")
        if self.sketch_dim < 0:
            raise GradfilterError("--sketch-dim must be at least 0 (0 turns sketches off)")
        if self.lr <= 0 or self.lora_alpha <= 0:
            raise GradfilterError("--lr and --lora-alpha must be positive")
        for name, kind in (("device", DeviceChoice), ("dtype", DtypeChoice),
                           ("template", TemplateChoice), ("turns", TurnsChoice),
                           ("collect", CollectChoice), ("truncation", TruncationChoice)):
            if getattr(self, name) not in get_args(kind):
                raise GradfilterError(f"--{name} must be one of {list(get_args(kind))}, got "
                                      f"{getattr(self, name)!r}")

    def with_targets(self, default: tuple[str, ...]) -> ScoreConfig:
        """The config with its LoRA targets resolved (`default` where none were named)."""
        return replace(self, lora_targets=tuple(self.lora_targets or default))

    @property
    def targets(self) -> tuple[str, ...]:
        """The resolved LoRA targets (after `with_targets`)."""
        if self.lora_targets is None:
            raise ValueError("the LoRA targets are not resolved yet (with_targets)")
        return self.lora_targets


# Settings added after tables, checkpoints and benchmark caches were first keyed by the config,
# at the value that behaves as before they existed: left out of those keys, so that the runs
# made before them are still found (a checkpoint resumes, a benchmark reuses its tables).
_ADDED_SETTINGS: dict[str, Any] = {"truncation": "keep"}


def config_key(config: ScoreConfig) -> dict[str, Any]:
    """The config as a dict for keys that name a run (checkpoints, benchmark caches)."""
    return {name: value for name, value in asdict(config).items()
            if name not in _ADDED_SETTINGS or value != _ADDED_SETTINGS[name]}
