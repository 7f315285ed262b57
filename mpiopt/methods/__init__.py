"""Methods by name, as ``mpiopt run --method NAME`` and ``mpiopt.minimize(method=NAME)`` take them.

Each entry maps a name to a Method class and the options that name fixes, so that aliases such as
``intdiana`` (= ``diana`` with the integer compressor) are one line here and one class in code.
"""

from typing import Any, Dict, Tuple, Type

from mpiopt.errors import InputError
from mpiopt.methods.base import Context, Method
from mpiopt.methods.dgc import DGC
from mpiopt.methods.diana import DIANA, LSVRG, VRDIANA
from mpiopt.methods.efsign import EFSignSGD
from mpiopt.methods.intsgd import QSGD, HintSGD, IntSGD, NatSGD
from mpiopt.methods.powersgd import PowerSGD
from mpiopt.methods.sgd import GD, SGD

METHODS: Dict[str, Tuple[Type[Method], Dict[str, Any]]] = {
    "gd": (GD, {}),
    "sgd": (SGD, {}),
    "ef-signsgd": (EFSignSGD, {}),
    "dgc": (DGC, {}),
    "powersgd": (PowerSGD, {}),
    "l-svrg": (LSVRG, {}),
    "diana": (DIANA, {}),
    "vr-diana": (VRDIANA, {}),
    "intsgd": (IntSGD, {}),
    "intdiana": (DIANA, {"compressor": "int"}),
    "vr-intdiana": (VRDIANA, {"compressor": "int"}),
    "hintsgd": (HintSGD, {}),
    "natsgd": (NatSGD, {}),
    "qsgd": (QSGD, {}),
}


def make_method(name: str, ctx: Context, **options: Any) -> Method:
    """Build the method called ``name``; an unknown name or option raises InputError."""
    try:
        cls, fixed = METHODS[name]
    except KeyError:
        choices = ", ".join(sorted(METHODS))
        raise InputError(f"unknown method '{name}'; choose one of: {choices}", collective=True) from None
    clash = sorted(set(fixed) & set(options))
    if clash:
        fixes = ", ".join(f"{c}={fixed[c]!r}" for c in clash)
        raise InputError(f"method '{name}' fixes {fixes}; drop that option", collective=True)
    method = cls(ctx, **fixed, **options)
    method.name = name
    return method


__all__ = ["METHODS", "Context", "Method", "make_method"]
