/* eophis_hpc C client: the bind(C) entry points of the Fortran module eophis_hpc
 * (ext/fortran/eophis_hpc.f90), for C and C++ models. Link with the Fortran object or
 * library and the MPI Fortran library (mpifort does both; or add -lgfortran and the MPI
 * Fortran library to a C link).
 *
 * Every function returns EH_OK (0) or an EH_ERR_* code; eh_error_message() gives the
 * message. eh_abort_on_error(1) makes any error print its message and abort the job instead.
 *
 * Arrays are C-contiguous [nk][ny + south + north][nx + west + east] (i fastest): the same
 * memory as the Fortran array (nx + west + east, ny + south + north, nk). Global indices in
 * eh_box are 1-based, as in the Fortran API.
 */
#ifndef EOPHIS_HPC_H
#define EOPHIS_HPC_H

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  EH_OK = 0,           /* success */
  EH_ERR_ARG = 1,      /* a bad argument (shape, name, kind, ...) */
  EH_ERR_STATE = 2,    /* a call out of order (put before enddef, ...) */
  EH_ERR_HANDSHAKE = 3,/* the workers refused the declaration */
  EH_ERR_TIMEOUT = 4,  /* a peer did not answer in time */
  EH_ERR_MPI = 5,      /* an MPI call failed */
  EH_ERR_RESTART = 6   /* a coupling restart is missing, truncated or differs from the run */
};

int eh_init_f(int *model_comm_f);  /* Fortran handle of the model communicator */
int eh_grid(int nx, int ny, const char *east_west, const char *south, const char *north,
            const char *pivot);
int eh_box(int i0, int j0, int ni, int nj, const int halo[4] /* west, east, south, north */,
           int holes);
int eh_field(const char *name, int levels, const char *direction /* "in" | "out" */,
             const char *dtype /* "float64" | "float32" */, int *id);
int eh_field_id(const char *name, int *id);
int eh_enddef(void);
/* eh_enddef, lagged exchanges starting from the coupling restart PREFIX_rRRRR.ehr */
int eh_enddef_restart(const char *prefix);
int eh_put_raw(int id, const void *array, int itemsize, int nk, int step, int nonblocking);
int eh_get_raw(int id, void *array, int itemsize, int nk, int step);
int eh_wait(void);
int eh_finalize(void);
/* eh_finalize, writing the lagged results still in flight to PREFIX_rRRRR.ehr */
int eh_finalize_restart(const char *prefix);
int eh_set_timeout(double seconds);
int eh_abort_on_error(int flag);
int eh_error_message(char *buf, int n);

/* Join the coupled job (initialises MPI if needed) and get the model's own communicator,
 * to use instead of MPI_COMM_WORLD. */
static inline int eh_init(MPI_Comm *model_comm) {
  MPI_Fint f = 0;
  int status = eh_init_f(&f);
  *model_comm = status == EH_OK ? MPI_Comm_f2c(f) : MPI_COMM_NULL;
  return status;
}

/* nk: the array's number of levels (at least the field's levels). */
static inline int eh_put_double(int id, const double *array, int nk, int step) {
  return eh_put_raw(id, array, (int)sizeof(double), nk, step, 0);
}
static inline int eh_put_double_nonblocking(int id, const double *array, int nk, int step) {
  return eh_put_raw(id, array, (int)sizeof(double), nk, step, 1);
}
static inline int eh_put_float(int id, const float *array, int nk, int step) {
  return eh_put_raw(id, array, (int)sizeof(float), nk, step, 0);
}
static inline int eh_get_double(int id, double *array, int nk, int step) {
  return eh_get_raw(id, array, (int)sizeof(double), nk, step);
}
static inline int eh_get_float(int id, float *array, int nk, int step) {
  return eh_get_raw(id, array, (int)sizeof(float), nk, step);
}

#ifdef __cplusplus
}
#endif

#endif /* EOPHIS_HPC_H */
