"""The hook state's options: the IntSGD hook's alpha rule when the caller names none follows the optimizer
(:func:`mpiopt.torch.hooks.default_alpha`): the paper's under SGD, 'exponent' under Adam and the others;
options of the int compressor only are refused for the others."""

import pickle

import pytest

torch = pytest.importorskip("torch")
MPI = pytest.importorskip("mpi4py.MPI")

from mpiopt.comm import MPICommunicator  # noqa: E402
from mpiopt.errors import InputError  # noqa: E402
from mpiopt.torch.hooks import CompressorState, IntSGDState  # noqa: E402

OPTIMIZERS = {
    "sgd": (lambda ps: torch.optim.SGD(ps, lr=0.1), "paper"),
    "momentum": (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), "paper"),
    "adam": (lambda ps: torch.optim.Adam(ps, lr=1e-3), "exponent"),
    "adamw": (lambda ps: torch.optim.AdamW(ps, lr=1e-3), "exponent"),
    "rmsprop": (lambda ps: torch.optim.RMSprop(ps, lr=1e-3), "exponent"),
}


def optimizer(name: str):
    return OPTIMIZERS[name][0](torch.nn.Linear(3, 2).parameters())


def state_of(opt, **options) -> IntSGDState:
    return IntSGDState(None, opt, comm=MPICommunicator(MPI.COMM_SELF), **options)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_default_rule_follows_the_optimizer(name):
    state = state_of(optimizer(name))
    rule = OPTIMIZERS[name][1]
    assert state.options["alpha"] == rule and state.engine.opts["alpha"] == rule


def test_the_int_compressor_state_takes_the_same_default():
    state = CompressorState(None, optimizer("adamw"), "int", comm=MPICommunicator(MPI.COMM_SELF))
    assert state.engine.opts["alpha"] == "exponent"


def test_a_named_rule_or_alpha0_is_kept():
    assert state_of(optimizer("adam"), alpha="paper").engine.opts["alpha"] == "paper"
    assert state_of(optimizer("sgd"), alpha="exponent").engine.opts["alpha"] == "exponent"
    assert state_of(optimizer("adam"), alpha0=100.0).engine.opts["alpha"] == "paper"  # alpha0 is the paper rule's
    assert state_of(optimizer("adam"), alpha=None).engine.opts["alpha"] == "exponent"  # None: the default


def test_a_pickled_state_keeps_its_rule():
    """The rule is part of the pickled options (which ``attach`` builds the engine from), so a state
    unpickled for another optimizer keeps it."""
    state = pickle.loads(pickle.dumps(state_of(optimizer("adamw"))))
    assert state.options["alpha"] == "exponent"


def test_a_state_saved_under_another_rule_is_refused():
    """The rule is part of the saved state's identity: resuming an AdamW run's state under the paper's
    rule (or the other way) would change every integer, so it is refused, naming the rule; a state saved
    before the rule was recorded loads as before."""
    saved = state_of(optimizer("adamw")).state_dict()
    assert saved["alpha"] == "exponent"
    with pytest.raises(ValueError, match="alpha saved 'exponent', here 'paper'"):
        state_of(optimizer("adamw"), alpha="paper").load_state_dict(saved)
    state_of(optimizer("adamw")).load_state_dict(saved)
    older = {k: v for k, v in state_of(optimizer("sgd")).state_dict().items() if k != "alpha"}
    state_of(optimizer("sgd")).load_state_dict(older)


def test_a_grad_scaler_is_refused_for_another_compressor():
    with pytest.raises(InputError, match="grad_scaler is an option of the IntSGD hook, not of compressor 'nat'"):
        CompressorState(None, optimizer("adamw"), "nat", comm=MPICommunicator(MPI.COMM_SELF), grad_scaler=object())
