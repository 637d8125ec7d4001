"""Eophis' API over eophis_hpc: switch an Eophis script by changing its import.

``import eophis`` becomes ``import eophis_hpc.compat as eophis`` (and ``from eophis import
Freqs, Domains`` becomes ``from eophis_hpc.compat import Freqs, Domains``); tunnels given as
Eophis dictionaries run over the MPI transport (the model side uses :func:`eophis_hpc.connect`)
or over OASIS3-MCT (``set_transport("oasis")`` or ``EOPHIS_HPC_TRANSPORT=oasis``). A tunnel may
use several grids; over MPI a Python model side connects with :func:`model_side`. What differs
from Eophis 1.0.2 is listed in docs/compat.md (the north fold is at the last j, as in NEMO).
"""
from .logs import EophisAbort, abort, info, warning
from .model import ModelSide, group_grids, model_side
from .namelist import FortranNamelist, NamelistError
from .tunnels import (Domains, EophisTunnel, Freqs, Mode, all_in_all_out, close_tunnels,
                      get_transport, open_tunnels, register_tunnels, reset, set_mode,
                      set_transport, starter, tunnels_ready, write_coupling_namelist)

__all__ = ["Domains", "EophisAbort", "EophisTunnel", "FortranNamelist", "Freqs", "Mode",
           "ModelSide", "NamelistError", "abort", "all_in_all_out", "close_tunnels",
           "get_transport", "group_grids", "info", "model_side", "open_tunnels",
           "register_tunnels", "reset", "set_mode", "set_transport", "starter", "tunnels_ready",
           "warning", "write_coupling_namelist"]
