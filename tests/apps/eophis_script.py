"""An Eophis 1.0.2 script, unchanged except for its import (``import eophis`` ->
``import eophis_hpc.compat as eophis``): a tunnel with a halo grid on cyclic/NFold, a static
mask, an hourly and a daily exchange, an ``@all_in_all_out`` router.

Preproduction writes the namcouple; production couples with the model side
(tests/apps/eophis_model.py, written with ``eh.connect``) over the MPI transport:
``mpiexec -n P python eophis_model.py : -n Q python eophis_script.py --exec prod``.
"""
# eophis API
import eophis_hpc.compat as eophis
from eophis_hpc.compat import Freqs
# other modules
import argparse
import os

import numpy as np


def earth_info():
    """Tunnel 'TO_EARTH' on an ORCA-like grid (cyclic east-west, T-pivot north fold, 1 halo)."""
    earth_nml = eophis.FortranNamelist(os.path.join(os.getcwd(), 'earth_namelist'))
    tunnel_config = list()
    tunnel_config.append({'label': 'TO_EARTH',
                          'grids': {'eORCA_toy': {'npts': (24, 14), 'halos': 1,
                                                  'bnd': ('cyclic', 'NFold'),
                                                  'folding': ('T', 'T')}},
                          'exchs': [{'freq': Freqs.HOURLY, 'grd': 'eORCA_toy', 'lvl': 1,
                                     'in': ['sst'], 'out': ['sst_grad']},
                                    {'freq': Freqs.DAILY, 'grd': 'eORCA_toy', 'lvl': 3,
                                     'in': ['svt'], 'out': ['svt_var']},
                                    {'freq': Freqs.STATIC, 'grd': 'eORCA_toy', 'lvl': 1,
                                     'in': ['msk'], 'out': []}]})
    return tunnel_config, earth_nml


def gradient(fld, msk):
    """Centred differences in x and y (they read the halo), masked; halo cells left at 0."""
    if fld is None:
        return None
    out = np.zeros_like(fld)
    out[1:-1, 1:-1, :] = (fld[2:, 1:-1, :] - fld[:-2, 1:-1, :]) + (fld[1:-1, 2:, :] - fld[1:-1, :-2, :])
    return out * msk


def preproduction():
    eophis.info('========= EOPHIS_HPC COMPAT TEST : Pre-Production =========')
    tunnel_config, earth_nml = earth_info()
    step, it_end, it_0 = earth_nml.get('rn_Dt', 'nn_itend', 'nn_it000')
    total_time = (it_end - it_0 + 1) * step
    eophis.register_tunnels(tunnel_config)
    eophis.write_coupling_namelist(simulation_time=total_time)


def production():
    eophis.info('========= EOPHIS_HPC COMPAT TEST : Production =========')
    tunnel_config, earth_nml = earth_info()
    step, it_end, it_0 = earth_nml.get('rn_Dt', 'nn_itend', 'nn_it000')
    niter = it_end - it_0 + 1

    earth, = eophis.register_tunnels(tunnel_config)
    eophis.open_tunnels()
    msk = earth.receive('msk')

    @eophis.all_in_all_out(geo_model=earth, step=step, niter=niter)
    def loop_core(**inputs):
        outputs = {}
        outputs['sst_grad'] = gradient(inputs['sst'], msk)
        outputs['svt_var'] = None if inputs['svt'] is None else inputs['svt'] + 100.0
        return outputs

    eophis.starter(loop_core)
    eophis.close_tunnels()
    print('eophis script: OK', flush=True)


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--exec', dest='exec', type=str, default='prod',
                        help='Execution type: preprod or prod')
    args = parser.parse_args()

    eophis.set_mode(args.exec)

    if args.exec == 'preprod':
        preproduction()
    elif args.exec == 'prod':
        production()
    else:
        eophis.abort(f'Unknown execution mode {args.exec}, use "preprod" or "prod"')
