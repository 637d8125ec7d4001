"""The demo with real weights: a state dict with exactly the published GZ21 keys and shapes
(random values made here, nothing downloaded) loads, its final transformation and whole forward
pass match an independent NumPy evaluation, the coupled run with it passes, and a state dict
that fits no network is refused on one line, with status 2, before any MPI job starts."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the demo's CNN needs torch (the [test] extra)")
from eophis_hpc.demo import gz21  # noqa: E402  (needs torch)

EXE = [sys.executable, "-m", "eophis_hpc.cli"]

# The published low-resolution GZ21 state dict (trained_model.pth), written out from its printed
# architecture: convolutions at Sequential indices 0, 2, ..., 14 (ReLUs between them carry no
# weights), then the final transformation's scalar min_value.
PUBLISHED_SHAPES = {
    "0.weight": (128, 2, 5, 5), "0.bias": (128,),
    "2.weight": (64, 128, 5, 5), "2.bias": (64,),
    "4.weight": (32, 64, 3, 3), "4.bias": (32,),
    "6.weight": (32, 32, 3, 3), "6.bias": (32,),
    "8.weight": (32, 32, 3, 3), "8.bias": (32,),
    "10.weight": (32, 32, 3, 3), "10.bias": (32,),
    "12.weight": (32, 32, 3, 3), "12.bias": (32,),
    "14.weight": (4, 32, 3, 3), "14.bias": (4,),
    "final_transformation.min_value": (),
}


def published_like(seed: int = 0) -> dict:
    """Random tensors of the published keys and shapes, He-scaled so activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in PUBLISHED_SHAPES.items():
        if key.endswith(".weight"):
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.endswith(".bias"):
            state[key] = 0.05 * torch.randn(shape, generator=gen)
        else:
            state[key] = 0.001 + 0.01 * torch.rand(shape, generator=gen)
    return state


@pytest.fixture
def published_file(tmp_path):
    path = tmp_path / "trained_model.pth"
    state = published_like(seed=7)
    torch.save(state, path)
    return path, state


def np_softplus(x):
    return np.logaddexp(0.0, x)


def np_final_transformation(y, min_value):
    """The published formula: the second half of the channels becomes softplus(x) + min_value."""
    out = y.copy()
    half = y.shape[1] // 2
    out[:, half:] = np_softplus(y[:, half:]) + min_value
    return out


def np_conv_valid(x, weight, bias):
    """Cross-correlation without padding, as Conv2d does: (N, Cin, H, W) -> (N, Cout, H-k+1,
    W-k+1)."""
    k = weight.shape[-1]
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", win, weight) + bias[None, :, None, None]


def np_published_forward(state, x):
    """The published network in float64 NumPy: 8 convolutions with ReLU between them, then the
    final transformation twice (as a member of the Sequential and again in forward)."""
    y = x.astype(np.float64)
    convs = [k[:-len(".weight")] for k in PUBLISHED_SHAPES if k.endswith(".weight")]
    for n, name in enumerate(convs):
        y = np_conv_valid(y, state[f"{name}.weight"].double().numpy(),
                          state[f"{name}.bias"].double().numpy())
        if n < len(convs) - 1:
            y = np.maximum(y, 0.0)
    m = float(state["final_transformation.min_value"])
    for _ in range(2):
        y = np_final_transformation(y, m)
    return y


def test_published_state_dict_loads_as_the_full_network(published_file):
    path, state = published_file
    assert gz21.detect(state).name == "full"
    net = gz21.build(weights=str(path))
    assert isinstance(net, gz21.FullyCNN) and not net.training
    loaded = net.state_dict()
    assert list(loaded) == list(PUBLISHED_SHAPES)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    # the built-in network still works without weights, and --cnn full builds the published shape
    assert isinstance(gz21.build(), gz21.LightCNN)
    full = gz21.build("full").state_dict()
    assert {k: tuple(v.shape) for k, v in full.items()} == PUBLISHED_SHAPES


def test_final_transformation_matches_numpy():
    rng = np.random.default_rng(3)
    y = rng.normal(scale=8.0, size=(3, 4, 5, 6)).astype(np.float32)
    y[0, 2, 0, :3] = (-40.0, 25.0, 0.0)      # both tails of softplus and its middle
    for m in (0.1, 0.0015):
        module = gz21.PrecisionSoftplus(4, min_value=m)
        got = module(torch.from_numpy(y)).numpy()
        want = np_final_transformation(y.astype(np.float64), m)
        np.testing.assert_array_equal(got[:, :2], y[:, :2])          # means untouched
        np.testing.assert_allclose(got[:, 2:], want[:, 2:], rtol=2e-6, atol=1e-6)
        assert np.all(got[:, 2:] >= np.float32(m))                  # precisions positive


def test_network_matches_numpy_forward(published_file):
    path, state = published_file
    net = gz21.build(weights=str(path))
    x = np.random.default_rng(5).normal(scale=0.3, size=(2, 2, 25, 27)).astype(np.float32)
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
        forcing = net.forcing(torch.from_numpy(x)).numpy()
    want = np_published_forward(state, x)
    assert got.shape == want.shape == (2, 4, 25 - 2 * gz21.HALO, 27 - 2 * gz21.HALO)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(forcing, gz21.FORCING_SCALE * want[:, :2], rtol=1e-4, atol=1e-6)
    assert np.abs(want[:, :2]).max() > 1e-2      # the means are not trivially zero


@pytest.mark.parametrize("edit,needle", [
    (lambda s: s.__setitem__("4.weight", torch.zeros(32, 64, 5, 5)),
     "layer '4.weight': expected shape (32, 64, 3, 3), got (32, 64, 5, 5)"),
    (lambda s: s.pop("final_transformation.min_value"),
     "layer 'final_transformation.min_value': expected shape (), missing"),
    (lambda s: s.__setitem__("1.weight", torch.zeros(128)),
     "unexpected layer '1.weight' (shape (128,))"),
])
def test_mismatch_names_the_first_bad_layer(edit, needle):
    state = published_like()
    edit(state)
    with pytest.raises(gz21.WeightsError) as info:
        gz21.detect(state, source="w.pth")
    text = str(info.value)
    assert needle in text and "published GZ21" in text and "\n" not in text


def test_demo_refuses_a_misfit_before_mpi(tmp_path):
    state = published_like()
    state["2.weight"] = torch.zeros(64, 128, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    out = tmp_path / "out"
    res = subprocess.run(EXE + ["demo", "--weights", str(bad), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "layer '2.weight': expected shape (64, 128, 5, 5), got (64, 128, 3, 3)" in lines[0]
    assert res.stdout == ""                               # no launch line was printed
    assert not (out / "config.json").exists()             # written just before mpiexec starts


@pytest.mark.mpi
def test_coupled_run_with_published_shapes_passes(published_file, tmp_path):
    pytest.importorskip("matplotlib", reason="the demo's figure needs matplotlib")
    path, _ = published_file
    out = tmp_path / "out"
    res = subprocess.run(EXE + ["demo", "--grid", "DINO", "--steps", "3", "--levels", "2",
                                "--model-ranks", "2", "--workers", "1", "--weights", str(path),
                                "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "network: the published GZ21 FullyCNN" in res.stdout
    assert "PASS: largest difference" in res.stdout
    with np.load(out / "coupled.npz") as data:
        su, u = data["su"], data["u"]
    # the forcing is a real correction, so the comparison (relative to each field) checks it
    assert np.all(np.isfinite(su)) and np.abs(su).max() > 1e-3 * np.abs(u).max()
