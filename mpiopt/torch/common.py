"""Helpers the torch optimizers (:mod:`mpiopt.torch.optim`) and the DDP hooks (:mod:`mpiopt.torch.hooks`)
share: state records as tensors, the identity check of a loaded state, the collective non-finite
error, a compressor with a method's counters, and the int compressor's torch defaults.

Nothing here imports the runner (:mod:`mpiopt.run`) or mpi4py.
"""

from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from mpiopt.comm import Communicator
from mpiopt.compressors import Compressor
from mpiopt.errors import RunError
from mpiopt.methods.base import flagged_ranks

SUPPORTED_DTYPES = (torch.float16, torch.float32, torch.float64)
"""Parameter dtypes the optimizers take (numpy, which the compressors run on, has no bfloat16)."""


def record_to_torch(record: Dict[str, Any]) -> Dict[str, Any]:
    """A state record (:mod:`mpiopt.state`) with its arrays as tensors, for ``torch.save`` and
    ``torch.load(weights_only=True)``."""
    return {**record, "arrays": {name: torch.from_numpy(value) for name, value in record["arrays"].items()}}


def record_from_torch(record: Dict[str, Any]) -> Dict[str, Any]:
    """The inverse of :func:`record_to_torch`: the arrays back as numpy arrays."""
    return {**record, "arrays": {name: value.numpy() for name, value in record["arrays"].items()}}


def check_identity(saved: Dict[str, Any], mine: Dict[str, Any], what: str) -> None:
    """Raise ValueError(``what``: each key whose saved value differs from this object's) unless they match."""
    wrong = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
    if wrong:
        raise ValueError(f"{what}: " + ", ".join(f"{k} saved {s!r}, here {h!r}" for k, (s, h) in wrong.items()))


def non_finite_gradient(comm: Communicator, k: int, local_bad: bool) -> None:
    """A non-finite gradient on some rank: every rank raises a RunError naming the ranks (collective)."""
    raise RunError(f"non-finite gradient at step {k} on rank(s) {flagged_ranks(comm, local_bad)}", collective=True)


class CompressorEngine:
    """One compressor with the counters and state record a method would have (for the optimizers)."""

    def __init__(self, comp: Compressor):
        self.comp = comp
        self.state: Dict[str, Any] = {f"comp/{k}": v for k, v in comp.state.items()}
        self.info_bits = 0
        self.clipped = 0

    def count(self) -> None:
        self.info_bits += self.comp.bits
        self.clipped += self.comp.clipped


def layer_starts(blocks: Iterable[Tuple[int, int]]) -> Optional[List[int]]:
    """The first coordinate of each parameter tensor's alpha block, from (offset, numel) pairs: an
    empty tensor has no coordinates and so no block; None (one block) when no tensor has any."""
    return [offset for offset, numel in blocks if numel] or None


def with_integer_first_step(options: Dict[str, Any]) -> Dict[str, Any]:
    """The int compressor's options with the torch entry points' default first step: integers
    (``first_step='exponent'``) unless ``alpha0`` or ``first_step`` is given."""
    if options.get("alpha0") is None:
        return {"first_step": "exponent", **options}
    return options
