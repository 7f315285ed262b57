"""Methods by name, as ``mpiopt run --method NAME`` and ``mpiopt.minimize(method=NAME)`` take them.

Each name is a :class:`~mpiopt.methods.composed.Recipe` (estimator, shift, memory, compressor) and the
options the name fixes, so that an alias such as ``intdiana`` (= ``diana --compressor int``) is one
line here. ``sgd``, ``ef-sgd``, ``diana`` and ``vr-diana`` take any registered ``--compressor``.
"""

from typing import Any, Dict, Tuple

from mpiopt.errors import InputError
from mpiopt.methods.base import Context, Method
from mpiopt.methods.composed import CompressedMethod, Recipe
from mpiopt.naming import arg, did_you_mean

SGD = Recipe("minibatch")
EF_SGD = Recipe("minibatch", memory="residual", default_compressor="sign")
DIANA = Recipe("minibatch", shift="diana")
VR_DIANA = Recipe("l-svrg", shift="diana", compressor_defaults=(("alpha", "exponent"),), feedback_for=("int",))

METHODS: Dict[str, Tuple[Recipe, Dict[str, Any]]] = {
    "gd": (Recipe("full", compressor="none"), {}),
    "sgd": (SGD, {}),
    "ef-sgd": (EF_SGD, {}),
    "l-svrg": (Recipe("l-svrg", compressor="none"), {}),
    "diana": (DIANA, {}),
    "vr-diana": (VR_DIANA, {}),
    "intsgd": (SGD, {"compressor": "int"}),
    "intdiana": (DIANA, {"compressor": "int"}),
    "vr-intdiana": (VR_DIANA, {"compressor": "int"}),
    "hintsgd": (SGD, {"compressor": "hint"}),
    "natsgd": (SGD, {"compressor": "nat"}),
    "qsgd": (SGD, {"compressor": "qsgd"}),
    "ef-signsgd": (EF_SGD, {"compressor": "sign"}),
    "powersgd": (EF_SGD, {"compressor": "powersgd"}),
    "dgc": (Recipe("minibatch", memory="dgc", compressor="dgc"), {}),
}


def method_recipe(name: str) -> Recipe:
    """The recipe of the method called ``name``; an unknown name raises InputError (with the
    closest known name, when one is close)."""
    if name not in METHODS:
        choices = ", ".join(sorted(METHODS))
        raise InputError(f"unknown method {name!r}{did_you_mean(name, METHODS)}; choose one of: {choices}",
                         collective=True)
    return METHODS[name][0]


def make_method(name: str, ctx: Context, **options: Any) -> Method:
    """Build the method called ``name``; an unknown name or option raises InputError."""
    method_recipe(name)
    recipe, fixed = METHODS[name]
    clash = sorted(set(fixed) & set(options))
    if clash:
        fixes = ", ".join(arg(c, fixed[c]) for c in clash)
        raise InputError(f"method '{name}' fixes {fixes}; drop that option", collective=True)
    return CompressedMethod(ctx, name, recipe, fixed=fixed, **options)


__all__ = ["METHODS", "Context", "Method", "Recipe", "make_method", "method_recipe"]
