"""A CNN shaped like Guillaumin & Zanna (2021)'s FullyCNN: 8 'valid' convolutions (5x5, 5x5,
then six 3x3), so its receptive field is 21x21 and a tile with a halo of 10 yields exactly its
own box. Inputs (u, v) as 2 channels, outputs the subgrid forcing (Su, Sv); levels ride in the
batch dimension, as in the Morays DINO.GZ21 case."""
from __future__ import annotations

HALO = 10
KERNELS = (5, 5, 3, 3, 3, 3, 3, 3)
FULL_WIDTHS = (128, 64, 32, 32, 32, 32, 32)   # the published network's hidden channels
LIGHT_WIDTHS = (16, 8, 8, 8, 8, 8, 8)         # the demo's default: same shape, laptop-sized


def build(widths=LIGHT_WIDTHS, seed: int = 0, scale: float = 0.5, weights: str | None = None):
    """The network in eval mode with fixed-seed weights (or ``weights``, a state-dict file
    loaded with ``weights_only=True``). ``scale`` shrinks the last layer so the forcing stays a
    small correction to the ocean's own dynamics."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    chans = (2,) + tuple(widths) + (2,)
    layers = []
    for k, (cin, cout, ks) in enumerate(zip(chans[:-1], chans[1:], KERNELS)):
        layers.append(nn.Conv2d(cin, cout, ks))
        if k < len(KERNELS) - 1:
            layers += [nn.BatchNorm2d(cout), nn.ReLU()]
    net = nn.Sequential(*layers)
    if weights:
        net.load_state_dict(torch.load(weights, weights_only=True))
    else:  # no biases: the forcing is a positively homogeneous function of the flow, not a constant
        with torch.no_grad():
            for layer in net:
                if isinstance(layer, nn.Conv2d):
                    layer.bias.zero_()
            net[-1].weight.mul_(scale)
    return net.eval()


def apply(net, u, v):
    """Su, Sv for batches ``u, v`` of shape (tiles, levels, H + 2*HALO, W + 2*HALO)."""
    import torch

    n, nz, hh, ww = u.shape
    x = torch.stack((u, v), dim=2).reshape(n * nz, 2, hh, ww)
    with torch.no_grad():
        y = net(x)
    y = y.reshape(n, nz, 2, hh - 2 * HALO, ww - 2 * HALO)
    return y[:, :, 0].contiguous(), y[:, :, 1].contiguous()
