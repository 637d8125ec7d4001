! Toy Fortran model for the client tests: a box decomposition on the model ranks, arrays that
! carry the model's own halo, two exchanges (u every step on T points; v, a vector component
! with sign -1 on V points, every EVERY_V steps). The workers return a halo-using stencil of
! each input; this program computes the same stencil from the global field and the grid's
! boundary conditions (closed, cyclic, north fold) on its own, and stops with a non-zero exit
! when anything differs. Compiled once per real kind: -DWP=8 or -DWP=4.
!
! Lagged exchanges (optional arguments): su and sv at step n are the stencils of the inputs of
! the occurrence lag_u (lag_v) occurrences earlier, or INITIAL_U (INITIAL_V) before the first
! one; ``start`` is the first step (a restarted run); ``restart_in`` / ``restart_out`` ('-':
! none) are the coupling restart prefixes of eh_enddef / eh_finalize.
!
! Usage: toy_model nx ny east_west south north pivot px py model_halo levels steps every_v outdir
!        [lag_u lag_v start restart_in restart_out]
#ifndef WP
#define WP 8
#endif
program toy_model
   use, intrinsic :: iso_fortran_env, only: int64, error_unit
   use mpi_f08
   use eophis_hpc
   implicit none
   integer, parameter :: wp = WP
   real(wp), parameter :: JUNK_IN = -777.0_wp, JUNK_OUT = -555.0_wp
   real(wp), parameter :: INITIAL_U = 0.5_wp, INITIAL_V = -2.0_wp  ! as tests/apps/fortran_workers.py
   integer :: nx, ny, px, py, hm, nz, steps, every_v, lag_u = 0, lag_v = 0, start = 0
   character(len=512) :: restart_in = "-", restart_out = "-"
   character(len=16) :: ew, south, north, pivot
   character(len=512) :: outdir
   type(MPI_Comm) :: comm
   integer :: rank, nranks, pi, pj, i0, j0, ni, nj, ierr, step, id_v, bad, total_bad, ierror
   integer :: fold_u(2), fold_v(2)
   real(wp), allocatable :: u(:, :, :), v(:, :, :), su(:, :, :), sv(:, :, :)
   character(len=512) :: first_bad
   character(len=8) :: dtype

   call read_args()
   call MPI_Init()                      ! the model owns MPI, as NEMO does
   call eh_init(comm)                   ! no ierr: an error prints its message and aborts
   call MPI_Comm_rank(comm, rank)
   call MPI_Comm_size(comm, nranks)
   if (nranks /= px*py) then
      if (rank == 0) write (error_unit, *) "toy_model: px*py must equal the model ranks"
      error stop 2
   end if
   pi = mod(rank, px)
   pj = rank/px
   i0 = pi*nx/px + 1
   ni = (pi + 1)*nx/px - pi*nx/px
   j0 = pj*ny/py + 1
   nj = (pj + 1)*ny/py - pj*ny/py
   dtype = merge("float64", "float32", wp == 8)

   call eh_grid(nx, ny, trim(ew), trim(south), trim(north), trim(pivot), ierr=ierr)
   call check(ierr, "eh_grid")
   call eh_box(i0, j0, ni, nj, halo=[hm, hm, hm, hm], ierr=ierr)
   call check(ierr, "eh_box")
   call eh_field("u", nz, "in", dtype=trim(dtype))
   call eh_field("su", nz, "out", dtype=trim(dtype))
   call eh_field("v", nz, "in", dtype=trim(dtype), id=id_v)
   call eh_field("sv", nz, "out", dtype=trim(dtype))
   if (restart_in == "-") then
      call eh_enddef(ierr)
   else
      call eh_enddef(ierr, restart=trim(restart_in))
   end if
   call check(ierr, "eh_enddef")

   allocate (u(ni + 2*hm, nj + 2*hm, nz), v(ni + 2*hm, nj + 2*hm, nz))
   allocate (su(ni + 2*hm, nj + 2*hm, nz), sv(ni + 2*hm, nj + 2*hm, nz))
   fold_u = fold_shift(pivot, "T")
   fold_v = fold_shift(pivot, "V")
   bad = 0
   first_bad = ""
   do step = start, start + steps - 1
      call fill(u, 0, step)
      call fill(v, 3, step)
      su = JUNK_OUT
      sv = JUNK_OUT
      if (nz == 1) then                  ! the 2-D specifics, on level sections
         call eh_put("u", u(:, :, 1), step, nonblocking=mod(step, 2) == 1)
         call eh_put(id_v, v(:, :, 1), step, ierr=ierr)
         call check(ierr, "eh_put(v)")
         call eh_get("su", su(:, :, 1), step)
         call eh_get("sv", sv(:, :, 1), step, ierr=ierr)
         call check(ierr, "eh_get(sv)")
      else
         call eh_put("u", u, step, nonblocking=mod(step, 2) == 1)
         call eh_put(id_v, v, step, ierr=ierr)
         call check(ierr, "eh_put(v)")
         call eh_get("su", su, step)
         call eh_get("sv", sv, step, ierr=ierr)
         call check(ierr, "eh_get(sv)")
      end if
      call compare(su, 0, 1.0_wp, fold_u, step - lag_u, INITIAL_U, "su")
      if (mod(step, every_v) == 0) then
         call compare(sv, 3, -1.0_wp, fold_v, step - lag_v*every_v, INITIAL_V, "sv")
      else if (any(sv /= JUNK_OUT)) then  ! not due: eh_get must leave the array alone
         call record("sv was written at step "//itoa(step)//" where its exchange is not due")
      end if
   end do
   if (restart_out == "-") then
      call eh_finalize(ierr)
   else
      call eh_finalize(ierr, restart=trim(restart_out))
   end if
   call check(ierr, "eh_finalize")
   call dump()
   call MPI_Allreduce(bad, total_bad, 1, MPI_INTEGER, MPI_SUM, comm)
   if (bad > 0) write (error_unit, '(a,i0,a,i0,a,a)') "toy_model rank ", rank, ": ", bad, &
      " bad points, first: ", trim(first_bad)
   if (total_bad > 0) then
      call MPI_Finalize()
      error stop 1
   end if
   if (rank == 0) print '(a,i0,a,i0,a)', "toy_model: PASS (", nranks, " model ranks, ", steps, &
      " steps)"
   call MPI_Finalize(ierror)

contains

   subroutine read_args()
      character(len=64) :: arg
      integer :: k
      integer :: ints(9)
      integer, parameter :: pos(9) = [1, 2, 7, 8, 9, 10, 11, 12, 0]
      if (command_argument_count() /= 13 .and. command_argument_count() /= 18) then
         write (error_unit, *) "usage: toy_model nx ny east_west south north pivot px py "// &
            "model_halo levels steps every_v outdir [lag_u lag_v start restart_in restart_out]"
         error stop 2
      end if
      if (command_argument_count() == 18) then
         call get_command_argument(14, arg)
         read (arg, *) lag_u
         call get_command_argument(15, arg)
         read (arg, *) lag_v
         call get_command_argument(16, arg)
         read (arg, *) start
         call get_command_argument(17, restart_in)
         call get_command_argument(18, restart_out)
      end if
      do k = 1, 8
         call get_command_argument(pos(k), arg)
         read (arg, *) ints(k)
      end do
      nx = ints(1); ny = ints(2); px = ints(3); py = ints(4)
      hm = ints(5); nz = ints(6); steps = ints(7); every_v = ints(8)
      call get_command_argument(3, ew)
      call get_command_argument(4, south)
      call get_command_argument(5, north)
      call get_command_argument(6, pivot)
      call get_command_argument(13, outdir)
   end subroutine read_args

   subroutine check(status, what)
      integer, intent(in) :: status
      character(len=*), intent(in) :: what
      character(len=1024) :: msg
      if (status /= EH_OK) then
         call eh_error_message(msg)
         write (error_unit, '(a,a,i0,a,a)') what, " failed with status ", status, ": ", trim(msg)
         error stop 3
      end if
   end subroutine check

   character(len=24) function itoa(i)
      integer, intent(in) :: i
      write (itoa, '(i0)') i
   end function itoa

   !> (a, b) of the north fold: row ny + k, column i reads F(ny - 1 - a - k, (nx - 1 - i + b) mod nx)
   function fold_shift(piv, point) result(ab)
      character(len=*), intent(in) :: piv, point
      integer :: ab(2)
      if (piv == "T") then
         select case (point)
         case ("T"); ab = [1, 1]
         case ("U"); ab = [1, 0]
         case ("V"); ab = [2, 1]
         case default; ab = [2, 0]
         end select
      else
         select case (point)
         case ("T"); ab = [0, 0]
         case ("U"); ab = [0, -1]
         case ("V"); ab = [1, 0]
         case default; ab = [1, -1]
         end select
      end if
   end function fold_shift

   !> The global field at inner point (gj, gi) (0-based): integers, exact in float32 too.
   real(wp) function value(gj, gi, k, offset, step)
      integer, intent(in) :: gj, gi, k, offset, step
      value = real(gi + 200*gj + 40000*k + 7*step + offset, wp)
   end function value

   !> The field at any point of the extended grid, by the boundary conditions.
   real(wp) function ext(gj, gi, k, offset, step, sgn, ab)
      integer, intent(in) :: gj, gi, k, offset, step, ab(2)
      real(wp), intent(in) :: sgn
      integer :: sj, si
      logical :: folded
      ext = 0.0_wp
      folded = .false.
      si = gi
      if (gi < 0 .or. gi >= nx) then
         if (ew /= "cyclic") return
         si = modulo(gi, nx)
      end if
      sj = gj
      if (gj < 0) then
         if (south /= "cyclic") return
         sj = modulo(gj, ny)
      else if (gj >= ny) then
         select case (trim(north))
         case ("cyclic")
            sj = modulo(gj, ny)
         case ("fold")
            sj = ny - 1 - ab(1) - (gj - ny)
            si = modulo(nx - 1 - si + ab(2), nx)
            folded = .true.
         case default
            return
         end select
      end if
      ext = value(sj, si, k, offset, step)
      if (folded) ext = ext*sgn
   end function ext

   subroutine fill(a, offset, step)
      real(wp), intent(out) :: a(:, :, :)
      integer, intent(in) :: offset, step
      integer :: i, j, k
      a = JUNK_IN                        ! the model's halo: must never reach the workers
      do k = 1, nz
         do j = 1, nj
            do i = 1, ni
               a(hm + i, hm + j, k) = value(j0 - 1 + j - 1, i0 - 1 + i - 1, k - 1, offset, step)
            end do
         end do
      end do
   end subroutine fill

   !> ``s`` must be the stencil of the inputs put at step ``step`` (the source of a lagged
   !> result), or ``initial`` everywhere when ``step`` < 0 (before the first occurrence).
   subroutine compare(s, offset, sgn, ab, step, initial, name)
      real(wp), intent(in) :: s(:, :, :)
      integer, intent(in) :: offset, ab(2), step
      real(wp), intent(in) :: sgn, initial
      character(len=*), intent(in) :: name
      integer :: i, j, k, gi, gj
      real(wp) :: c, n, so, e, w, want
      character(len=256) :: msg
      do k = 1, nz
         do j = 1 - hm, nj + hm
            do i = 1 - hm, ni + hm
               if (i < 1 .or. i > ni .or. j < 1 .or. j > nj) then
                  if (s(hm + i, hm + j, k) /= JUNK_OUT) &
                     call record(name//": the model's halo was overwritten")
                  cycle
               end if
               gi = i0 - 1 + i - 1
               gj = j0 - 1 + j - 1
               c = ext(gj, gi, k - 1, offset, step, sgn, ab)
               n = ext(gj + 1, gi, k - 1, offset, step, sgn, ab)
               so = ext(gj - 1, gi, k - 1, offset, step, sgn, ab)
               e = ext(gj, gi + 1, k - 1, offset, step, sgn, ab)
               w = ext(gj, gi - 1, k - 1, offset, step, sgn, ab)
               want = ((n - so) + 2.0_wp*(e - w)) + c
               if (step < 0) want = initial
               if (s(hm + i, hm + j, k) /= want) then
                  write (msg, '(a,a,i0,a,i0,a,i0,a,i0,a,g0,a,g0)') name, " step ", step, &
                     " level ", k - 1, " global j=", gj, " i=", gi, ": got ", &
                     s(hm + i, hm + j, k), " want ", want
                  call record(msg)
               end if
            end do
         end do
      end do
   end subroutine compare

   subroutine record(msg)
      character(len=*), intent(in) :: msg
      if (bad == 0) first_bad = msg
      bad = bad + 1
   end subroutine record

   !> The last step's results, interior only, for the comparison with the Python client.
   subroutine dump()
      integer :: unit
      character(len=600) :: path
      write (path, '(a,a,i0,a)') trim(outdir), "/fortran_rank", rank, ".bin"
      open (newunit=unit, file=trim(path), access="stream", form="unformatted", &
            status="replace")
      write (unit) su(hm + 1:hm + ni, hm + 1:hm + nj, :)
      write (unit) sv(hm + 1:hm + ni, hm + 1:hm + nj, :)
      close (unit)
   end subroutine dump

end program toy_model
