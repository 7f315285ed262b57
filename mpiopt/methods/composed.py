"""One method class composed of an estimator, a shift, a memory and a compressor.

Each rank computes g_i with the estimator (``full``, ``minibatch`` or ``l-svrg``, see
:mod:`mpiopt.methods.estimators`) and the compressor delivers mean_i C(.) identically to every rank:

* no shift, no memory (SGD, GD, L-SVRG, IntSGD, ...): x <- x - eta mean_i C(g_i);
* DIANA shift (Mishchenko et al., 2019; IntDIANA is Alg. 3 of the IntSGD paper): each rank keeps h_i,
  all keep h = mean_i h_i; Delta_i = g_i - h_i; g = h + mean_i C(Delta_i); h_i += a C(Delta_i);
  h += a mean_i C(Delta_i); x -= eta g, with a = 1 / (1 + omega) (1 for omega = 0). DIANA needs an
  unbiased compressor; biased ones go with error feedback (``ef-sgd``). With ``feedback='on'`` (the
  default of vr-intdiana and of vr-diana with the int compressor) each rank also keeps e_i:
  Delta_i = g_i - (h_i - e_i) and, after the exchange, e_i = Delta_i - C(Delta_i), so that x does not
  keep every step's compression error (docs/design.md, "Feedback");
* a memory (:mod:`mpiopt.methods.memory`: EF-SGD's residual, DGC's momentum correction): the
  compressor gets the memory's vector p_i and the memory keeps what C left out;
* ``momentum`` (heavy ball after decoding, on every rank): m = mu m + u, x -= m, for the update u.

Default step sizes ("of the theory"; ``lr`` overrides them): GD 1/L; SGD-type methods
eta = 1 / (2 (L + L_b / n) (1 + 2 omega / n)) (:func:`~mpiopt.methods.estimators.sgd_step_size`): the
minibatch theory's eta <= 1 / (2 L_exp), with L_exp = L + L_b / n the expected smoothness of the mean
of n b-minibatch gradients (L_b from the ranks' L_i and per-sample constants, so the step follows the
batch), divided by (1 + 2 omega / n) as in the analyses of compressed SGD and DIANA with an unbiased
compressor of relative variance omega (omega = 0 for the int and hint compressors, whose rounding
error is additive and kept O(eta^2) by alpha, and for the biased ones), times the memory's factor
(DGC: 1 - m); variance-reduced methods :func:`~mpiopt.methods.estimators.vr_step_size`.
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from mpiopt.compressors import REGISTRY, Option, all_options, compressor_class
from mpiopt.compressors.base import bad_option, is_number, resolve_options, user_options
from mpiopt.kernels.numpy import apply_step
from mpiopt.methods.base import Context, Method
from mpiopt.methods.estimators import LooplessSVRG, sgd_step_size, vr_step_size
from mpiopt.methods.memory import MEMORIES
from mpiopt.naming import arg, on_command_line, spelled

@dataclass(frozen=True)
class Recipe:
    """What a method name is made of; ``compressor`` fixes one, else the ``compressor`` option picks."""

    estimator: str
    shift: str = "none"
    memory: str = "none"
    compressor: Optional[str] = None
    default_compressor: str = "none"
    compressor_defaults: Tuple[Tuple[str, Any], ...] = ()
    """(option, value) pairs that replace the compressor's own defaults where it takes the option
    (vr-diana's int compressor scales by the largest value: ``alpha='exponent'``)."""
    feedback_for: Tuple[str, ...] = ()
    """Compressors with which a DIANA recipe's ``feedback`` is on unless the user says otherwise."""


def _compressor_option(default: str) -> Option:
    return Option("compressor", default, str, "compressor of sgd / ef-sgd / diana / vr-diana (diana and "
                  "vr-diana: unbiased ones only)", choices=tuple(REGISTRY))


P_OPTION = Option("p", None, float, "l-svrg / vr-diana: probability of resetting the reference point "
                  "(default batch / shard size)", valid=lambda p: is_number(p) and 0 < p <= 1, rule="in (0, 1]")
FEEDBACK = Option("feedback", None, str, "diana / vr-diana: carry each rank's compression error into its next "
                  "Delta_i, so that rounding noise does not pile up in x (default on for vr-intdiana and vr-diana with "
                  "the int compressor, off otherwise)", choices=("on", "off"))
MOMENTUM = Option("momentum", 0.0, float, "momentum factor (sgd-type methods: heavy ball after decoding; dgc: "
                  "momentum correction, default 0.9)", valid=lambda m: is_number(m) and 0 <= m < 1, rule="in [0, 1)")


def own_options(recipe: Recipe, fixed: Tuple[str, ...] = ()) -> Tuple[Option, ...]:
    """The options a recipe itself takes (besides its memory's and its compressor's); ``fixed`` names
    the ones a method name sets itself (an alias), which the user cannot give."""
    opts = []
    if recipe.compressor is None and "compressor" not in fixed:
        opts.append(_compressor_option(recipe.default_compressor))
    if recipe.estimator == "l-svrg":
        opts.append(P_OPTION)
    if recipe.shift == "diana":
        opts.append(FEEDBACK)
    memory_opts = {o.name for o in MEMORIES[recipe.memory].options}
    if recipe.shift == "none" and recipe.estimator != "l-svrg" and "momentum" not in memory_opts:
        opts.append(MOMENTUM)
    return tuple(opts)


class CompressedMethod(Method):
    """The method a :class:`Recipe` describes; see the module docstring."""

    def __init__(self, ctx: Context, name: str, recipe: Recipe, fixed: Optional[Dict[str, Any]] = None,
                 **options: Any):
        super().__init__(ctx, name)
        self.recipe = recipe
        fixed = fixed or {}
        comp_name = recipe.compressor or fixed.get("compressor") or options.get("compressor", recipe.default_compressor)
        own = own_options(recipe, tuple(fixed))
        options = {**options, **{k: v for k, v in fixed.items() if k != "compressor"}}
        mem_cls = MEMORIES[recipe.memory]
        self.comp_cls = comp_cls = compressor_class(comp_name)
        self._refuse_foreign(options, own, mem_cls.options, comp_cls)
        self.opts = resolve_options(f"method '{name}'", own, {o.name: options[o.name] for o in own if o.name in options})
        if recipe.shift == "diana" and self.opts.get("feedback") is None:
            self.opts["feedback"] = "on" if comp_cls.name in recipe.feedback_for else "off"
        if recipe.shift == "diana" and not comp_cls.unbiased:
            ef_sgd = ("ef-sgd " if on_command_line() else "method='ef-sgd', ") + arg("compressor", comp_name)
            raise bad_option(f"method '{name}' needs an unbiased compressor and '{comp_name}' is biased; "
                             f"use {ef_sgd} (error feedback) instead")
        self.mem_opts = resolve_options(f"method '{name}'", mem_cls.options,
                                        {o.name: options[o.name] for o in mem_cls.options if o.name in options})
        comp_given = {o.name: options[o.name] for o in comp_cls.options if o.name in options}
        comp_names = {o.name for o in comp_cls.options}
        comp_given.update({k: v for k, v in recipe.compressor_defaults if k in comp_names and k not in comp_given})
        self.comp_opts = comp_cls.resolve(comp_given, ctx.comm, ctx.problem.dim)
        self.omega = comp_cls.omega(ctx.problem.dim, self.comp_opts) if comp_cls.unbiased else 0.0
        self.memory = mem_cls(ctx.problem.dim, self.mem_opts)
        if recipe.estimator == "full" and ctx.batch is not None:
            raise bad_option(f"method '{name}' uses each rank's full local gradient; drop {arg('batch')} "
                             "(sgd takes minibatches)")
        self.init_lr()

    def _refuse_foreign(self, given, own, mem_options, comp_cls) -> None:
        """Options of no part of this method are refused, naming the ones a user may give it."""
        parts = (*own, *mem_options, *comp_cls.options)
        foreign = sorted(set(given) - {o.name for o in parts})
        if not foreign:
            return
        listed = user_options(parts)
        chosen = self.recipe.compressor is None  # the name picks its compressor (given or fixed by an alias)
        if chosen and set(foreign) & set(all_options()):
            raise bad_option(f"method '{self.name}' with compressor {comp_cls.name} does not use option(s) "
                             f"{spelled(foreign)}; it takes: {listed}")
        raise bad_option(f"method '{self.name}' does not take option(s) {spelled(foreign)}; it takes: {listed}")

    # ---- step size and trace ----------------------------------------------------------------
    def default_lr(self) -> float:
        ctx = self.ctx
        if self.recipe.estimator == "full":
            return 1.0 / ctx.L
        if self.recipe.estimator == "l-svrg":
            return vr_step_size(ctx, self.batch, self.omega)
        return self.memory.lr_factor() * sgd_step_size(ctx, self.batch, self.omega)

    def reset_probability(self) -> float:
        p = self.opts.get("p")
        return float(self.batch / self.ctx.problem.n_samples if p is None else p)  # p checked by P_OPTION

    def config(self) -> Dict[str, Any]:
        extra = {"p": self.reset_probability()} if self.recipe.estimator == "l-svrg" else {}
        batch = None if self.recipe.estimator == "full" else self.batch
        return {"lr": self.lr, "batch": batch, **self.opts, **extra, **self.mem_opts, "compressor": self.comp_cls.name,
                "omega": self.omega, **self.comp_opts, **self.comp_cls.describe(self.comp_opts)}

    def summary(self) -> Dict[str, Any]:
        return {"wire": {"compressor": self.comp_cls.name, **self.comp.summary()}}

    def iterate_changed(self) -> None:
        self.comp.iterate_changed()

    def clip_advice(self) -> str:
        advice = getattr(self.comp, "clip_advice", None)
        return advice() if advice is not None else super().clip_advice()

    # ---- set-up ---------------------------------------------------------------------------
    def start(self, x: np.ndarray) -> None:
        ctx, recipe = self.ctx, self.recipe
        problem = ctx.problem
        self.comp = self.comp_cls(ctx.comm, problem.dim, seed=ctx.seed, worker=ctx.worker,
                                  fail=self.raise_non_finite, **self.comp_opts)
        self.memory.check(self.comp)
        self.state = {**{f"comp/{k}": v for k, v in self.comp.state.items()},
                      **{f"memory/{k}": v for k, v in self.memory.state.items()}}
        if recipe.estimator != "full":
            self._batch = self.batch
        self.full_gradient = recipe.estimator == "full" or (ctx.batch is not None and self._batch == problem.n_samples)
        self.vr = None
        if recipe.estimator == "l-svrg":
            self.vr = LooplessSVRG(self, x, self.reset_probability())
            self.state.update(self.vr.state)
        self._g = np.empty_like(x)
        self._mean = np.empty_like(x)
        self._local = np.empty_like(x) if recipe.shift == "diana" or self.memory.needs_local else None
        """This rank's C(v), for the steps that read it (DIANA's shift, EF memories)."""
        self.mu = float(self.opts.get("momentum", 0.0))
        if self.mu:
            self.state["m"] = np.zeros_like(x)
        if recipe.shift == "diana":
            self.shift_step = 1.0 / (1.0 + self.omega)
            self.state["h_local"] = np.zeros_like(x)
            self.state["h"] = np.zeros_like(x)
            self._delta = np.empty_like(x)
            self._feedback = self.opts["feedback"] == "on"
            if self._feedback:
                self.state["feedback"] = np.zeros_like(x)
            self.step = self._diana_step
        elif recipe.memory != "none" or self.mu:
            self.step = self._feedback_step
        elif self.vr is not None:
            self.step = self._vr_step
        else:
            self.step = self._sgd_step

    def prepare(self, x: np.ndarray) -> None:
        self.comp.prepare(x)

    def sample(self) -> np.ndarray:
        return self.ctx.sample_rng.integers(0, self.ctx.problem.n_samples, size=self._batch)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        """This rank's g_i of the estimator, in a scratch buffer."""
        if self.vr is not None:
            return self.vr.gradient(x)
        if self.full_gradient:
            return self.ctx.problem.grad(x, out=self._g)
        return self.ctx.problem.stochastic_grad(x, self.sample(), out=self._g)

    def count(self) -> None:
        self.info_bits += self.comp.bits
        self.clipped += self.comp.clipped

    # ---- the steps ------------------------------------------------------------------------
    def _sgd_step(self, x: np.ndarray, k: int) -> None:
        """x -= lr mean_i C(g_i), decoded straight into x where the compressor can."""
        self.comp.exchange_update(self.gradient(x), k, x, self.lr, self._mean)
        self.count()

    def _vr_step(self, x: np.ndarray, k: int) -> None:
        """L-SVRG: the exchange, the reference-point coin, then x -= lr mean."""
        mean = self._mean
        self.comp.exchange(self.gradient(x), k, x, self.lr, mean)
        self.count()
        self.vr.maybe_reset(x)
        apply_step(x, self.lr, mean)

    def _diana_step(self, x: np.ndarray, k: int) -> None:
        """DIANA: exchange Delta_i = g_i - h_i, then h_i += a C(Delta_i), h += a mean, x -= lr (h + mean)
        with h before its update (the compressor's ``shift_update``: with the numba kernel, compiled
        passes with the numpy operations' bits)."""
        h_i, h = self.state["h_local"], self.state["h"]
        g_i = self.vr.terms(x) if self.vr is not None else self.gradient(x)
        error = self.state["feedback"] if self._feedback else None  # Delta_i = g_i - (h_i - e_i); e_i = Delta_i - C(Delta_i)
        self.comp.shifted_exchange(g_i, h_i, k, x, self.lr, self._delta, self._mean, self._local, error)
        self.count()
        if self.vr is not None:
            self.vr.maybe_reset(x)
        self.comp.shift_update(h_i, h, x, self.lr, self.shift_step, self._mean, self._local, self._delta, error)

    def _feedback_step(self, x: np.ndarray, k: int) -> None:
        """With a memory and/or heavy-ball momentum: p = memory(g), exchange, memory update, step."""
        memory, mean = self.memory, self._mean
        p = memory.prepare(self.gradient(x), self.lr)
        local = self._local if memory.needs_local else None
        self.comp.exchange(p, k, x, self.lr, mean, local)
        self.count()
        memory.update(p, local, self.comp)
        if self.vr is not None:
            self.vr.maybe_reset(x)
        if not memory.lr_inside:
            mean *= self.lr
        if self.mu:
            m = self.state["m"]
            m *= self.mu
            m += mean
            mean = m
        x -= mean
