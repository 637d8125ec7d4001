"""The demo's CNNs, both shaped like Guillaumin & Zanna (2021)'s FullyCNN: 8 'valid'
convolutions (5x5, 5x5, then six 3x3), so the receptive field is 21x21 and a tile with a halo of
10 yields exactly its own box. Inputs (u, v) as 2 channels; levels ride in the batch dimension,
as in the Morays DINO.GZ21 case.

Two architectures, told apart by a state dict's keys and shapes (:func:`detect`):

- ``light``: the demo's built-in small network (16, 8, ... channels, BatchNorm, 2 outputs Su, Sv).
- ``full``: the published GZ21 network (128, 64, 32, 32, 32, 32, 32 channels, ReLU, no
  BatchNorm, 4 outputs: the means of Su and Sv, then their precisions), with the published
  ``final_transformation`` on the precision channels: ``softplus(x) + min_value``.

This module imports PyTorch: import it only where PyTorch is known to be installed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn.functional import softplus

HALO = 10
KERNELS = (5, 5, 3, 3, 3, 3, 3, 3)
FULL_WIDTHS = (128, 64, 32, 32, 32, 32, 32)   # the published network's hidden channels
LIGHT_WIDTHS = (16, 8, 8, 8, 8, 8, 8)         # the demo's default: same shape, laptop-sized
MIN_VALUE = 0.1   # the published transformation's initial min_value (trained weights carry theirs)
# The published network's mean channels -> the demo ocean's forcing: with the published weights
# and the demo's velocities (about 0.1) the forcing is then up to about 1e-3, against a wind
# stress of 0.02.
FORCING_SCALE = 0.1
# The published FullyCNN is an nn.Sequential whose final_transformation is also one of its
# registered children: Sequential.forward runs it after the last convolution, then
# FullyCNN.forward runs it once more. The weights were trained (and are evaluated by their
# authors' inference code) with both passes, so the demo applies it twice as well.
TRANSFORM_PASSES = 2


class WeightsError(ValueError):
    """A weights file the demo cannot use; the message is one line naming the file and why."""


class PrecisionSoftplus(nn.Module):
    """The published ``final_transformation``: the second half of the channels (the predicted
    precisions) become ``softplus(x) + min_value``, positive as the Gaussian likelihood they were
    trained with requires; the first half (the means) is left as is. ``min_value`` is used as
    stored (the published module's getter that would soften it is shadowed by the registered
    parameter of the same name, as the published network's printed form shows)."""

    def __init__(self, channels: int = 4, min_value: float = MIN_VALUE):
        super().__init__()
        self.n_means = channels // 2
        self.register_buffer("min_value", torch.tensor(float(min_value)))

    def forward(self, y):
        means, precisions = y[:, :self.n_means], y[:, self.n_means:]
        return torch.cat((means, softplus(precisions) + self.min_value), dim=1)


class LightCNN(nn.Sequential):
    """The built-in small network: conv, BatchNorm, ReLU blocks, 2 outputs (Su, Sv)."""

    def __init__(self, widths=LIGHT_WIDTHS):
        chans = (2,) + tuple(widths) + (2,)
        layers = []
        for k, (cin, cout, ks) in enumerate(zip(chans[:-1], chans[1:], KERNELS)):
            layers.append(nn.Conv2d(cin, cout, ks))
            if k < len(KERNELS) - 1:
                layers += [nn.BatchNorm2d(cout), nn.ReLU()]
        super().__init__(*layers)

    def forcing(self, x):
        """(Su, Sv) as 2 channels for inputs (u, v) as 2 channels."""
        return self(x)


class FullyCNN(nn.Module):
    """The published GZ21 network: conv + ReLU blocks (state-dict keys ``0.*``, ``2.*``, ...,
    ``14.*``), then ``final_transformation`` (key ``final_transformation.min_value``).
    ``forward`` returns the 4 published channels; :meth:`forcing` the demo's (Su, Sv)."""

    def __init__(self, widths=FULL_WIDTHS):
        super().__init__()
        chans = (2,) + tuple(widths) + (4,)
        layers = []
        for k, (cin, cout, ks) in enumerate(zip(chans[:-1], chans[1:], KERNELS)):
            layers.append(nn.Conv2d(cin, cout, ks))
            if k < len(KERNELS) - 1:
                layers.append(nn.ReLU())
        self.layer_names = tuple(str(k) for k in range(len(layers)))
        for name, layer in zip(self.layer_names, layers):
            self.add_module(name, layer)
        self.final_transformation = PrecisionSoftplus(chans[-1])

    def forward(self, x):
        for name in self.layer_names:
            x = getattr(self, name)(x)
        for _ in range(TRANSFORM_PASSES):
            x = self.final_transformation(x)
        return x

    def forcing(self, x):
        """The predicted means of (Su, Sv), scaled to the demo ocean (the deterministic part of
        the stochastic GZ21 closure, so the coupled and single-process runs can be compared)."""
        return FORCING_SCALE * self(x)[:, :2]


def _light(seed: int):
    """Fixed-seed weights without biases (the forcing is then a positively homogeneous function
    of the flow, not a constant) and a last layer shrunk so the forcing stays a small correction
    to the ocean's own dynamics."""
    torch.manual_seed(seed)
    net = LightCNN()
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Conv2d):
                layer.bias.zero_()
        net[-1].weight.mul_(0.5)
    return net


def _full(seed: int):
    torch.manual_seed(seed)
    return FullyCNN()


@dataclass(frozen=True)
class Architecture:
    """A network the demo can build: its ``--cnn`` name, a description, a fixed-seed maker."""
    name: str
    description: str
    make: Callable[[int], nn.Module]

    def shapes(self) -> dict[str, tuple]:
        """State-dict key -> tensor shape, in layer order."""
        with torch.device("meta"):
            net = self.make(0)
        return {k: tuple(v.shape) for k, v in net.state_dict().items()}


ARCHITECTURES = {
    "light": Architecture("light", "the demo's built-in small CNN (16, 8, ... channels)", _light),
    "full": Architecture("full", "the published GZ21 FullyCNN (128, 64, 32 channels)", _full),
}


def first_mismatch(expected: dict, state: dict) -> str | None:
    """The first layer (in ``expected``'s order) whose key or shape differs, as a phrase;
    then the first unexpected key; ``None`` when ``state`` fits."""
    for key, shape in expected.items():
        if key not in state:
            return f"layer {key!r}: expected shape {shape}, missing"
        got = tuple(state[key].shape)
        if got != shape:
            return f"layer {key!r}: expected shape {shape}, got {got}"
    for key in state:
        if key not in expected:
            return f"unexpected layer {key!r} (shape {tuple(state[key].shape)})"
    return None


def detect(state: dict, source: str = "the state dict") -> Architecture:
    """The architecture ``state`` fits exactly, else :class:`WeightsError` naming the closest
    architecture (most layers of the right shape) and its first mismatching layer."""
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise WeightsError(f"{source} is not a state dict (a mapping of layer names to tensors, "
                           "as saved by torch.save(model.state_dict(), FILE))")
    ranked = []
    for arch in ARCHITECTURES.values():
        expected = arch.shapes()
        why = first_mismatch(expected, state)
        if why is None:
            return arch
        fits = sum(1 for k, s in expected.items() if k in state and tuple(state[k].shape) == s)
        common = sum(1 for k in expected if k in state)
        ranked.append(((fits, common), arch, why))
    _, arch, why = max(ranked, key=lambda r: r[0])
    raise WeightsError(f"{source} fits no network of the demo (closest: {arch.description}): "
                       f"{why}")


def read_weights(path: str) -> dict:
    """The state dict in ``path``, loaded with ``weights_only=True`` (no arbitrary objects are
    unpickled); a Lightning-style ``{'state_dict': ...}`` checkpoint is unwrapped."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a user's file: any failure to read it is reported, on one line
        text = str(exc)
        if "WeightsUnpickler error:" in text:
            why = text.split("WeightsUnpickler error:", 1)[1].split(". Please", 1)[0].strip()
            raise WeightsError(f"{path}: refused by torch.load(weights_only=True): {why}; save "
                               "model.state_dict() rather than the model object") from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise WeightsError(f"{path}: not a PyTorch weights file ({type(exc).__name__}: "
                           f"{first})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return obj


def load(weights: str, cnn: str | None = None) -> tuple[Architecture, dict]:
    """The architecture the state dict in ``weights`` describes and that state dict; with
    ``cnn``, the two must agree. Every refusal is a one-line :class:`WeightsError`."""
    state = read_weights(weights)
    arch = detect(state, source=str(weights))
    if cnn is not None and cnn != arch.name:
        raise WeightsError(f"--cnn {cnn} but {weights} holds {arch.description} (--cnn "
                           f"{arch.name}); leave --cnn out to use the file's network")
    return arch, state


def build(cnn: str | None = None, weights: str | None = None, seed: int = 0):
    """The network in eval mode: the one ``weights`` (a state-dict file) describes, loaded with
    ``weights_only=True``; without a file, ``cnn`` (``light``, the default, or ``full``) with
    fixed-seed weights."""
    if weights is None:
        return ARCHITECTURES[cnn or "light"].make(seed).eval()
    arch, state = load(weights, cnn)
    net = arch.make(seed)
    net.load_state_dict(state)
    return net.eval()


def apply(net, u, v):
    """Su, Sv for batches ``u, v`` of shape (tiles, levels, H + 2*HALO, W + 2*HALO)."""
    n, nz, hh, ww = u.shape
    x = torch.stack((u, v), dim=2).reshape(n * nz, 2, hh, ww)
    with torch.no_grad():
        y = net.forcing(x)
    y = y.reshape(n, nz, 2, hh - 2 * HALO, ww - 2 * HALO)
    return y[:, :, 0].contiguous(), y[:, :, 1].contiguous()
