"""Where the model's batches live and how they get there (layer 6).

One function, :func:`staging_policy`, decides for a framework and a device how the tiles reach
the model and the results come back, and says why:

``host``
    the model runs on the CPU: the unpack kernels write straight into the batch and the model
    gets a zero-copy view of it (``torch.from_numpy``, DLPack for JAX), outputs are viewed the
    same way before the send side reads them;
``staged``
    the model runs on a GPU, MPI does not touch device memory: the batch is pinned host memory,
    one asynchronous host-to-device copy per chunk moves it on a non-blocking CUDA stream owned
    by the tunnel, outputs come back by asynchronous device-to-host copies into pinned buffers
    that the send side reads (JAX stages its own copies: plain host memory, ``jax.device_put``);
``direct``
    the model runs on a GPU and the user opted in to a CUDA-aware MPI: the packed receive and
    send buffers are device memory, unpack (with the cast and the fold) and pack run on the
    device (:mod:`.cuda_kernels`, on the model's stream), no host copy at all.

Modules: :mod:`.policy` (the decision, the framework registry), :mod:`.detect` (GPUs, the
rank's GPU, CUDA-aware MPI, JAX memory), :mod:`.host` (host memory, views, dtypes), the
adapters (:mod:`.base`, :mod:`.torch_jax`, :mod:`.cuda_adapters`) and :mod:`.cuda_kernels`.
Numba's CUDA kernels are imported only when a device path needs them.
"""
from __future__ import annotations

from .base import Adapter, NumpyAdapter
from .cuda_adapters import CupyAdapter, NumbaAdapter
from .detect import (ENV_CUDA_AWARE, gpu_count, gpu_for_rank, gpu_status, jax_gpu_memory,
                     mpi_cuda_aware, node_rank, simulator)
from .host import (ALIGN, HostCudaArray, aligned_empty, host_view, mpi_buffer, np_dtype,
                   to_host)
from .policy import (ADAPTERS, EXTRAS, MODES, Policy, adapter, check_framework, parse_device,
                     report, staging_policy, to_framework)
from .torch_jax import JaxAdapter, TorchAdapter

__all__ = ["ADAPTERS", "ALIGN", "Adapter", "CupyAdapter", "ENV_CUDA_AWARE", "EXTRAS",
           "HostCudaArray", "JaxAdapter", "MODES", "NumbaAdapter", "NumpyAdapter", "Policy",
           "TorchAdapter", "adapter", "aligned_empty", "check_framework", "device_backend",
           "gpu_count", "gpu_for_rank", "gpu_status", "host_view", "jax_gpu_memory",
           "mpi_buffer", "mpi_cuda_aware", "node_rank", "np_dtype", "parse_device", "report",
           "simulator", "staging_policy", "synchronize", "to_framework", "to_host"]


def device_backend(stream_of=None):
    """The GPU kernels as a :class:`eophis_hpc.kernels.Backend` (``numba-cuda``) for buffers in
    device memory, launching on ``stream_of()`` (the model's stream; the default stream when
    None). Not part of the host backends' registry: chosen by the ``direct`` mode only."""
    from ..kernels import Backend
    from . import cuda_kernels
    pack, unpack, fill = cuda_kernels.bound(stream_of if stream_of is not None else lambda: 0)
    return Backend("numba-cuda", pack, unpack, fill)


def synchronize() -> None:
    """Wait for every device kernel (before MPI reads or reuses a device buffer)."""
    from . import cuda_kernels
    cuda_kernels.synchronize()
