/* C smoke test of the client through eophis_hpc.h: model ranks split a closed 20x12 grid in i,
 * arrays carry a one-point halo, one exchange u -> su per step. Checks the stencil the workers
 * return (computed here from the global field, 0 outside the grid), that the halo is left
 * alone, and that a wrong call is refused with a status and a message. Exit 0 only if all holds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eophis_hpc.h"

#define NX 20
#define NY 12
#define H 1
#define JUNK -555.0

static double value(int gj, int gi, int step) {
  if (gj < 0 || gj >= NY || gi < 0 || gi >= NX) return 0.0;
  return (double)(gi + 200 * gj + 7 * step);
}

static int check(int status, const char *what) {
  if (status != EH_OK) {
    char msg[1024];
    eh_error_message(msg, (int)sizeof msg);
    fprintf(stderr, "smoke: %s failed (%d): %s\n", what, status, msg);
    MPI_Abort(MPI_COMM_WORLD, 3);
  }
  return status;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm comm;
  check(eh_init(&comm), "eh_init");
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int i0 = rank * NX / size, ni = (rank + 1) * NX / size - i0;
  int halo[4] = {H, H, H, H};
  int iu, isu, bad = 0;
  check(eh_grid(NX, NY, "closed", "closed", "closed", "T"), "eh_grid");
  check(eh_box(i0 + 1, 1, ni, NY, halo, 0), "eh_box");
  check(eh_field("u", 1, "in", "float64", &iu), "eh_field(u)");
  check(eh_field("su", 1, "out", "float64", &isu), "eh_field(su)");
  int dup;
  if (eh_field("u", 1, "in", "float64", &dup) != EH_ERR_ARG) bad++; /* declared twice */
  check(eh_enddef(), "eh_enddef");

  int ax = ni + 2 * H, ay = NY + 2 * H;
  double *u = malloc(sizeof(double) * ax * ay), *su = malloc(sizeof(double) * ax * ay);
  for (int step = 0; step < 3; step++) {
    for (int n = 0; n < ax * ay; n++) u[n] = su[n] = JUNK;
    for (int j = 0; j < NY; j++)
      for (int i = 0; i < ni; i++) u[(j + H) * ax + i + H] = value(j, i0 + i, step);
    if (step == 0) { /* a float array for a float64 field: refused, named */
      char msg[1024];
      if (eh_put_float(iu, (const float *)u, 1, step) != EH_ERR_ARG) bad++;
      eh_error_message(msg, (int)sizeof msg);
      if (!strstr(msg, "float64")) {
        fprintf(stderr, "smoke: unexpected message: %s\n", msg);
        bad++;
      }
    }
    check(eh_put_double(iu, u, 1, step), "eh_put");
    check(eh_get_double(isu, su, 1, step), "eh_get");
    for (int j = -H; j < NY + H; j++)
      for (int i = -H; i < ni + H; i++) {
        double got = su[(j + H) * ax + i + H];
        if (j < 0 || j >= NY || i < 0 || i >= ni) {
          if (got != JUNK) bad++;
          continue;
        }
        int gi = i0 + i;
        double want = ((value(j + 1, gi, step) - value(j - 1, gi, step)) +
                       2.0 * (value(j, gi + 1, step) - value(j, gi - 1, step))) +
                      value(j, gi, step);
        if (got != want) {
          if (!bad) fprintf(stderr, "smoke: rank %d step %d j=%d i=%d got %g want %g\n", rank,
                            step, j, gi, got, want);
          bad++;
        }
      }
  }
  check(eh_finalize(), "eh_finalize");
  int total = 0;
  MPI_Allreduce(&bad, &total, 1, MPI_INT, MPI_SUM, comm);
  if (rank == 0) printf("smoke: %s (%d bad)\n", total ? "FAIL" : "PASS", total);
  free(u);
  free(su);
  MPI_Finalize();
  return total ? 1 : 0;
}
