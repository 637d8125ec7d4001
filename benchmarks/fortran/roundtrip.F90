! Model side, in Fortran, of eophis_hpc.measure.roundtrip (paths (a) and (b); the Python workers
! run that module's worker side unchanged, with naive=false):
!   (a) eophis: eh_put('u') then eh_get('fu') through the Fortran client, identity model;
!   (b) raw: the box to worker rank % Q over MPI_COMM_WORLD and the same bytes back.
! A step is timed between a model Barrier and the end of the rank's round trip; the step's
! figure is the maximum over model ranks; model rank 0 writes the medians after the warm-up.
!
! Usage: roundtrip CONFIG.txt OUT.json, CONFIG.txt (written by benchmarks/run_fortran_roundtrip.py):
!   nx ny east_west south north pivot levels itemsize warmup steps Q
!   then one line per model rank: j0 j1 i0 i1 (0-based, half-open: eophis_hpc.Decomposition.auto)
#ifndef WP
#define WP 8
#endif
program roundtrip
   use, intrinsic :: iso_fortran_env, only: int64, real64, error_unit
   use mpi_f08
   use eophis_hpc
   implicit none
   integer, parameter :: wp = WP, TAG_RAW = 9101, TAG_REPORT = 9103
   type(MPI_Comm) :: comm, side
   type(MPI_Request) :: reqs(2)
   type(MPI_Status) :: status
   type(MPI_Datatype) :: base
   integer :: nx, ny, nz, itemsize, warmup, steps, q, rank, p, k, j, i, step, n, peer, wrank
   integer :: j0, j1, i0, i1, ierr, unit
   integer, allocatable :: boxes(:, :)
   character(len=16) :: ew, south, north, pivot
   character(len=512) :: cfg_path, out_path
   real(wp), allocatable :: arr(:, :, :), back(:, :, :)
   real(real64), allocatable :: t_mine(:), t_max(:)
   real(real64) :: t0, med_eophis, med_raw
   integer(int64) :: words
   character, allocatable :: report(:)

   call MPI_Init()
   call get_command_argument(1, cfg_path)
   call get_command_argument(2, out_path)
   call MPI_Comm_rank(MPI_COMM_WORLD, wrank)
   call MPI_Comm_split(MPI_COMM_WORLD, 0, wrank, side)  ! the benchmark program's own split first
   call eh_init(comm)
   call MPI_Comm_rank(comm, rank)
   call MPI_Comm_size(comm, p)
   open (newunit=unit, file=trim(cfg_path), status="old", action="read")
   read (unit, *) nx, ny, ew, south, north, pivot, nz, itemsize, warmup, steps, q
   allocate (boxes(4, p))
   read (unit, *) boxes
   close (unit)
   if (itemsize /= wp) then
      write (error_unit, *) "roundtrip: compiled for real(", wp, "), the configuration says", itemsize
      call MPI_Abort(MPI_COMM_WORLD, 2)
   end if
   j0 = boxes(1, rank + 1); j1 = boxes(2, rank + 1); i0 = boxes(3, rank + 1); i1 = boxes(4, rank + 1)
   allocate (arr(i1 - i0, j1 - j0, nz), back(i1 - i0, j1 - j0, nz))
   do k = 1, nz                        ! eophis_hpc.measure.roundtrip.field_box, bit for bit
      do j = 1, j1 - j0
         do i = 1, i1 - i0
            arr(i, j, k) = real(real(mod(int(j0 + j - 1, int64)*nx + (i0 + i - 1), 65521_int64), &
                                     real64)/65521.0_real64 + (k - 1), wp)
         end do
      end do
   end do
   n = warmup + steps
   allocate (t_mine(n), t_max(n))

   ! (a) the Fortran client
   call eh_grid(nx, ny, trim(ew), trim(south), trim(north), trim(pivot))
   call eh_box(i0 + 1, j0 + 1, i1 - i0, j1 - j0)
   call eh_field("u", nz, "in", dtype=merge("float64", "float32", wp == 8))
   call eh_field("fu", nz, "out", dtype=merge("float64", "float32", wp == 8))
   call eh_enddef()
   do step = 0, n - 1
      back = -1.0_wp
      call MPI_Barrier(comm)
      t0 = MPI_Wtime()
      call eh_put("u", arr, step)
      call eh_get("fu", back, step)
      t_mine(step + 1) = MPI_Wtime() - t0
   end do
   if (any(back /= arr)) call fail("eophis path: a different field came back")
   call eh_finalize()
   call MPI_Reduce(t_mine, t_max, n, MPI_DOUBLE_PRECISION, MPI_MAX, 0, comm)
   med_eophis = median(t_max(warmup + 1:))
   call MPI_Barrier(MPI_COMM_WORLD)

   ! (b) raw MPI, the same bytes
   base = MPI_DOUBLE
   if (wp == 4) base = MPI_FLOAT
   peer = p + mod(rank, q)
   do step = 0, n - 1
      back = -1.0_wp
      call MPI_Barrier(comm)
      t0 = MPI_Wtime()
      call MPI_Irecv(back, size(back), base, peer, TAG_RAW, MPI_COMM_WORLD, reqs(1))
      call MPI_Isend(arr, size(arr), base, peer, TAG_RAW, MPI_COMM_WORLD, reqs(2))
      call MPI_Waitall(2, reqs, MPI_STATUSES_IGNORE)
      t_mine(step + 1) = MPI_Wtime() - t0
   end do
   if (any(back /= arr)) call fail("raw path: a different field came back")
   call MPI_Reduce(t_mine, t_max, n, MPI_DOUBLE_PRECISION, MPI_MAX, 0, comm)
   med_raw = median(t_max(warmup + 1:))
   call MPI_Barrier(MPI_COMM_WORLD)

   if (rank == 0) then                 ! the workers' phase report (a pickle): not needed here
      call MPI_Probe(p, TAG_REPORT, MPI_COMM_WORLD, status)
      call MPI_Get_count(status, MPI_BYTE, k)
      allocate (report(k))
      call MPI_Recv(report, k, MPI_BYTE, p, TAG_REPORT, MPI_COMM_WORLD, MPI_STATUS_IGNORE)
      open (newunit=unit, file=trim(out_path), status="replace", action="write")
      write (unit, '(a,es12.5,a,es12.5,a,i0,a)') '{"eophis_s": ', med_eophis, ', "raw_s": ', &
         med_raw, ', "steps": ', steps, '}'
      close (unit)
   end if
   call MPI_Comm_free(side)
   call MPI_Finalize(ierr)

contains

   real(real64) function median(x)
      real(real64), intent(in) :: x(:)
      real(real64) :: s(size(x)), tmp
      integer :: a, b
      s = x
      do a = 2, size(s)                ! insertion sort: a few dozen samples
         tmp = s(a)
         b = a - 1
         do while (b >= 1)
            if (s(b) <= tmp) exit
            s(b + 1) = s(b)
            b = b - 1
         end do
         s(b + 1) = tmp
      end do
      if (mod(size(s), 2) == 1) then
         median = s((size(s) + 1)/2)
      else
         median = 0.5_real64*(s(size(s)/2) + s(size(s)/2 + 1))
      end if
   end function median

   subroutine fail(msg)
      character(len=*), intent(in) :: msg
      write (error_unit, '(a,i0,a,a)') "roundtrip model rank ", rank, ": ", msg
      call MPI_Abort(MPI_COMM_WORLD, 1)
   end subroutine fail

end program roundtrip
