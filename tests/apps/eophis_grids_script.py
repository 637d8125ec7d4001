"""An Eophis 1.0.2 script whose tunnel uses several grids (as Eophis' own halo_decomposition
test does), unchanged except for its import: ``grid_cycl`` (closed east-west, cyclic
north-south, 2 halo cells), ``grid_fold`` (cyclic east-west, north fold on an F pivot, V points,
1 halo cell) and ``grid_foldF`` (the same grid at F points). The router takes centred differences
in x and y of every input (they read the halos); ``psi`` comes every 2 s, ``phi`` and ``zeta``
every 4 s, so some dates have one grid group due and some both.

Preproduction writes the namcouple; production couples over MPI (model side
tests/apps/eophis_grids_model.py) or over OASIS (EOPHIS_HPC_TRANSPORT=oasis, model side
tests/apps/eophis_grids_oasis_model.py, which uses pyoasis only).
"""
# eophis API
import eophis_hpc.compat as eophis
# other modules
import argparse
import os

import numpy as np

NPTS = (12, 10)


def earth_info():
    earth_nml = eophis.FortranNamelist(os.path.join(os.getcwd(), 'earth_namelist'))
    tunnel_config = list()
    tunnel_config.append({'label': 'TO_EARTH',
                          'grids': {'grid_cycl': {'npts': NPTS, 'halos': 2, 'bnd': ('close', 'cyclic')},
                                    'grid_fold': {'npts': NPTS, 'halos': 1, 'bnd': ('cyclic', 'NFold'),
                                                  'folding': ('V', 'F')},
                                    'grid_foldF': {'npts': NPTS, 'halos': 1, 'bnd': ('cyclic', 'NFold'),
                                                   'folding': ('F', 'F')}},
                          'exchs': [{'freq': 2, 'grd': 'grid_cycl', 'lvl': 3, 'in': ['psi'],
                                     'out': ['dxpsi', 'dypsi']},
                                    {'freq': 4, 'grd': 'grid_fold', 'lvl': 2, 'in': ['phi'],
                                     'out': ['dxphi', 'dyphi']},
                                    {'freq': 4, 'grd': 'grid_foldF', 'lvl': 1, 'in': ['zeta'],
                                     'out': ['dxzeta']}]})
    return tunnel_config, earth_nml


def deltaxy(fld):
    """Centred differences in x and y of an (x, y, z) array with halos; the outer ring stays 0."""
    if fld is None:
        return None, None
    dx, dy = np.zeros_like(fld), np.zeros_like(fld)
    dx[1:-1, :, :] = fld[2:, :, :] - fld[:-2, :, :]
    dy[:, 1:-1, :] = fld[:, 2:, :] - fld[:, :-2, :]
    return dx, dy


def preproduction():
    eophis.info('========= EOPHIS_HPC GRIDS TEST : Pre-Production =========')
    tunnel_config, earth_nml = earth_info()
    step, it_end, it_0 = earth_nml.get('rn_Dt', 'nn_itend', 'nn_it000')
    eophis.register_tunnels(tunnel_config)
    eophis.write_coupling_namelist(simulation_time=(it_end - it_0 + 1) * step)


def production():
    eophis.info('========= EOPHIS_HPC GRIDS TEST : Production =========')
    tunnel_config, earth_nml = earth_info()
    step, it_end, it_0 = earth_nml.get('rn_Dt', 'nn_itend', 'nn_it000')
    niter = it_end - it_0 + 1
    earth, = eophis.register_tunnels(tunnel_config)
    eophis.open_tunnels()

    @eophis.all_in_all_out(geo_model=earth, step=step, niter=niter)
    def loop_core(**inputs):
        outputs = {}
        outputs['dxpsi'], outputs['dypsi'] = deltaxy(inputs['psi'])
        outputs['dxphi'], outputs['dyphi'] = deltaxy(inputs['phi'])
        outputs['dxzeta'], _ = deltaxy(inputs['zeta'])
        return outputs

    eophis.starter(loop_core)
    print('eophis grids script: OK', flush=True)


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
