"""The torch Problem wrapper and its gradient bucket, in one process.

Checked: every param.grad and param.data is a view into one contiguous bucket (blocks in parameter
order); the numpy view of the bucket shares memory with the torch gradients (zero-copy, both ways);
a zero_grad(set_to_none=True) is healed by bind(); loss/grad/stochastic_grad agree with plain torch
(and grad with a finite difference); smoothness is NaN unless given; mpiopt.minimize trains the wrapper.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mpiopt  # noqa: E402
from mpiopt.problems.torch import GradientBucket, TorchProblem, as_array  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402


def small_model(dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5),
    ).to(dtype)


def small_data(n: int = 40, dtype=torch.float64) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 1, 4, 4, generator=gen, dtype=dtype), torch.randint(0, 5, (n,), generator=gen))


def test_bucket_blocks_are_views_in_parameter_order():
    model = small_model(torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    bucket = GradientBucket(model.parameters())
    params = list(model.parameters())
    assert bucket.dim == sum(p.numel() for p in params)
    assert [s for _, s in bucket.blocks] == [p.numel() for p in params]
    assert [o for o, _ in bucket.blocks] == list(np.cumsum([0] + [p.numel() for p in params[:-1]]))
    item = bucket.grads.element_size()
    for p, old, (o, s) in zip(params, before, bucket.blocks):
        assert torch.equal(p.detach(), old)  # values survive the flattening
        assert p.grad.data_ptr() == bucket.grads.data_ptr() + o * item
        assert p.data_ptr() == bucket.params.data_ptr() + o * item
        assert p.grad.is_contiguous() and p.grad.shape == p.shape


def test_numpy_view_shares_memory_with_torch_grads():
    model = small_model(torch.float32)
    bucket = GradientBucket(model.parameters())
    x, y = small_data(8, torch.float32).tensors
    torch.nn.functional.cross_entropy(model(x), y).backward()
    g = bucket.grad_array()
    assert isinstance(g, np.ndarray) and g.dtype == np.float32 and g.shape == (bucket.dim,)
    assert g.ctypes.data == bucket.grads.data_ptr()
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    np.testing.assert_array_equal(g, flat.numpy())
    g[:] = 7.0  # writes through to every param.grad
    assert all(bool((p.grad == 7.0).all()) for p in model.parameters())
    assert np.shares_memory(as_array(bucket.grads), g)
    w = bucket.param_array()
    w[0] = 123.0
    assert float(next(model.parameters()).detach().reshape(-1)[0]) == 123.0


def test_autograd_accumulates_in_place_and_set_to_none_is_healed():
    model = small_model()
    bucket = GradientBucket(model.parameters())
    x, y = small_data(8).tensors
    ptr = bucket.grads.data_ptr()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    once = bucket.grads.clone()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert bucket.grads.data_ptr() == ptr
    torch.testing.assert_close(bucket.grads, 2 * once)

    model.zero_grad(set_to_none=True)  # torch's default drops the views ...
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert next(model.parameters()).grad.data_ptr() != ptr
    bucket.bind()  # ... and bind() copies the fresh gradients back and restores them
    torch.testing.assert_close(bucket.grads, once)
    assert all(p.grad.untyped_storage().data_ptr() == ptr for p in model.parameters())


def test_bucket_refuses_mixed_dtypes_and_a_moved_model():
    model = small_model(torch.float32)
    model[0].to(torch.float64)
    with pytest.raises(ValueError, match="one dtype and device"):
        GradientBucket(model.parameters())
    model = small_model(torch.float32)
    bucket = GradientBucket(model.parameters())
    model.to(torch.float64)
    with pytest.raises(RuntimeError, match="build the optimizer after moving the model"):
        bucket.bind()


def reference_loss_and_grad(model, params_vec, x, y):
    """Plain torch on a deep copy: mean cross-entropy and its flat gradient at params_vec."""
    import copy

    ref = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(torch.from_numpy(params_vec), ref.parameters())
    for p in ref.parameters():
        p.grad = None
    loss = torch.nn.functional.cross_entropy(ref(x), y)
    loss.backward()
    return loss.item(), torch.cat([p.grad.reshape(-1) for p in ref.parameters()]).numpy()


@pytest.mark.parametrize("as_loader", [False, True])
def test_problem_matches_plain_torch(as_loader):
    data = small_data()
    model = small_model()
    source = DataLoader(data, batch_size=7) if as_loader else data
    prob = TorchProblem(model, torch.nn.functional.cross_entropy, source, eval_batch_size=9)
    assert prob.n_samples == 40 and prob.dim == sum(p.numel() for p in model.parameters())
    assert math.isnan(prob.smoothness())
    x = prob.params() + 0.01
    X, Y = data.tensors
    f, g = reference_loss_and_grad(model, x, X, Y)
    assert prob.loss(x) == pytest.approx(f, rel=1e-12)
    np.testing.assert_allclose(prob.grad(x), g, rtol=1e-10, atol=1e-13)
    out = np.empty(prob.dim)
    assert prob.loss_and_grad(x, out) == pytest.approx(f, rel=1e-12)
    np.testing.assert_allclose(out, g, rtol=1e-10, atol=1e-13)

    idx = np.array([3, 17, 17, 0])
    fs, gs = reference_loss_and_grad(model, x, X[idx], Y[idx])
    got = prob.stochastic_grad(x, idx, out=out)
    assert got is out
    np.testing.assert_allclose(out, gs, rtol=1e-10, atol=1e-13)


def test_grad_is_the_derivative_of_loss():
    prob = TorchProblem(small_model(), torch.nn.functional.cross_entropy, small_data())
    x = prob.params()
    v = np.random.default_rng(0).standard_normal(prob.dim)
    h = 1e-6
    fd = (prob.loss(x + h * v) - prob.loss(x - h * v)) / (2 * h)
    assert fd == pytest.approx(float(prob.grad(x) @ v), rel=1e-6)


def test_smoothness_given_and_minimize_trains_the_wrapper():
    prob = TorchProblem(small_model(), torch.nn.functional.cross_entropy, small_data(), smoothness=4.0)
    assert prob.smoothness() == 4.0
    x0 = prob.params()
    res = mpiopt.minimize(prob, method="gd", x0=x0, iters=60, lr=0.5)
    loss = res.trace["history"]["loss"]
    assert loss[-1] < 0.8 * loss[0]
