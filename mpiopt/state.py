"""A method's whole state as one record: what checkpoints and the torch optimizers' state_dict save.

The record is the method's ``state`` arrays (shifts, reference point, error feedback, the
compressor's alpha and wire state, ...), its generators' states and its counters (bytes sent,
information bits, clipped coordinates). :func:`capture` takes it and :func:`restore` puts it back
in place, so that a resumed run continues bit-identically; the runner's checkpoints and the torch
optimizers' ``state_dict`` both go through these two functions.
"""

from typing import Any, Dict

import numpy as np

COUNTERS = ("info_bits", "clipped")


def host_copy(value) -> np.ndarray:
    """A numpy copy of a numpy or device (CuPy) array."""
    return value.get() if hasattr(value, "get") and not isinstance(value, np.ndarray) else np.array(value)


def capture(method, rngs: Dict[str, np.random.Generator], comm) -> Dict[str, Any]:
    """The record of ``method`` (anything with ``state``, ``info_bits`` and ``clipped``), its named
    generators and ``comm``'s byte counter; arrays are copies, everything else plain JSON values."""
    return {
        "arrays": {name: host_copy(value) for name, value in method.state.items()},
        "rng": {key: rng.bit_generator.state for key, rng in rngs.items()},
        "counters": {"bytes_sent": int(comm.bytes_sent), **{c: int(getattr(method, c)) for c in COUNTERS}},
    }


def restore(record: Dict[str, Any], method, rngs: Dict[str, np.random.Generator], comm) -> None:
    """Put a record from :func:`capture` back into the same kind of method, in place.

    Raises ValueError naming the arrays when the record holds other arrays than the method's."""
    arrays = record["arrays"]
    if set(arrays) != set(method.state):
        raise ValueError(f"saved state holds {sorted(arrays)}, this method has {sorted(method.state)}")
    for name, value in method.state.items():
        value[...] = arrays[name]
    for key, rng in rngs.items():
        rng.bit_generator.state = record["rng"][key]
    counters = record["counters"]
    comm.bytes_sent = int(counters["bytes_sent"])
    for c in COUNTERS:
        setattr(method, c, int(counters[c]))
