"""Host/device hand-over of batches (layer 6): NumPy arrays to the model's framework and back.

Conversions never copy on the host: ``torch.from_numpy`` shares the batch buffer, and returned
tensors are viewed through ``.numpy()`` (CPU) before the send side reads them.
"""
from __future__ import annotations

import numpy as np

FRAMEWORKS = ("numpy", "torch")


def check_framework(framework: str) -> str:
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r} is not one of {FRAMEWORKS}")
    if framework == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise ImportError("framework='torch' needs PyTorch: pip install 'eophis_hpc[torch]' "
                              "(pins the CPU-friendly torch==2.13.0)") from None
    return framework


def to_framework(batch: np.ndarray, framework: str):
    """The batch as the framework's tensor type, sharing memory."""
    if framework == "torch":
        import torch
        return torch.from_numpy(batch)
    return batch


def to_host(value, where: str) -> np.ndarray:
    """A NumPy view of a model output (NumPy array or CPU tensor), without copying."""
    if isinstance(value, np.ndarray):
        return value
    mod = type(value).__module__.split(".")[0]
    if mod == "torch":
        if value.device.type != "cpu":
            value = value.cpu()
        return value.detach().numpy()
    if hasattr(value, "__array__"):
        return np.asarray(value)
    raise TypeError(f"{where}: expected an array or tensor, got {type(value).__name__}")
