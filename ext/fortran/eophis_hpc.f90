!> eophis_hpc Fortran/C client: couples a Fortran (or C, C++) model to eophis_hpc's Python
!> inference workers over MPI, speaking the same protocol as the Python client
!> (``eophis_hpc.connect``/``put``/``get``/``close``).
!>
!> A model calls, once: eh_init (splits MPI_COMM_WORLD with the workers and returns the model's
!> own communicator), eh_grid, eh_box, eh_field (per field), eh_enddef (the handshake: the
!> workers answer with this rank's part of the plan, from which MPI derived datatypes over the
!> model's own arrays are built). Then every step eh_put / eh_get by field name or id, and
!> eh_finalize at the end. Nothing is packed in Fortran and no temporary array is made: MPI reads
!> and writes the model's arrays, halos included, through subarray datatypes.
!>
!> Errors: every routine takes an optional ``ierr``. When it is present it receives a status
!> (EH_OK = 0 or an EH_ERR_* code) and eh_error_message gives the message; when it is absent
!> the message is printed and the job is aborted (MPI_Abort), so a forgotten check never lets a
!> run go on with wrong data. The bind(C) entry points (see eophis_hpc.h) return the status.
module eophis_hpc
   use, intrinsic :: iso_c_binding
   use, intrinsic :: iso_fortran_env, only: int32, int64, real32, real64, error_unit
   use mpi_f08
   implicit none
   private

   public :: eh_init, eh_grid, eh_box, eh_field, eh_enddef, eh_put, eh_get, eh_wait, &
             eh_finalize, eh_field_id, eh_error_message, eh_set_timeout

   integer, parameter, public :: EH_OK = 0            !< success
   integer, parameter, public :: EH_ERR_ARG = 1       !< a bad argument (shape, name, kind, ...)
   integer, parameter, public :: EH_ERR_STATE = 2     !< a call out of order (put before enddef)
   integer, parameter, public :: EH_ERR_HANDSHAKE = 3 !< the workers refused the declaration
   integer, parameter, public :: EH_ERR_TIMEOUT = 4   !< a peer did not answer in time
   integer, parameter, public :: EH_ERR_MPI = 5       !< an MPI call failed
   integer, parameter, public :: EH_ERR_RESTART = 6   !< a coupling restart is missing or differs

   character(len=*), parameter, public :: EH_VERSION = "1"

   ! the protocol of eophis_hpc.protocol (wire, handshake, client_table)
   integer, parameter :: TAG_HANDSHAKE = 7001, TAG_CONTROL = 7002, TAG_JOIN = 7003
   integer(int32), parameter :: ROLE_MODEL = 0, ROLE_WORKER = 1
   integer, parameter :: PROTOCOL = 1, TABLE_VERSION = 2
   integer(int64), parameter :: STEP_STATIC = -2_int64, NOTE_STOP = -1_int64
   integer(int64), parameter :: NO_STEP = -huge(1_int64)
   integer, parameter :: DIR_IN = 0, DIR_OUT = 1
   integer, parameter :: MSG_LEN = 2048

   type :: route_t
      integer :: peer = -1
      integer, allocatable :: runs(:, :)        !< (4, n): j, i, nj, ni from the box origin
   end type route_t

   type :: route_set_t
      type(route_t), allocatable :: routes(:)
      integer, allocatable :: peers(:)          !< routes(:)%peer, for the waits' messages
      integer, allocatable :: fills(:, :)       !< (4, n): rects set to 0 before a receive
   end type route_set_t

   type :: field_t
      character(len=:), allocatable :: name
      integer :: levels = 1, itemsize = 8, direction = DIR_IN
      integer :: tag = -1, exchange = -1, route_set = -1
      integer :: types_nk = -1                  !< array depth the datatypes were built for
      type(MPI_Datatype), allocatable :: types(:)
      type(MPI_Request), allocatable :: requests(:)
      integer(c_intptr_t) :: bound_addr = 0     !< array the persistent requests point at
      logical :: in_flight = .false., static_sent = .false., pending = .false.
      ! outputs of a lagged exchange: a ring of lag + 1 slots, each an array
      ! (array_nx, array_ny, levels) with its own persistent receives (made at eh_enddef)
      integer(c_int8_t), pointer, contiguous :: ring(:) => null()
      integer(int64) :: slot_bytes = 0
      type(MPI_Datatype), allocatable :: ring_types(:)
      type(MPI_Request), allocatable :: ring_req(:, :)   !< (route, slot)
      logical, allocatable :: ring_posted(:)            !< (slot): receives started, not waited
      integer(int64), allocatable :: ring_step(:)       !< (slot): the step that produced it
   end type field_t

   ! one coupler per process (a model rank couples once)
   logical, save :: st_init = .false., st_grid = .false., st_box = .false., st_defined = .false.
   logical, save :: st_closed = .false., st_we_started_mpi = .false., st_holes = .false.
   type(MPI_Comm), save :: st_comm, st_inter
   integer, save :: st_rank = 0, st_size = 1, st_workers = 0
   integer, save :: st_note_group = 1   ! notes go to workers 0, G, 2G, ... (they pass them on)
   integer, save :: st_nx = 0, st_ny = 0
   character(len=8), save :: st_ew = "", st_south = "", st_north = "", st_pivot = ""
   integer, save :: st_j0 = 0, st_j1 = 0, st_i0 = 0, st_i1 = 0
   integer, save :: st_halo(4) = 0             !< west, east, south, north
   type(field_t), allocatable, save :: st_fields(:)
   integer, save :: st_nfields = 0
   integer, allocatable, save :: st_every(:)   !< per exchange, 0 = static
   integer, allocatable, save :: st_lag(:)     !< per exchange: occurrences of lag (OASIS' LAG)
   real(real64), allocatable, save :: st_initial(:)  !< per exchange: the first lag gets' value
   integer(int64), allocatable, save :: st_count(:)  !< per exchange: occurrences begun
   integer(int64), allocatable, save :: st_current(:)
   type(route_set_t), allocatable, save :: st_sets(:)
   character(len=MSG_LEN), save :: st_msg = ""
   real(real64), save :: st_timeout = -1.0_real64
   logical, save :: st_abort_c = .false.

   interface eh_put
      module procedure put_name_r8_3d, put_name_r8_2d, put_name_r4_3d, put_name_r4_2d
      module procedure put_id_r8_3d, put_id_r8_2d, put_id_r4_3d, put_id_r4_2d
   end interface eh_put

   interface eh_get
      module procedure get_name_r8_3d, get_name_r8_2d, get_name_r4_3d, get_name_r4_2d
      module procedure get_id_r8_3d, get_id_r8_2d, get_id_r4_3d, get_id_r4_2d
   end interface eh_get

   interface
      function c_sched_yield() bind(C, name="sched_yield") result(r)
         import :: c_int
         integer(c_int) :: r
      end function c_sched_yield
   end interface

contains

   ! ===================================================================== errors
   !> Record ``msg`` and return ``code`` (the core routines' way to fail).
   integer function fail(code, msg) result(status)
      integer, intent(in) :: code
      character(len=*), intent(in) :: msg
      st_msg = msg
      status = code
   end function fail

   !> Hand ``status`` to the caller's ``ierr``, or print and abort when there is none.
   subroutine finish(status, ierr)
      integer, intent(in) :: status
      integer, intent(out), optional :: ierr
      if (present(ierr)) then
         ierr = status
      else if (status /= EH_OK) then
         call die(status)
      end if
   end subroutine finish

   subroutine die(status)
      integer, intent(in) :: status
      integer :: wrank, ierror
      logical :: up, down
      call MPI_Initialized(up, ierror)
      call MPI_Finalized(down, ierror)
      wrank = 0
      if (up .and. .not. down) call MPI_Comm_rank(MPI_COMM_WORLD, wrank, ierror)
      if ((status == EH_ERR_HANDSHAKE .or. status == EH_ERR_RESTART) .and. st_rank /= 0) then
         call sleep_s(2.0_real64)  ! the same message on every rank: model rank 0 prints it
      else
         write (error_unit, '(a,i0,a,a)') "eophis_hpc: error on world rank ", wrank, ": ", &
            trim(st_msg)
         flush (error_unit)
         call sleep_s(0.5_real64)
      end if
      if (up .and. .not. down) call MPI_Abort(MPI_COMM_WORLD, max(status, 1), ierror)
      error stop 1
   end subroutine die

   subroutine sleep_s(seconds)
      real(real64), intent(in) :: seconds
      real(real64) :: t_end
      t_end = MPI_Wtime() + seconds
      do while (MPI_Wtime() < t_end)
         if (c_sched_yield() /= 0) exit
      end do
   end subroutine sleep_s

   !> The message of the last error (blank when there was none).
   subroutine eh_error_message(msg)
      character(len=*), intent(out) :: msg
      msg = st_msg
   end subroutine eh_error_message

   !> Seconds to wait for the workers before giving up with EH_ERR_TIMEOUT (0: forever).
   !> The default is EOPHIS_HPC_TIMEOUT, else 600, as on the Python side.
   subroutine eh_set_timeout(seconds)
      real(real64), intent(in) :: seconds
      st_timeout = max(seconds, 0.0_real64)
   end subroutine eh_set_timeout

   !> Workers per note group, as eophis_hpc.protocol.wire.note_group: 1 up to 16 workers, else
   !> ceil(sqrt(workers)); EOPHIS_HPC_NOTE_GROUP overrides it (0 when it is not a positive
   !> integer).
   integer function note_group(workers)
      integer, intent(in) :: workers
      character(len=64) :: text
      integer :: n, stat, ios
      call get_environment_variable("EOPHIS_HPC_NOTE_GROUP", text, n, stat)
      if (stat == -1 .or. (stat == 0 .and. n > 0)) then
         note_group = 0  ! as the Python side: digits with blanks around them, nothing else
         if (stat /= 0 .or. len_trim(adjustl(text)) == 0 .or. len_trim(adjustl(text)) > 9) return
         if (verify(trim(adjustl(text)), "0123456789") /= 0) return
         read (text, *, iostat=ios) note_group
         if (ios /= 0 .or. note_group < 1) note_group = 0
         return
      end if
      if (workers <= 16) then
         note_group = 1
         return
      end if
      note_group = int(sqrt(real(workers, real64)))
      if (note_group * note_group < workers) note_group = note_group + 1
   end function note_group

   real(real64) function timeout_s()
      character(len=64) :: text
      integer :: n, stat, ios
      if (st_timeout < 0.0_real64) then
         st_timeout = 600.0_real64
         call get_environment_variable("EOPHIS_HPC_TIMEOUT", text, n, stat)
         if (stat == 0 .and. n > 0) then
            if (text == "none" .or. text == "inf") then
               st_timeout = 0.0_real64
            else
               read (text, *, iostat=ios) st_timeout
               if (ios /= 0) st_timeout = 600.0_real64
               st_timeout = max(st_timeout, 0.0_real64)
            end if
         end if
      end if
      timeout_s = st_timeout
   end function timeout_s

   character(len=24) function itoa(i)
      integer(int64), intent(in) :: i
      write (itoa, '(i0)') i
   end function itoa

   character(len=24) function str(i)
      integer, intent(in) :: i
      write (str, '(i0)') i
   end function str

   ! ===================================================================== waits
   !> Complete ``reqs`` like MPI_Waitall, but give up after the timeout naming the workers
   !> that did not answer (never hang on a dead peer).
   integer function wait_all(reqs, peers, what, name, note) result(status)
      type(MPI_Request), intent(inout) :: reqs(:)
      integer, intent(in) :: peers(:)
      character(len=*), intent(in) :: what, name
      character(len=*), intent(in), optional :: note
      logical :: done, one
      real(real64) :: t_end, limit
      integer :: k, polls, ierror
      character(len=512) :: late
      status = EH_OK
      if (size(reqs) == 0) return
      limit = timeout_s()
      t_end = MPI_Wtime() + limit
      polls = 0
      do
         call MPI_Testall(size(reqs), reqs, done, MPI_STATUSES_IGNORE, ierror)
         if (ierror /= MPI_SUCCESS) then
            status = fail(EH_ERR_MPI, what//"('"//name//"'): MPI_Testall failed")
            return
         end if
         if (done) return
         polls = polls + 1
         if (mod(polls, 512) == 0) then
            if (limit > 0.0_real64 .and. MPI_Wtime() > t_end) exit
            if (c_sched_yield() /= 0) continue
         end if
      end do
      late = ""
      do k = 1, size(reqs)
         call MPI_Test(reqs(k), one, MPI_STATUS_IGNORE, ierror)
         if (.not. one) late = trim(late)//" "//trim(str(peers(k)))
      end do
      if (present(note)) late = trim(late)//" "//note
      write (st_msg, '(a,a,a,a,a,a,f0.1,a)') what, "('", name, "'): no answer from worker(s)", &
         trim(late), " after ", limit, " s (a rank stopped or died?); set EOPHIS_HPC_TIMEOUT or " // &
         "eh_set_timeout to wait longer"
      status = EH_ERR_TIMEOUT
   end function wait_all

   ! ===================================================================== definition phase
   integer function core_init(comm, world) result(status)
      type(MPI_Comm), intent(out) :: comm
      type(MPI_Comm), intent(in) :: world
      logical :: up
      integer :: wrank, wsize, ierror, r, leader
      integer(int32), allocatable :: codes(:)
      integer(int32) :: mine(1)
      type(MPI_Request), allocatable :: reqs(:)
      integer, allocatable :: peers(:)
      character(len=*), parameter :: never = "(ranks of the job that never reached eh_init or " // &
         "the workers' Tunnel: their program failed or hangs before coupling, see its output)"
      status = EH_OK
      if (st_init) then
         status = fail(EH_ERR_STATE, "eh_init: called twice")
         return
      end if
      call MPI_Initialized(up, ierror)
      if (.not. up) then
         call MPI_Init(ierror)
         st_we_started_mpi = .true.
      end if
      call MPI_Comm_rank(world, wrank, ierror)
      call MPI_Comm_size(world, wsize, ierror)
      allocate (codes(wsize))
      codes = -1
      codes(wrank + 1) = ROLE_MODEL
      ! the join: every rank sends its role to the communicator's rank 0, which sends back the
      ! table of roles; every wait is bounded and names the ranks that never joined
      if (wrank == 0) then
         allocate (reqs(wsize - 1), peers(wsize - 1))
         do r = 1, wsize - 1
            peers(r) = r
            call MPI_Irecv(codes(r + 1), 1, MPI_INT32_T, r, TAG_JOIN, world, reqs(r), ierror)
         end do
         status = wait_all(reqs, peers, "eh_init", "join", never)
         if (status /= EH_OK) return
         do r = 1, wsize - 1
            call MPI_Isend(codes, wsize, MPI_INT32_T, r, TAG_JOIN, world, reqs(r), ierror)
         end do
         status = wait_all(reqs, peers, "eh_init", "join", never)
      else
         allocate (reqs(1), peers(1))
         peers(1) = 0
         mine(1) = ROLE_MODEL
         call MPI_Isend(mine, 1, MPI_INT32_T, 0, TAG_JOIN, world, reqs(1), ierror)
         status = wait_all(reqs, peers, "eh_init", "join", never)
         if (status /= EH_OK) return
         call MPI_Irecv(codes, wsize, MPI_INT32_T, 0, TAG_JOIN, world, reqs(1), ierror)
         status = wait_all(reqs, peers, "eh_init", "join", never)
      end if
      if (status /= EH_OK) return
      leader = -1
      do r = 1, wsize
         if (codes(r) == ROLE_WORKER) then
            leader = r - 1
            exit
         end if
      end do
      if (leader < 0) then  ! every model rank sees the same list: every one fails, no hang
         status = fail(EH_ERR_STATE, "eh_init: no worker rank in this MPI job ("// &
            trim(str(wsize))//" ranks, all model): launch both sides in one job, e.g. "// &
            "mpiexec -n P ./model : -n Q python closure.py")
         return
      end if
      call MPI_Comm_split(world, int(ROLE_MODEL), wrank, st_comm, ierror)
      call MPI_Intercomm_create(st_comm, 0, world, leader, TAG_HANDSHAKE, st_inter, &
         ierror)
      if (ierror /= MPI_SUCCESS) then
         status = fail(EH_ERR_MPI, "eh_init: MPI_Intercomm_create failed")
         return
      end if
      call MPI_Comm_rank(st_comm, st_rank, ierror)
      call MPI_Comm_size(st_comm, st_size, ierror)
      call MPI_Comm_remote_size(st_inter, st_workers, ierror)
      st_note_group = note_group(st_workers)
      if (st_note_group < 1) then
         status = fail(EH_ERR_ARG, "eh_init: EOPHIS_HPC_NOTE_GROUP must be a positive integer")
         return
      end if
      comm = st_comm
      st_init = .true.
      allocate (st_fields(8))
   end function core_init

   !> Join the coupled job as a model rank: initialises MPI if needed, splits ``world`` (default
   !> MPI_COMM_WORLD: the communicator holding exactly the model and worker ranks) with the
   !> workers and returns in ``comm`` the communicator the model must use instead of it.
   !> Collective over every rank of ``world`` (the workers' tunnel does the same).
   subroutine eh_init(comm, ierr, world)
      type(MPI_Comm), intent(out) :: comm
      integer, intent(out), optional :: ierr
      type(MPI_Comm), intent(in), optional :: world
      if (present(world)) then
         call finish(core_init(comm, world), ierr)
      else
         call finish(core_init(comm, MPI_COMM_WORLD), ierr)
      end if
   end subroutine eh_init

   logical function one_of(value, choices)
      character(len=*), intent(in) :: value, choices(:)
      integer :: k
      one_of = .false.
      do k = 1, size(choices)
         if (value == choices(k)) one_of = .true.
      end do
   end function one_of

   integer function core_grid(nx, ny, east_west, south, north, pivot) result(status)
      integer, intent(in) :: nx, ny
      character(len=*), intent(in) :: east_west, south, north, pivot
      character(len=6), parameter :: ew_ok(2) = [character(len=6) :: "closed", "cyclic"]
      character(len=6), parameter :: north_ok(3) = [character(len=6) :: "closed", "cyclic", "fold"]
      character(len=1), parameter :: pivot_ok(2) = ["T", "F"]
      status = EH_OK
      if (st_defined) then
         status = fail(EH_ERR_STATE, "eh_grid: the definition phase is over (eh_enddef)")
      else if (nx < 1 .or. ny < 1) then
         status = fail(EH_ERR_ARG, "eh_grid: nx and ny must be positive, got nx="// &
            trim(str(nx))//", ny="//trim(str(ny)))
      else if (.not. one_of(east_west, ew_ok)) then
         status = fail(EH_ERR_ARG, "eh_grid: east_west='"//east_west// &
            "' is not one of 'closed', 'cyclic'")
      else if (.not. one_of(south, ew_ok)) then
         status = fail(EH_ERR_ARG, "eh_grid: south='"//south// &
            "' is not one of 'closed', 'cyclic' (NEMO's fold is at the north)")
      else if (.not. one_of(north, north_ok)) then
         status = fail(EH_ERR_ARG, "eh_grid: north='"//north// &
            "' is not one of 'closed', 'cyclic', 'fold'")
      else if (.not. one_of(pivot, pivot_ok)) then
         status = fail(EH_ERR_ARG, "eh_grid: pivot='"//pivot//"' is not one of 'T', 'F'")
      else
         st_nx = nx
         st_ny = ny
         st_ew = east_west
         st_south = south
         st_north = north
         st_pivot = pivot
         st_grid = .true.
      end if
   end function core_grid

   !> Declare the global grid: ``nx`` x ``ny`` inner points; east_west and south are 'closed'
   !> or 'cyclic', north 'closed', 'cyclic' or 'fold'; ``pivot`` ('T' default, or 'F') is
   !> the north fold's pivot point.
   subroutine eh_grid(nx, ny, east_west, south, north, pivot, ierr)
      integer, intent(in) :: nx, ny
      character(len=*), intent(in) :: east_west, south, north
      character(len=*), intent(in), optional :: pivot
      integer, intent(out), optional :: ierr
      if (present(pivot)) then
         call finish(core_grid(nx, ny, east_west, south, north, pivot), ierr)
      else
         call finish(core_grid(nx, ny, east_west, south, north, "T"), ierr)
      end if
   end subroutine eh_grid

   integer function core_box(i0, j0, ni, nj, halo, holes) result(status)
      integer, intent(in) :: i0, j0, ni, nj, halo(4)
      logical, intent(in) :: holes
      status = EH_OK
      if (st_defined) then
         status = fail(EH_ERR_STATE, "eh_box: the definition phase is over (eh_enddef)")
      else if (ni < 1 .or. nj < 1) then
         status = fail(EH_ERR_ARG, "eh_box: ni and nj must be positive, got ni="// &
            trim(str(ni))//", nj="//trim(str(nj)))
      else if (i0 < 1 .or. j0 < 1) then
         status = fail(EH_ERR_ARG, "eh_box: i0 and j0 are 1-based global indices, got i0="// &
            trim(str(i0))//", j0="//trim(str(j0)))
      else if (any(halo < 0)) then
         status = fail(EH_ERR_ARG, "eh_box: halo widths must be >= 0")
      else
         st_i0 = i0 - 1
         st_j0 = j0 - 1
         st_i1 = st_i0 + ni
         st_j1 = st_j0 + nj
         st_halo = halo
         st_holes = holes
         st_box = .true.
      end if
   end function core_box

   !> Declare this rank's box: its first inner point is global (i0, j0) (1-based), it has
   !> ni x nj inner points, and the model's arrays carry ``halo`` = (west, east, south, north)
   !> extra points around it (NEMO: nn_hls on every side), so an array of
   !> (ni + west + east, nj + south + north, levels) is passed as it is. ``holes``: the
   !> model's boxes leave out land-only areas (their points read as 0 on the workers).
   subroutine eh_box(i0, j0, ni, nj, halo, holes, ierr)
      integer, intent(in) :: i0, j0, ni, nj
      integer, intent(in), optional :: halo(:)
      logical, intent(in), optional :: holes
      integer, intent(out), optional :: ierr
      integer :: h(4)
      logical :: lh
      h = 0
      lh = .false.
      if (present(holes)) lh = holes
      if (present(halo)) then
         if (size(halo) == 1) then
            h = halo(1)
         else if (size(halo) == 4) then
            h = halo
         else
            call finish(fail(EH_ERR_ARG, "eh_box: halo must have 1 value (every side) or 4 "// &
               "(west, east, south, north)"), ierr)
            return
         end if
      end if
      call finish(core_box(i0, j0, ni, nj, h, lh), ierr)
   end subroutine eh_box

   logical function valid_name(name)
      character(len=*), intent(in) :: name
      integer :: k
      character :: c
      valid_name = len(name) > 0 .and. len(name) <= 64
      if (.not. valid_name) return
      do k = 1, len(name)
         c = name(k:k)
         if (.not. ((c >= "a" .and. c <= "z") .or. (c >= "A" .and. c <= "Z") .or. c == "_" &
                    .or. (k > 1 .and. c >= "0" .and. c <= "9"))) valid_name = .false.
      end do
   end function valid_name

   integer function find_field(name) result(id)
      character(len=*), intent(in) :: name
      integer :: k
      id = 0
      do k = 1, st_nfields
         if (st_fields(k)%name == name) then
            id = k
            return
         end if
      end do
   end function find_field

   integer function core_field(name, levels, direction, dtype, id) result(status)
      character(len=*), intent(in) :: name, direction, dtype
      integer, intent(in) :: levels
      integer, intent(out) :: id
      type(field_t), allocatable :: grown(:)
      integer :: dir, itemsize
      id = 0
      status = EH_OK
      select case (direction)
      case ("in", "put")
         dir = DIR_IN
      case ("out", "get")
         dir = DIR_OUT
      case default
         status = fail(EH_ERR_ARG, "eh_field('"//name//"'): direction='"//direction// &
            "' is not 'in' (model -> workers, put) or 'out' (workers -> model, get)")
         return
      end select
      select case (dtype)
      case ("float64", "real64", "double")
         itemsize = 8
      case ("float32", "real32", "float")
         itemsize = 4
      case default
         status = fail(EH_ERR_ARG, "eh_field('"//name//"'): dtype='"//dtype// &
            "' is not 'float64' or 'float32'")
         return
      end select
      if (.not. st_init) then
         status = fail(EH_ERR_STATE, "eh_field('"//name//"'): call eh_init first")
      else if (st_defined) then
         status = fail(EH_ERR_STATE, "eh_field('"//name//"'): the definition phase is over")
      else if (.not. valid_name(name)) then
         status = fail(EH_ERR_ARG, "eh_field: '"//name//"' is not a field name (letters, "// &
            "digits and _, not starting with a digit, at most 64 characters)")
      else if (find_field(name) /= 0) then
         status = fail(EH_ERR_ARG, "eh_field('"//name//"'): declared twice")
      else if (levels < 1) then
         status = fail(EH_ERR_ARG, "eh_field('"//name//"'): levels must be positive, got "// &
            trim(str(levels)))
      end if
      if (status /= EH_OK) return
      if (st_nfields == size(st_fields)) then
         allocate (grown(2*st_nfields))
         grown(1:st_nfields) = st_fields
         call move_alloc(grown, st_fields)
      end if
      st_nfields = st_nfields + 1
      id = st_nfields
      st_fields(id)%name = name
      st_fields(id)%levels = levels
      st_fields(id)%direction = dir
      st_fields(id)%itemsize = itemsize
   end function core_field

   !> Declare a field of the workers' tunnel by name: ``levels`` vertical levels, ``direction``
   !> 'in' (model -> workers, eh_put) or 'out' (workers -> model, eh_get), ``dtype``
   !> 'float64' (default) or 'float32'. ``id`` can be used instead of the name afterwards.
   !> Every field of the tunnel must be declared, with the tunnel's levels, dtype, direction.
   subroutine eh_field(name, levels, direction, dtype, id, ierr)
      character(len=*), intent(in) :: name, direction
      integer, intent(in) :: levels
      character(len=*), intent(in), optional :: dtype
      integer, intent(out), optional :: id
      integer, intent(out), optional :: ierr
      integer :: k, status
      if (present(dtype)) then
         status = core_field(name, levels, direction, dtype, k)
      else
         status = core_field(name, levels, direction, "float64", k)
      end if
      if (present(id)) id = k
      call finish(status, ierr)
   end subroutine eh_field

   !> The id of a declared field (0 and an error when there is none).
   subroutine eh_field_id(name, id, ierr)
      character(len=*), intent(in) :: name
      integer, intent(out) :: id
      integer, intent(out), optional :: ierr
      id = find_field(name)
      if (id == 0) then
         call finish(fail(EH_ERR_ARG, "eh_field_id: no field '"//name//"' was declared"), ierr)
      else
         call finish(EH_OK, ierr)
      end if
   end subroutine eh_field_id

   ! ----------------------------------------------------------------- the handshake
   function json_str(text) result(out)
      character(len=*), intent(in) :: text
      character(len=:), allocatable :: out
      integer :: k
      out = '"'
      do k = 1, len(text)
         select case (text(k:k))
         case ('"', '\')
            out = out//'\'//text(k:k)
         case (achar(0):achar(31))
            out = out//' '
         case default
            out = out//text(k:k)
         end select
      end do
      out = out//'"'
   end function json_str

   !> The declaration every rank must share (compared with model rank 0's).
   function declaration() result(out)
      character(len=:), allocatable :: out
      integer :: k
      out = trim(str(st_nx))//"x"//trim(str(st_ny))//trim(st_ew)//trim(st_south)// &
         trim(st_north)//trim(st_pivot)
      do k = 1, st_nfields
         out = out//";"//st_fields(k)%name//":"//trim(str(st_fields(k)%levels))//":"// &
            trim(str(st_fields(k)%itemsize))//":"//trim(str(st_fields(k)%direction))
      end do
   end function declaration

   function request_json(boxes, nodes, starts, lens, error) result(out)
      integer(int64), intent(in) :: boxes(:, :)
      character(len=*), intent(in) :: nodes     !< gather_nodes' names, one per box
      integer, intent(in) :: starts(:), lens(:)
      character(len=*), intent(in) :: error
      character(len=:), allocatable :: out
      integer :: k
      character(len=8) :: dtype
      out = '{"protocol": '//trim(str(PROTOCOL))//', "version": "fortran-client '// &
         EH_VERSION//'", "client": "fortran", "grid": {"nx": '//trim(str(st_nx))// &
         ', "ny": '//trim(str(st_ny))//', "east_west": '//json_str(trim(st_ew))// &
         ', "south": '//json_str(trim(st_south))//', "north": '//json_str(trim(st_north))// &
         ', "pivot": '//json_str(trim(st_pivot))//'}, "boxes": ['
      do k = 1, size(boxes, 2)
         if (k > 1) out = out//', '
         out = out//'['//trim(itoa(boxes(1, k)))//', '//trim(itoa(boxes(2, k)))//', '// &
            trim(itoa(boxes(3, k)))//', '//trim(itoa(boxes(4, k)))//']'
      end do
      out = out//'], "nodes": ['
      do k = 1, size(boxes, 2)
         if (k > 1) out = out//', '
         out = out//json_str(nodes(starts(k) + 1:starts(k) + lens(k)))
      end do
      out = out//'], "holes": '//merge('true ', 'false', st_holes)
      out = trim(out)//', "fields": {'
      do k = 1, st_nfields
         if (k > 1) out = out//', '
         dtype = merge("float64", "float32", st_fields(k)%itemsize == 8)
         out = out//json_str(st_fields(k)%name)//': {"levels": '// &
            trim(str(st_fields(k)%levels))//', "dtype": "'//trim(dtype)// &
            '", "direction": "'//trim(merge("in ", "out", st_fields(k)%direction == DIR_IN))//'"}'
      end do
      out = out//'}, "error": '
      if (len_trim(error) > 0) then
         out = out//json_str(trim(error))//'}'
      else
         out = out//'null}'
      end if
   end function request_json

   !> A local check of the declaration; blank when it is fine.
   function local_error() result(msg)
      character(len=MSG_LEN) :: msg
      msg = ""
      if (.not. st_grid) then
         msg = "eh_enddef: no grid declared (eh_grid)"
      else if (.not. st_box) then
         msg = "eh_enddef: no box declared (eh_box)"
      else if (st_nfields == 0) then
         msg = "eh_enddef: no field declared (eh_field)"
      else if (st_i1 > st_nx .or. st_j1 > st_ny) then
         msg = "eh_box: the box i="//trim(str(st_i0 + 1))//".."//trim(str(st_i1))//", j="// &
            trim(str(st_j0 + 1))//".."//trim(str(st_j1))//" is outside the "// &
            trim(str(st_nx))//"x"//trim(str(st_ny))//" grid"
      end if
   end function local_error

   !> The node this rank runs on, as the Python client reports it: MPI_Get_processor_name, or
   !> EOPHIS_HPC_NODE_NAME when it is set and not empty (a testing aid: it fakes several nodes
   !> on one machine). The workers place the tiles so that most bytes stay on a node.
   function node_name() result(name)
      character(len=:), allocatable :: name
      character(len=MPI_MAX_PROCESSOR_NAME) :: proc
      integer :: n, stat, ierror
      call get_environment_variable("EOPHIS_HPC_NODE_NAME", length=n, status=stat)
      if (stat == 0 .and. n > 0) then
         allocate (character(len=n) :: name)
         call get_environment_variable("EOPHIS_HPC_NODE_NAME", name)
      else
         call MPI_Get_processor_name(proc, n, ierror)
         name = proc(1:n)
      end if
   end function node_name

   !> Every model rank's node name, gathered on model rank 0 (lengths, then the characters);
   !> rank r's (1-based) is ``nodes(starts(r) + 1 : starts(r) + lens(r))``.
   subroutine gather_nodes(nodes, starts, lens)
      character(len=:), allocatable, intent(out) :: nodes
      integer, allocatable, intent(out) :: starts(:), lens(:)
      character(len=:), allocatable :: mine
      integer :: n, r, ierror
      mine = node_name()
      n = len(mine)
      allocate (lens(st_size), starts(st_size))
      lens = 0
      call MPI_Gather(n, 1, MPI_INTEGER, lens, 1, MPI_INTEGER, 0, st_comm, ierror)
      starts = 0
      if (st_rank == 0) then
         do r = 2, st_size
            starts(r) = starts(r - 1) + lens(r - 1)
         end do
      end if
      allocate (character(len=max(1, sum(lens))) :: nodes)
      call MPI_Gatherv(mine, n, MPI_CHARACTER, nodes, lens, starts, MPI_CHARACTER, 0, &
         st_comm, ierror)
   end subroutine gather_nodes

   integer function core_enddef(restart) result(status)
      character(len=*), intent(in), optional :: restart
      character(len=:), allocatable :: mine, root_decl, json
      character(len=MSG_LEN) :: err
      character(len=MSG_LEN), allocatable :: errs(:)
      integer(int64) :: box(4)
      integer(int64), allocatable :: boxes(:, :), table(:)
      character(len=:), allocatable :: nodes
      integer, allocatable :: node_starts(:), node_lens(:)
      integer :: n, ierror, r
      status = EH_OK
      if (.not. st_init) then
         status = fail(EH_ERR_STATE, "eh_enddef: call eh_init first")
         return
      else if (st_defined) then
         status = fail(EH_ERR_STATE, "eh_enddef: called twice")
         return
      end if
      err = local_error()
      ! every rank must declare what model rank 0 declares
      mine = declaration()
      n = len(mine)
      call MPI_Bcast(n, 1, MPI_INTEGER, 0, st_comm, ierror)
      allocate (character(len=n) :: root_decl)
      if (st_rank == 0) root_decl = mine
      call MPI_Bcast(root_decl, n, MPI_CHARACTER, 0, st_comm, ierror)
      if (len_trim(err) == 0 .and. root_decl /= mine) then
         err = "eh_enddef: this rank's grid or fields differ from model rank 0's (" // &
            mine//" against "//root_decl//")"
      end if
      box = [int(st_j0, int64), int(st_j1, int64), int(st_i0, int64), int(st_i1, int64)]
      allocate (boxes(4, st_size), errs(st_size))
      call MPI_Gather(box, 4, MPI_INT64_T, boxes, 4, MPI_INT64_T, 0, st_comm, ierror)
      call MPI_Gather(err, MSG_LEN, MPI_CHARACTER, errs, MSG_LEN, MPI_CHARACTER, 0, st_comm, &
         ierror)
      call gather_nodes(nodes, node_starts, node_lens)
      if (st_rank == 0) then
         err = ""
         do r = 1, st_size
            if (len_trim(errs(r)) > 0) then
               err = "model rank "//trim(str(r - 1))//": "//trim(errs(r))
               exit
            end if
         end do
         json = request_json(boxes, nodes, node_starts, node_lens, err)
         call MPI_Send(json, len(json), MPI_BYTE, 0, TAG_HANDSHAKE, st_inter, ierror)
      end if
      ! the workers answer every model rank with its own table (or the error)
      status = recv_table(table)
      if (status /= EH_OK) return
      status = read_table(table)
      if (status /= EH_OK) return
      allocate (st_current(0:size(st_every) - 1), st_count(0:size(st_every) - 1))
      st_current = NO_STEP
      st_count = 0
      status = make_rings()
      if (status /= EH_OK) return
      st_defined = .true.
      if (present(restart)) then
         status = read_restart(restart)
         if (status /= EH_OK) return
      end if
   end function core_enddef

   integer function recv_table(table) result(status)
      integer(int64), allocatable, intent(out) :: table(:)
      type(MPI_Status) :: stat
      logical :: arrived
      integer :: n, ierror, polls
      real(real64) :: t_end, limit
      status = EH_OK
      limit = timeout_s()
      t_end = MPI_Wtime() + limit
      polls = 0
      do
         call MPI_Iprobe(0, TAG_HANDSHAKE, st_inter, arrived, stat, ierror)
         if (arrived) exit
         polls = polls + 1
         if (mod(polls, 512) == 0) then
            if (limit > 0.0_real64 .and. MPI_Wtime() > t_end) then
               status = fail(EH_ERR_TIMEOUT, "eh_enddef: the workers did not answer the "// &
                  "handshake (are they running an eophis_hpc Tunnel in this job?)")
               return
            end if
            if (c_sched_yield() /= 0) continue
         end if
      end do
      call MPI_Get_count(stat, MPI_INT64_T, n, ierror)
      allocate (table(n))
      call MPI_Recv(table, n, MPI_INT64_T, 0, TAG_HANDSHAKE, st_inter, MPI_STATUS_IGNORE, ierror)
   end function recv_table

   integer function read_table(t) result(status)
      integer(int64), intent(in) :: t(:)
      integer :: p, k, n_ex, n_fields, n_sets, s, r, n_routes, n_runs, n_fill
      character(len=MSG_LEN) :: msg
      status = EH_OK
      if (size(t) < 2 .or. t(1) /= TABLE_VERSION) then
         status = fail(EH_ERR_HANDSHAKE, "eh_enddef: the workers sent a table this client "// &
            "cannot read (different eophis_hpc versions?)")
         return
      end if
      if (t(2) > 0) then
         msg = ""
         do k = 1, int(min(t(2), int(MSG_LEN, int64)))
            msg(k:k) = achar(int(t(2 + k)))
         end do
         status = fail(EH_ERR_HANDSHAKE, msg)
         return
      end if
      n_ex = int(t(4))
      n_fields = int(t(5))
      if (n_fields /= st_nfields .or. t(6) /= st_j0 .or. t(7) /= st_j1 .or. t(8) /= st_i0 &
          .or. t(9) /= st_i1) then
         status = fail(EH_ERR_HANDSHAKE, "eh_enddef: the workers' table does not match this "// &
            "rank's declaration (internal error)")
         return
      end if
      allocate (st_every(0:n_ex - 1), st_lag(0:n_ex - 1), st_initial(0:n_ex - 1))
      p = 10
      do k = 0, n_ex - 1
         st_every(k) = int(t(p))
         st_lag(k) = int(t(p + 1))
         st_initial(k) = transfer(t(p + 2), 1.0_real64)
         p = p + 3
      end do
      do k = 1, n_fields
         associate (f => st_fields(k))
            f%tag = int(t(p))
            f%exchange = int(t(p + 1))
            f%route_set = int(t(p + 5)) + 1
            if (int(t(p + 2)) /= f%direction .or. int(t(p + 3)) /= f%levels .or. &
                int(t(p + 4)) /= f%itemsize) then
               status = fail(EH_ERR_HANDSHAKE, "eh_enddef: field '"//f%name// &
                  "': the workers' table differs from the declaration (internal error)")
               return
            end if
         end associate
         p = p + 6
      end do
      n_sets = int(t(p))
      p = p + 1
      allocate (st_sets(n_sets))
      do s = 1, n_sets
         n_routes = int(t(p))
         p = p + 1
         allocate (st_sets(s)%routes(n_routes), st_sets(s)%peers(n_routes))
         do r = 1, n_routes
            st_sets(s)%routes(r)%peer = int(t(p))
            st_sets(s)%peers(r) = int(t(p))
            n_runs = int(t(p + 1))
            p = p + 2
            st_sets(s)%routes(r)%runs = reshape(int(t(p:p + 4*n_runs - 1)), [4, n_runs])
            p = p + 4*n_runs
         end do
         n_fill = int(t(p))
         p = p + 1
         st_sets(s)%fills = reshape(int(t(p:p + 4*n_fill - 1)), [4, n_fill])
         p = p + 4*n_fill
      end do
   end function read_table

   !> End the definition phase (collective over the model ranks): the handshake with the
   !> workers, who check the grid, boxes and fields against their tunnel and send this rank its
   !> part of the plan. A mismatch gives every rank the same message.
   !> ``restart``: start the lagged exchanges from the coupling restart ``PREFIX`` written by
   !> the previous run's eh_finalize(restart=...) (or the Python client's close(restart=...)):
   !> this rank reads ``PREFIX_rRRRR.ehr``; a missing or mismatching file stops every rank with
   !> the file and the difference.
   subroutine eh_enddef(ierr, restart)
      integer, intent(out), optional :: ierr
      character(len=*), intent(in), optional :: restart
      call finish(core_enddef(restart), ierr)
   end subroutine eh_enddef

   ! ===================================================================== exchanges
   integer function array_nx()
      array_nx = (st_i1 - st_i0) + st_halo(1) + st_halo(2)
   end function array_nx

   integer function array_ny()
      array_ny = (st_j1 - st_j0) + st_halo(3) + st_halo(4)
   end function array_ny

   !> One committed struct-of-subarrays datatype per route of ``f``, over an array
   !> (array_nx, array_ny, nk) of the field's kind: the message each worker expects, read or
   !> written in place (runs in the table's order, each all levels, then j, then i).
   integer function build_types(f, nk, types) result(status)
      type(field_t), intent(in) :: f
      integer, intent(in) :: nk
      type(MPI_Datatype), allocatable, intent(out) :: types(:)
      type(MPI_Datatype) :: base
      type(MPI_Datatype), allocatable :: parts(:)
      integer(MPI_ADDRESS_KIND), allocatable :: displs(:)
      integer, allocatable :: ones(:)
      integer :: r, k, n, ierror
      status = EH_OK
      base = MPI_DOUBLE
      if (f%itemsize == 4) base = MPI_FLOAT
      associate (routes => st_sets(f%route_set)%routes)
         allocate (types(size(routes)))
         do r = 1, size(routes)
            n = size(routes(r)%runs, 2)
            allocate (parts(n), displs(n), ones(n))
            displs = 0
            ones = 1
            do k = 1, n
               associate (run => routes(r)%runs(:, k))
                  call MPI_Type_create_subarray(3, [array_nx(), array_ny(), nk], &
                     [run(4), run(3), f%levels], [st_halo(1) + run(2), st_halo(3) + run(1), 0], &
                     MPI_ORDER_FORTRAN, base, parts(k), ierror)
               end associate
            end do
            call MPI_Type_create_struct(n, ones, displs, parts, types(r), ierror)
            call MPI_Type_commit(types(r), ierror)
            if (ierror /= MPI_SUCCESS) then
               status = fail(EH_ERR_MPI, "datatype for field '"//f%name//"' failed")
               return
            end if
            do k = 1, n
               call MPI_Type_free(parts(k), ierror)
            end do
            deallocate (parts, displs, ones)
         end do
      end associate
   end function build_types

   subroutine free_types(types)
      type(MPI_Datatype), allocatable, intent(inout) :: types(:)
      integer :: k, ierror
      if (.not. allocated(types)) return
      do k = 1, size(types)
         call MPI_Type_free(types(k), ierror)
      end do
      deallocate (types)
   end subroutine free_types

   subroutine free_requests(f)
      type(field_t), intent(inout) :: f
      integer :: k, ierror
      if (.not. allocated(f%requests)) return
      do k = 1, size(f%requests)
         if (f%requests(k) /= MPI_REQUEST_NULL) call MPI_Request_free(f%requests(k), ierror)
      end do
      deallocate (f%requests)
      f%bound_addr = 0
   end subroutine free_requests

   !> Persistent requests of field ``f`` bound to the array at ``addr`` (made again only when
   !> the array moves or its depth changes).
   integer function bind_requests(f, addr, nk, nbytes) result(status)
      type(field_t), intent(inout) :: f
      type(c_ptr), intent(in) :: addr
      integer, intent(in) :: nk
      integer(int64), intent(in) :: nbytes
      integer(c_int8_t), pointer :: buf(:)
      integer :: r, ierror
      status = EH_OK
      if (f%types_nk == nk .and. f%bound_addr == transfer(addr, f%bound_addr)) return
      call free_requests(f)
      if (f%types_nk /= nk) then
         call free_types(f%types)
         status = build_types(f, nk, f%types)
         if (status /= EH_OK) return
         f%types_nk = nk
      end if
      call c_f_pointer(addr, buf, [nbytes])
      associate (routes => st_sets(f%route_set)%routes)
         allocate (f%requests(size(routes)))
         do r = 1, size(routes)
            if (f%direction == DIR_IN) then
               call MPI_Send_init(buf, 1, f%types(r), routes(r)%peer, f%tag, st_inter, &
                  f%requests(r), ierror)
            else
               call MPI_Recv_init(buf, 1, f%types(r), routes(r)%peer, f%tag, st_inter, &
                  f%requests(r), ierror)
            end if
         end do
      end associate
      f%bound_addr = transfer(addr, f%bound_addr)
   end function bind_requests

   integer function complete_send(id) result(status)
      integer, intent(in) :: id
      status = EH_OK
      if (.not. st_fields(id)%in_flight) return
      status = wait_all(st_fields(id)%requests, st_sets(st_fields(id)%route_set)%peers, &
         "eh_put", st_fields(id)%name)
      st_fields(id)%in_flight = .false.
   end function complete_send

   !> Start (once) the occurrence of field ``id``'s exchange at ``step``; ``due`` is false
   !> when the exchange does not run at this step (then nothing happens).
   integer function begin(id, step, due) result(status)
      integer, intent(in) :: id, step
      logical, intent(out) :: due
      integer :: e, w, ierror
      integer(int64) :: key, note(2)
      status = EH_OK
      e = st_fields(id)%exchange
      due = .true.
      if (st_every(e) == 0) then
         key = STEP_STATIC
      else if (modulo(step, st_every(e)) /= 0) then
         due = .false.
         return
      else
         key = int(step, int64)
      end if
      if (st_current(e) == key) return
      status = drain(e)
      if (status /= EH_OK) return
      if (st_rank == 0) then
         note = [int(e, int64), key]
         do w = 0, st_workers - 1, st_note_group
            call MPI_Send(note, 2, MPI_INT64_T, w, TAG_CONTROL, st_inter, ierror)
         end do
      end if
      st_current(e) = key
      do w = 1, st_nfields
         if (st_fields(w)%exchange == e .and. st_fields(w)%direction == DIR_OUT) then
            st_fields(w)%pending = .true.
            if (st_lag(e) > 0) then
               status = post_ring(w, key)
               if (status /= EH_OK) return
            end if
         end if
      end do
      st_count(e) = st_count(e) + 1
   end function begin

   !> Receive (and drop) the outputs of exchange ``e`` the model did not get, so the workers
   !> are never left waiting on a send.
   integer function drain(e) result(status)
      integer, intent(in) :: e
      integer :: k, ierror, r
      integer(c_int8_t), allocatable, target :: scratch(:)
      type(MPI_Datatype), allocatable :: types(:)
      type(MPI_Request), allocatable :: reqs(:)
      status = EH_OK
      do k = 1, st_nfields
         associate (f => st_fields(k))
            if (f%exchange /= e .or. .not. f%pending) cycle
            if (st_lag(e) > 0) then  ! nothing in flight for the caller: the ring holds it
               f%pending = .false.
               cycle
            end if
            allocate (scratch(int(array_nx(), int64)*array_ny()*f%levels*f%itemsize))
            status = build_types(f, f%levels, types)
            if (status /= EH_OK) return
            associate (routes => st_sets(f%route_set)%routes)
               allocate (reqs(size(routes)))
               do r = 1, size(routes)
                  call MPI_Irecv(scratch, 1, types(r), routes(r)%peer, f%tag, st_inter, &
                     reqs(r), ierror)
               end do
            end associate
            status = wait_all(reqs, st_sets(f%route_set)%peers, "eh_get", f%name, &
               "(draining an output the model did not get)")
            call free_types(types)
            deallocate (scratch, reqs)
            f%pending = .false.
            if (status /= EH_OK) return
         end associate
      end do
   end function drain

   integer function check_array(id, what, itemsize, n1, n2, nk, contiguous) result(status)
      integer, intent(in) :: id, itemsize, n1, n2, nk
      character(len=*), intent(in) :: what
      logical, intent(in) :: contiguous
      status = EH_OK
      if (.not. st_defined .or. st_closed) then
         status = fail(EH_ERR_STATE, what//": call eh_enddef first (and not after eh_finalize)")
         return
      end if
      if (id < 1 .or. id > st_nfields) then
         status = fail(EH_ERR_ARG, what//": no field with id "//trim(str(id)))
         return
      end if
      associate (f => st_fields(id))
         if (what == "eh_put" .and. f%direction /= DIR_IN) then
            status = fail(EH_ERR_ARG, what//"('"//f%name//"')"//": the field is an output of the workers; use eh_get")
         else if (what == "eh_get" .and. f%direction /= DIR_OUT) then
            status = fail(EH_ERR_ARG, what//"('"//f%name//"')"//": the field is an input sent by the model; use eh_put")
         else if (itemsize /= f%itemsize) then
            status = fail(EH_ERR_ARG, what//"('"//f%name//"')"//": the array is real("//trim(str(itemsize))// &
               "), the field is declared "//merge("float64", "float32", f%itemsize == 8))
         else if (.not. contiguous) then
            status = fail(EH_ERR_ARG, what//"('"//f%name//"')"//": the array must be contiguous (a whole array, "// &
               "not a strided section), since MPI reads it in place")
         else if (n1 /= array_nx() .or. n2 /= array_ny() .or. nk < f%levels) then
            status = fail(EH_ERR_ARG, what//"('"//f%name//"')"//": the array is ("//trim(str(n1))//", "// &
               trim(str(n2))//", "//trim(str(nk))//"), expected ("//trim(str(array_nx()))// &
               ", "//trim(str(array_ny()))//", >= "//trim(str(f%levels))// &
               "): the box and its halo (eh_box), and the field's levels")
         end if
      end associate
   end function check_array

   integer function core_put(id, addr, itemsize, n1, n2, nk, contiguous, step, nonblocking) &
      result(status)
      integer, intent(in) :: id, itemsize, n1, n2, nk, step
      type(c_ptr), intent(in) :: addr
      logical, intent(in) :: contiguous, nonblocking
      logical :: due
      integer :: ierror
      status = check_array(id, "eh_put", itemsize, n1, n2, nk, contiguous)
      if (status /= EH_OK) return
      associate (f => st_fields(id))
         if (f%static_sent) return
         status = begin(id, step, due)
         if (status /= EH_OK .or. .not. due) return
         status = complete_send(id)
         if (status /= EH_OK) return
         status = bind_requests(f, addr, nk, int(n1, int64)*n2*nk*itemsize)
         if (status /= EH_OK) return
         call MPI_Startall(size(f%requests), f%requests, ierror)
         f%in_flight = .true.
         if (st_every(f%exchange) == 0) f%static_sent = .true.
         if (.not. nonblocking) status = complete_send(id)
      end associate
   end function core_put

   integer function core_get(id, addr, itemsize, n1, n2, nk, contiguous, step) result(status)
      integer, intent(in) :: id, itemsize, n1, n2, nk, step
      type(c_ptr), intent(in) :: addr
      logical, intent(in) :: contiguous
      logical :: due, has_inputs
      integer :: e, k, ierror
      integer(int64) :: key
      status = check_array(id, "eh_get", itemsize, n1, n2, nk, contiguous)
      if (status /= EH_OK) return
      associate (f => st_fields(id))
         e = f%exchange
         if (st_every(e) == 0) then
            key = STEP_STATIC
         else if (modulo(step, st_every(e)) /= 0) then
            return  ! not due: the array is left as it is
         else
            key = int(step, int64)
         end if
         if (st_current(e) /= key) then
            has_inputs = .false.
            do k = 1, st_nfields
               if (st_fields(k)%exchange == e .and. st_fields(k)%direction == DIR_IN) &
                  has_inputs = .true.
            end do
            if (has_inputs .and. st_lag(e) == 0) then
               status = fail(EH_ERR_STATE, "eh_get('"//f%name//"', step="//trim(str(step))// &
                  "): the inputs of its exchange were not put at this step")
               return
            end if  ! a lagged exchange may get first: its result is an older occurrence's
            status = begin(id, step, due)
            if (status /= EH_OK) return
         end if
         if (.not. f%pending) then
            status = fail(EH_ERR_STATE, "eh_get('"//f%name//"', step="//trim(str(step))// &
               "): already received at this step")
            return
         end if
         ! the exchange's non-blocking puts are complete once its first output is asked for
         do k = 1, st_nfields
            if (st_fields(k)%exchange == e) then
               status = complete_send(k)
               if (status /= EH_OK) return
            end if
         end do
         if (st_lag(e) > 0) then
            status = get_ring(id, addr, n1, n2, nk)
            f%pending = .false.
            return
         end if
         call zero_fills(f, addr, n1, n2, nk)
         status = bind_requests(f, addr, nk, int(n1, int64)*n2*nk*itemsize)
         if (status /= EH_OK) return
         call MPI_Startall(size(f%requests), f%requests, ierror)
         status = wait_all(f%requests, st_sets(f%route_set)%peers, "eh_get", f%name)
         f%pending = .false.
      end associate
   end function core_get

   !> Points of the box no worker returns (none unless the layout leaves some out) get 0.
   subroutine zero_fills(f, addr, n1, n2, nk)
      type(field_t), intent(in) :: f
      type(c_ptr), intent(in) :: addr
      integer, intent(in) :: n1, n2, nk
      real(real64), pointer :: a8(:, :, :)
      real(real32), pointer :: a4(:, :, :)
      integer :: k, i0, j0
      associate (fills => st_sets(f%route_set)%fills)
         if (size(fills, 2) == 0) return
         if (f%itemsize == 8) then
            call c_f_pointer(addr, a8, [n1, n2, nk])
         else
            call c_f_pointer(addr, a4, [n1, n2, nk])
         end if
         do k = 1, size(fills, 2)
            j0 = st_halo(3) + fills(1, k)
            i0 = st_halo(1) + fills(2, k)
            if (f%itemsize == 8) then
               a8(i0 + 1:i0 + fills(4, k), j0 + 1:j0 + fills(3, k), 1:f%levels) = 0.0_real64
            else
               a4(i0 + 1:i0 + fills(4, k), j0 + 1:j0 + fills(3, k), 1:f%levels) = 0.0_real32
            end if
         end do
      end associate
   end subroutine zero_fills

   integer function id_of(name, what) result(id)
      character(len=*), intent(in) :: name, what
      integer :: status
      id = find_field(name)
      if (id == 0) status = fail(EH_ERR_ARG, what//": unknown field '"//name// &
                                 "' (declare it with eh_field)")
   end function id_of

   ! ----------------------------------------------------------------- eh_put specifics
   !> eh_put(field, array, step [, nonblocking] [, ierr]): send the box (and nothing of the
   !> array's halo) to the workers when the field's exchange is due at ``step`` (a no-op
   !> otherwise). ``nonblocking``: return at once; the array must then stay untouched until
   !> the first eh_get of the exchange, the next eh_put of the field, eh_wait or eh_finalize.
   subroutine put_id_r8_3d(id, a, step, nonblocking, ierr)
      integer, intent(in) :: id, step
      real(real64), intent(in), target :: a(:, :, :)
      logical, intent(in), optional :: nonblocking
      integer, intent(out), optional :: ierr
      call finish(core_put(id, c_loc(a), 8, size(a, 1), size(a, 2), size(a, 3), &
         is_contiguous(a), step, opt(nonblocking)), ierr)
   end subroutine put_id_r8_3d

   subroutine put_id_r8_2d(id, a, step, nonblocking, ierr)
      integer, intent(in) :: id, step
      real(real64), intent(in), target :: a(:, :)
      logical, intent(in), optional :: nonblocking
      integer, intent(out), optional :: ierr
      call finish(core_put(id, c_loc(a), 8, size(a, 1), size(a, 2), 1, is_contiguous(a), &
         step, opt(nonblocking)), ierr)
   end subroutine put_id_r8_2d

   subroutine put_id_r4_3d(id, a, step, nonblocking, ierr)
      integer, intent(in) :: id, step
      real(real32), intent(in), target :: a(:, :, :)
      logical, intent(in), optional :: nonblocking
      integer, intent(out), optional :: ierr
      call finish(core_put(id, c_loc(a), 4, size(a, 1), size(a, 2), size(a, 3), &
         is_contiguous(a), step, opt(nonblocking)), ierr)
   end subroutine put_id_r4_3d

   subroutine put_id_r4_2d(id, a, step, nonblocking, ierr)
      integer, intent(in) :: id, step
      real(real32), intent(in), target :: a(:, :)
      logical, intent(in), optional :: nonblocking
      integer, intent(out), optional :: ierr
      call finish(core_put(id, c_loc(a), 4, size(a, 1), size(a, 2), 1, is_contiguous(a), &
         step, opt(nonblocking)), ierr)
   end subroutine put_id_r4_2d

   subroutine put_name_r8_3d(name, a, step, nonblocking, ierr)
      character(len=*), intent(in) :: name
      integer, intent(in) :: step
      real(real64), intent(in), target :: a(:, :, :)
      logical, intent(in), optional :: nonblocking
      integer, intent(out), optional :: ierr
      integer :: id
      id = id_of(name, "eh_put")
      if (id == 0) then
         call finish(EH_ERR_ARG, ierr)
      else
         call put_id_r8_3d(id, a, step, nonblocking, ierr)
      end if
   end subroutine put_name_r8_3d

   subroutine put_name_r8_2d(name, a, step, nonblocking, ierr)
      character(len=*), intent(in) :: name
      integer, intent(in) :: step
      real(real64), intent(in), target :: a(:, :)
      logical, intent(in), optional :: nonblocking
      integer, intent(out), optional :: ierr
      integer :: id
      id = id_of(name, "eh_put")
      if (id == 0) then
         call finish(EH_ERR_ARG, ierr)
      else
         call put_id_r8_2d(id, a, step, nonblocking, ierr)
      end if
   end subroutine put_name_r8_2d

   subroutine put_name_r4_3d(name, a, step, nonblocking, ierr)
      character(len=*), intent(in) :: name
      integer, intent(in) :: step
      real(real32), intent(in), target :: a(:, :, :)
      logical, intent(in), optional :: nonblocking
      integer, intent(out), optional :: ierr
      integer :: id
      id = id_of(name, "eh_put")
      if (id == 0) then
         call finish(EH_ERR_ARG, ierr)
      else
         call put_id_r4_3d(id, a, step, nonblocking, ierr)
      end if
   end subroutine put_name_r4_3d

   subroutine put_name_r4_2d(name, a, step, nonblocking, ierr)
      character(len=*), intent(in) :: name
      integer, intent(in) :: step
      real(real32), intent(in), target :: a(:, :)
      logical, intent(in), optional :: nonblocking
      integer, intent(out), optional :: ierr
      integer :: id
      id = id_of(name, "eh_put")
      if (id == 0) then
         call finish(EH_ERR_ARG, ierr)
      else
         call put_id_r4_2d(id, a, step, nonblocking, ierr)
      end if
   end subroutine put_name_r4_2d

   logical function opt(flag)
      logical, intent(in), optional :: flag
      opt = .false.
      if (present(flag)) opt = flag
   end function opt

   ! ----------------------------------------------------------------- eh_get specifics
   !> eh_get(field, array, step [, ierr]): receive the workers' result for the box into the
   !> array (its halo is left as it is) when the exchange is due at ``step``; a no-op
   !> otherwise. Waits for the workers (at most the timeout).
   subroutine get_id_r8_3d(id, a, step, ierr)
      integer, intent(in) :: id, step
      real(real64), intent(inout), target :: a(:, :, :)
      integer, intent(out), optional :: ierr
      call finish(core_get(id, c_loc(a), 8, size(a, 1), size(a, 2), size(a, 3), &
         is_contiguous(a), step), ierr)
   end subroutine get_id_r8_3d

   subroutine get_id_r8_2d(id, a, step, ierr)
      integer, intent(in) :: id, step
      real(real64), intent(inout), target :: a(:, :)
      integer, intent(out), optional :: ierr
      call finish(core_get(id, c_loc(a), 8, size(a, 1), size(a, 2), 1, is_contiguous(a), &
         step), ierr)
   end subroutine get_id_r8_2d

   subroutine get_id_r4_3d(id, a, step, ierr)
      integer, intent(in) :: id, step
      real(real32), intent(inout), target :: a(:, :, :)
      integer, intent(out), optional :: ierr
      call finish(core_get(id, c_loc(a), 4, size(a, 1), size(a, 2), size(a, 3), &
         is_contiguous(a), step), ierr)
   end subroutine get_id_r4_3d

   subroutine get_id_r4_2d(id, a, step, ierr)
      integer, intent(in) :: id, step
      real(real32), intent(inout), target :: a(:, :)
      integer, intent(out), optional :: ierr
      call finish(core_get(id, c_loc(a), 4, size(a, 1), size(a, 2), 1, is_contiguous(a), &
         step), ierr)
   end subroutine get_id_r4_2d

   subroutine get_name_r8_3d(name, a, step, ierr)
      character(len=*), intent(in) :: name
      integer, intent(in) :: step
      real(real64), intent(inout), target :: a(:, :, :)
      integer, intent(out), optional :: ierr
      integer :: id
      id = id_of(name, "eh_get")
      if (id == 0) then
         call finish(EH_ERR_ARG, ierr)
      else
         call get_id_r8_3d(id, a, step, ierr)
      end if
   end subroutine get_name_r8_3d

   subroutine get_name_r8_2d(name, a, step, ierr)
      character(len=*), intent(in) :: name
      integer, intent(in) :: step
      real(real64), intent(inout), target :: a(:, :)
      integer, intent(out), optional :: ierr
      integer :: id
      id = id_of(name, "eh_get")
      if (id == 0) then
         call finish(EH_ERR_ARG, ierr)
      else
         call get_id_r8_2d(id, a, step, ierr)
      end if
   end subroutine get_name_r8_2d

   subroutine get_name_r4_3d(name, a, step, ierr)
      character(len=*), intent(in) :: name
      integer, intent(in) :: step
      real(real32), intent(inout), target :: a(:, :, :)
      integer, intent(out), optional :: ierr
      integer :: id
      id = id_of(name, "eh_get")
      if (id == 0) then
         call finish(EH_ERR_ARG, ierr)
      else
         call get_id_r4_3d(id, a, step, ierr)
      end if
   end subroutine get_name_r4_3d

   subroutine get_name_r4_2d(name, a, step, ierr)
      character(len=*), intent(in) :: name
      integer, intent(in) :: step
      real(real32), intent(inout), target :: a(:, :)
      integer, intent(out), optional :: ierr
      integer :: id
      id = id_of(name, "eh_get")
      if (id == 0) then
         call finish(EH_ERR_ARG, ierr)
      else
         call get_id_r4_2d(id, a, step, ierr)
      end if
   end subroutine get_name_r4_2d

   ! ===================================================================== lagged exchanges
   !> The ring of every output of a lagged exchange, made at eh_enddef: lag + 1 slots, each an
   !> array (array_nx, array_ny, levels) of the field's kind filled with the exchange's initial
   !> value, and persistent receives into every slot. Occurrence n's outputs are received into
   !> slot mod(n, lag + 1); eh_get at occurrence n copies slot mod(n - lag, lag + 1) into the
   !> model's array. Nothing is allocated after eh_enddef.
   integer function make_rings() result(status)
      integer :: k, r, slot, nslots, ierror
      integer(int64) :: n
      real(real64), pointer :: a8(:)
      real(real32), pointer :: a4(:)
      integer(c_int8_t), pointer :: buf(:)
      status = EH_OK
      do k = 1, st_nfields
         associate (f => st_fields(k))
            if (f%direction /= DIR_OUT) cycle
            if (st_lag(f%exchange) == 0) cycle
            nslots = st_lag(f%exchange) + 1
            n = int(array_nx(), int64)*array_ny()*f%levels
            f%slot_bytes = n*f%itemsize
            allocate (f%ring(f%slot_bytes*nslots))
            if (f%itemsize == 8) then
               call c_f_pointer(c_loc(f%ring(1)), a8, [n*nslots])
               a8 = st_initial(f%exchange)
            else
               call c_f_pointer(c_loc(f%ring(1)), a4, [n*nslots])
               a4 = real(st_initial(f%exchange), real32)
            end if
            status = build_types(f, f%levels, f%ring_types)
            if (status /= EH_OK) return
            associate (routes => st_sets(f%route_set)%routes)
               allocate (f%ring_req(size(routes), 0:nslots - 1))
               do slot = 0, nslots - 1
                  buf => f%ring(slot*f%slot_bytes + 1:(slot + 1)*f%slot_bytes)
                  do r = 1, size(routes)
                     call MPI_Recv_init(buf, 1, f%ring_types(r), routes(r)%peer, f%tag, &
                        st_inter, f%ring_req(r, slot), ierror)
                  end do
               end do
            end associate
            allocate (f%ring_posted(0:nslots - 1), f%ring_step(0:nslots - 1))
            f%ring_posted = .false.
            f%ring_step = -1_int64
         end associate
      end do
   end function make_rings

   type(c_ptr) function slot_addr(k, slot)
      integer, intent(in) :: k, slot
      slot_addr = c_loc(st_fields(k)%ring(slot*st_fields(k)%slot_bytes + 1))
   end function slot_addr

   integer function ring_slot(e, occurrence)
      integer, intent(in) :: e
      integer(int64), intent(in) :: occurrence
      ring_slot = int(modulo(occurrence, int(st_lag(e) + 1, int64)))
   end function ring_slot

   !> Complete slot ``slot``'s receives of field ``k`` if they were started.
   integer function complete_ring(k, slot) result(status)
      integer, intent(in) :: k, slot
      status = EH_OK
      associate (f => st_fields(k))
         if (.not. f%ring_posted(slot)) return
         status = wait_all(f%ring_req(:, slot), st_sets(f%route_set)%peers, "eh_get", f%name)
         f%ring_posted(slot) = .false.
      end associate
   end function complete_ring

   !> Occurrence st_count(e) of field ``k``'s exchange begins at ``key``: receive its outputs
   !> into their slot (whose content, never got, is completed and dropped first).
   integer function post_ring(k, key) result(status)
      integer, intent(in) :: k
      integer(int64), intent(in) :: key
      integer :: slot, ierror
      associate (f => st_fields(k))
         slot = ring_slot(f%exchange, st_count(f%exchange))
         status = complete_ring(k, slot)
         if (status /= EH_OK) return
         call zero_fills(f, slot_addr(k, slot), array_nx(), array_ny(), f%levels)
         call MPI_Startall(size(f%ring_req, 1), f%ring_req(:, slot), ierror)
         f%ring_posted(slot) = .true.
         f%ring_step(slot) = key
      end associate
   end function post_ring

   !> eh_get of a lagged output: the box of occurrence (current - lag) into the model's array.
   integer function get_ring(k, addr, n1, n2, nk) result(status)
      integer, intent(in) :: k, n1, n2, nk
      type(c_ptr), intent(in) :: addr
      integer :: slot
      associate (f => st_fields(k))
         slot = ring_slot(f%exchange, st_count(f%exchange) - 1 - st_lag(f%exchange))
         status = complete_ring(k, slot)
         if (status /= EH_OK) return
         call copy_box(f, slot_addr(k, slot), addr, n1, n2, nk)
      end associate
   end function get_ring

   !> The box (all the field's levels) of array ``src`` into array ``dst``, both
   !> (n1, n2, >= levels) with the model's halo, which is left untouched.
   subroutine copy_box(f, src, dst, n1, n2, nk)
      type(field_t), intent(in) :: f
      type(c_ptr), intent(in) :: src, dst
      integer, intent(in) :: n1, n2, nk
      real(real64), pointer :: s8(:, :, :), d8(:, :, :)
      real(real32), pointer :: s4(:, :, :), d4(:, :, :)
      integer :: i0, i1, j0, j1
      i0 = st_halo(1) + 1
      i1 = st_halo(1) + st_i1 - st_i0
      j0 = st_halo(3) + 1
      j1 = st_halo(3) + st_j1 - st_j0
      if (f%itemsize == 8) then
         call c_f_pointer(src, s8, [array_nx(), array_ny(), f%levels])
         call c_f_pointer(dst, d8, [n1, n2, nk])
         d8(i0:i1, j0:j1, 1:f%levels) = s8(i0:i1, j0:j1, 1:f%levels)
      else
         call c_f_pointer(src, s4, [array_nx(), array_ny(), f%levels])
         call c_f_pointer(dst, d4, [n1, n2, nk])
         d4(i0:i1, j0:j1, 1:f%levels) = s4(i0:i1, j0:j1, 1:f%levels)
      end if
   end subroutine copy_box

   !> Complete every started receive of field ``k``'s ring (the end of the run).
   integer function drain_ring(k) result(status)
      integer, intent(in) :: k
      integer :: slot
      status = EH_OK
      if (.not. associated(st_fields(k)%ring)) return
      do slot = 0, size(st_fields(k)%ring_posted) - 1
         status = complete_ring(k, slot)
         if (status /= EH_OK) return
      end do
   end function drain_ring

   subroutine free_ring(f)
      type(field_t), intent(inout) :: f
      integer :: r, slot, ierror
      if (.not. associated(f%ring)) return
      do slot = lbound(f%ring_req, 2), ubound(f%ring_req, 2)
         do r = 1, size(f%ring_req, 1)
            call MPI_Request_free(f%ring_req(r, slot), ierror)
         end do
      end do
      call free_types(f%ring_types)
      deallocate (f%ring, f%ring_req, f%ring_posted, f%ring_step)
      nullify (f%ring)
   end subroutine free_ring

   ! ===================================================================== coupling restarts
   !> This rank's restart file: PREFIX_rRRRR.ehr (eophis_hpc.protocol.restart documents it).
   function restart_file(prefix) result(path)
      character(len=*), intent(in) :: prefix
      character(len=:), allocatable :: path
      character(len=16) :: tail
      write (tail, '(a,i4.4,a)') "_r", st_rank, ".ehr"
      path = prefix//trim(tail)
   end function restart_file

   integer(int64) function edge_code(edge)
      character(len=*), intent(in) :: edge
      select case (trim(edge))
      case ("cyclic")
         edge_code = 1
      case ("fold")
         edge_code = 2
      case default
         edge_code = 0
      end select
   end function edge_code

   function edge_name(code) result(out)
      integer(int64), intent(in) :: code
      character(len=:), allocatable :: out
      select case (code)
      case (0)
         out = "'closed'"
      case (1)
         out = "'cyclic'"
      case (2)
         out = "'fold'"
      case default
         out = trim(itoa(code))
      end select
   end function edge_name

   function grid_words() result(w)
      integer(int64) :: w(6)
      w = [int(st_nx, int64), int(st_ny, int64), edge_code(st_ew), edge_code(st_south), &
           edge_code(st_north), 0_int64]
      if (trim(st_north) == "fold" .and. trim(st_pivot) == "F") w(6) = 1
   end function grid_words

   !> The lagged outputs in the tunnel's field order (their tags), for the restart records.
   function lagged_fields() result(ids)
      integer, allocatable :: ids(:)
      integer :: k, m, tmp
      allocate (ids(0))
      do k = 1, st_nfields
         if (associated(st_fields(k)%ring)) ids = [ids, k]
      end do
      do k = 2, size(ids)  ! insertion sort by tag (a handful of fields)
         tmp = ids(k)
         m = k - 1
         do while (m >= 1)
            if (st_fields(ids(m))%tag <= st_fields(tmp)%tag) exit
            ids(m + 1) = ids(m)
            m = m - 1
         end do
         ids(m + 1) = tmp
      end do
   end function lagged_fields

   integer function write_restart(prefix) result(status)
      character(len=*), intent(in) :: prefix
      interface
         integer(c_int) function c_rename(old, new) bind(C, name="rename")
            import :: c_int, c_char
            character(kind=c_char), intent(in) :: old(*), new(*)
         end function c_rename
      end interface
      character(len=:), allocatable :: path, tmp
      character(len=64) :: name
      integer, allocatable :: ids(:)
      integer :: unit, ios, n, k, m, slot, e
      integer(int64) :: first
      real(real64), pointer :: s8(:, :, :)
      real(real32), pointer :: s4(:, :, :)
      status = EH_OK
      path = restart_file(prefix)
      tmp = path//".tmp"
      ids = lagged_fields()
      open (newunit=unit, file=tmp, access="stream", form="unformatted", status="replace", &
            action="write", iostat=ios)
      if (ios /= 0) then
         status = fail(EH_ERR_ARG, "eh_finalize: cannot write the coupling restart "//tmp)
         return
      end if
      write (unit) "EHRESTRT", 1_int64, grid_words(), int(st_j0, int64), int(st_j1, int64), &
         int(st_i0, int64), int(st_i1, int64), int(size(ids), int64)
      do n = 1, size(ids)
         k = ids(n)
         associate (f => st_fields(k))
            e = f%exchange
            name = f%name
            first = st_count(e) - st_lag(e)  ! the oldest occurrence still to be got
            write (unit) name, int(st_lag(e), int64), int(f%levels, int64), &
               int(f%itemsize, int64)
            write (unit) (f%ring_step(ring_slot(e, first + m)), m = 0, st_lag(e) - 1)
            do m = 0, st_lag(e) - 1
               slot = ring_slot(e, first + m)
               if (f%itemsize == 8) then
                  call c_f_pointer(slot_addr(k, slot), s8, [array_nx(), array_ny(), f%levels])
                  write (unit) s8(st_halo(1) + 1:st_halo(1) + st_i1 - st_i0, &
                                  st_halo(3) + 1:st_halo(3) + st_j1 - st_j0, :)
               else
                  call c_f_pointer(slot_addr(k, slot), s4, [array_nx(), array_ny(), f%levels])
                  write (unit) s4(st_halo(1) + 1:st_halo(1) + st_i1 - st_i0, &
                                  st_halo(3) + 1:st_halo(3) + st_j1 - st_j0, :)
               end if
            end do
         end associate
      end do
      close (unit, iostat=ios)
      if (ios /= 0 .or. c_rename(tmp//c_null_char, path//c_null_char) /= 0) then
         status = fail(EH_ERR_ARG, "eh_finalize: cannot write the coupling restart "//path)
      end if
   end function write_restart

   !> Every model rank reads its restart (eh_enddef(restart=...)); the first rank's error, if
   !> any, is every rank's (collective over the model ranks).
   integer function read_restart(prefix) result(status)
      character(len=*), intent(in) :: prefix
      character(len=MSG_LEN) :: err
      character(len=MSG_LEN), allocatable :: errs(:)
      integer :: r, ierror
      err = ""
      if (load_restart(restart_file(prefix)) /= EH_OK) err = st_msg
      allocate (errs(st_size))
      call MPI_Allgather(err, MSG_LEN, MPI_CHARACTER, errs, MSG_LEN, MPI_CHARACTER, st_comm, &
         ierror)
      status = EH_OK
      do r = 1, st_size
         if (len_trim(errs(r)) > 0) then
            status = fail(EH_ERR_RESTART, "model rank "//trim(str(r - 1))//": "//trim(errs(r)))
            return
         end if
      end do
   end function read_restart

   integer function load_restart(path) result(status)
      character(len=*), intent(in) :: path
      character(len=8) :: magic
      character(len=64) :: name
      character(len=MSG_LEN) :: what
      integer(int64) :: fsize, pos, version, words(6), box(4), n_rec, head(3), want(6)
      integer(int64), allocatable :: steps(:)
      logical :: exists
      logical, allocatable :: seen(:)
      integer :: unit, ios, n, k, m, slot, e, lag
      real(real64), pointer :: s8(:, :, :)
      real(real32), pointer :: s4(:, :, :)
      character(len=*), parameter :: grid_keys(6) = [character(len=9) :: "nx", "ny", &
         "east_west", "south", "north", "pivot"]
      status = EH_OK
      inquire (file=path, exist=exists)
      if (.not. exists) then
         status = fail(EH_ERR_RESTART, "coupling restart "//path//": no such file (written by "// &
            "close(restart=...) or eh_finalize(restart=...) of the previous run)")
         return
      end if
      open (newunit=unit, file=path, access="stream", form="unformatted", status="old", &
            action="read", iostat=ios)
      if (ios /= 0) then
         status = fail(EH_ERR_RESTART, "coupling restart "//path//": cannot read it")
         return
      end if
      inquire (unit=unit, size=fsize)
      allocate (seen(st_nfields))
      seen = .false.
      pos = 0
      if (.not. need(8_int64, "the magic bytes")) return
      read (unit) magic
      if (magic /= "EHRESTRT") then
         status = bad("not an eophis_hpc coupling restart (it does not start with EHRESTRT)")
         return
      end if
      if (.not. need(8_int64, "the version")) return
      read (unit) version
      if (version /= 1) then
         status = bad("format version "//trim(itoa(version))//", this eophis_hpc reads version 1")
         return
      end if
      if (.not. need(48_int64, "the grid")) return
      read (unit) words
      want = grid_words()
      do k = 1, 6
         if (words(k) /= want(k)) then
            if (k >= 3 .and. k <= 5) then
               status = bad("grid "//trim(grid_keys(k))//"="//edge_name(words(k))// &
                  " in the file, "//edge_name(want(k))//" in this run")
            else if (k == 6) then
               status = bad("grid pivot="//merge("'F'", "'T'", words(6) == 1)// &
                  " in the file, "//merge("'F'", "'T'", want(6) == 1)//" in this run")
            else
               status = bad("grid "//trim(grid_keys(k))//"="//trim(itoa(words(k)))// &
                  " in the file, "//trim(itoa(want(k)))//" in this run")
            end if
            return
         end if
      end do
      if (.not. need(32_int64, "the box")) return
      read (unit) box
      if (any(box /= [int(st_j0, int64), int(st_j1, int64), int(st_i0, int64), &
                      int(st_i1, int64)])) then
         status = bad("written for the box (j0, j1, i0, i1) = ("//trim(itoa(box(1)))//", "// &
            trim(itoa(box(2)))//", "//trim(itoa(box(3)))//", "//trim(itoa(box(4)))// &
            "), this rank owns ("//trim(str(st_j0))//", "//trim(str(st_j1))//", "// &
            trim(str(st_i0))//", "//trim(str(st_i1))//") (same model decomposition and "// &
            "rank order needed)")
         return
      end if
      if (.not. need(8_int64, "the number of records")) return
      read (unit) n_rec
      do n = 1, int(n_rec)
         if (.not. need(64_int64, "a field name")) return
         read (unit) name
         what = "the header of field '"//trim(name)//"'"
         if (.not. need(24_int64, trim(what))) return
         read (unit) head
         k = find_field(trim(name))
         if (k == 0) then
            status = bad("field '"//trim(name)//"' is not an output of a lagged exchange in "// &
               "this run")
            return
         end if
         if (.not. associated(st_fields(k)%ring)) then
            status = bad("field '"//trim(name)//"' is not an output of a lagged exchange in "// &
               "this run")
            return
         end if
         associate (f => st_fields(k))
            e = f%exchange
            lag = st_lag(e)
            if (head(1) /= lag) then
               status = bad("field '"//trim(name)//"' has lag="//trim(itoa(head(1)))// &
                  " in the file, lag="//trim(str(lag))//" in this run")
            else if (head(2) /= f%levels) then
               status = bad("field '"//trim(name)//"' has levels="//trim(itoa(head(2)))// &
                  " in the file, levels="//trim(str(f%levels))//" in this run")
            else if (head(3) /= f%itemsize) then
               status = bad("field '"//trim(name)//"' has dtype="// &
                  merge("float64", "float32", head(3) == 8)//" in the file, dtype="// &
                  merge("float64", "float32", f%itemsize == 8)//" in this run")
            end if
            if (status /= EH_OK) return
            allocate (steps(lag))
            what = "the steps of field '"//trim(name)//"'"
            if (.not. need(8_int64*lag, trim(what))) return
            read (unit) steps
            what = "the values of field '"//trim(name)//"'"
            if (.not. need(int(lag, int64)*f%levels*(st_j1 - st_j0)*(st_i1 - st_i0)*f%itemsize, &
                           trim(what))) return
            do m = 0, lag - 1
               slot = ring_slot(e, int(m - lag, int64))
               f%ring_step(slot) = steps(m + 1)
               if (f%itemsize == 8) then
                  call c_f_pointer(slot_addr(k, slot), s8, [array_nx(), array_ny(), f%levels])
                  read (unit) s8(st_halo(1) + 1:st_halo(1) + st_i1 - st_i0, &
                                 st_halo(3) + 1:st_halo(3) + st_j1 - st_j0, :)
               else
                  call c_f_pointer(slot_addr(k, slot), s4, [array_nx(), array_ny(), f%levels])
                  read (unit) s4(st_halo(1) + 1:st_halo(1) + st_i1 - st_i0, &
                                 st_halo(3) + 1:st_halo(3) + st_j1 - st_j0, :)
               end if
            end do
            deallocate (steps)
         end associate
         seen(k) = .true.
      end do
      if (pos /= fsize) then
         status = bad(trim(itoa(fsize - pos))//" bytes after the last record (not written by "// &
            "eophis_hpc, or written for another run)")
         return
      end if
      close (unit)
      do k = 1, st_nfields
         if (associated(st_fields(k)%ring) .and. .not. seen(k)) then
            status = bad("no record for field '"//st_fields(k)%name//"' (an output of a "// &
               "lagged exchange in this run)")
            return
         end if
      end do

   contains

      !> Whether ``n`` more bytes are in the file (else the truncation error).
      logical function need(n, part)
         integer(int64), intent(in) :: n
         character(len=*), intent(in) :: part
         need = pos + n <= fsize
         if (.not. need) then
            status = bad("truncated ("//trim(itoa(fsize))//" bytes, "//part//" needs bytes "// &
               trim(itoa(pos))//".."//trim(itoa(pos + n))//")")
         end if
         pos = pos + n
      end function need

      integer function bad(msg)
         character(len=*), intent(in) :: msg
         integer :: ios2
         close (unit, iostat=ios2)
         bad = fail(EH_ERR_RESTART, "coupling restart "//path//": "//msg)
      end function bad
   end function load_restart

   ! ===================================================================== the end
   integer function core_wait() result(status)
      integer :: k
      status = EH_OK
      do k = 1, st_nfields
         status = complete_send(k)
         if (status /= EH_OK) return
      end do
   end function core_wait

   !> Complete every non-blocking eh_put (their arrays may be changed afterwards).
   subroutine eh_wait(ierr)
      integer, intent(out), optional :: ierr
      if (.not. st_defined) then
         call finish(EH_OK, ierr)
      else
         call finish(core_wait(), ierr)
      end if
   end subroutine eh_wait

   integer function core_finalize(restart) result(status)
      character(len=*), intent(in), optional :: restart
      integer :: e, k, w, ierror
      integer(int64) :: note(2)
      status = EH_OK
      if (st_closed .or. .not. st_init) return
      if (st_defined) then
         do e = 0, size(st_every) - 1
            status = drain(e)
            if (status /= EH_OK) return
         end do
         do k = 1, st_nfields
            status = drain_ring(k)
            if (status /= EH_OK) return
         end do
         if (present(restart)) then
            status = write_restart(restart)
            if (status /= EH_OK) return
         end if
         status = core_wait()
         if (status /= EH_OK) return
      end if
      call MPI_Barrier(st_comm, ierror)
      if (st_rank == 0 .and. st_defined) then
         note = [NOTE_STOP, NOTE_STOP]
         do w = 0, st_workers - 1, st_note_group
            call MPI_Send(note, 2, MPI_INT64_T, w, TAG_CONTROL, st_inter, ierror)
         end do
      end if
      do k = 1, st_nfields
         call free_requests(st_fields(k))
         call free_types(st_fields(k)%types)
         st_fields(k)%types_nk = -1
         call free_ring(st_fields(k))
      end do
      call MPI_Comm_free(st_inter, ierror)
      st_closed = .true.
      if (st_we_started_mpi) call MPI_Finalize(ierror)
   end function core_finalize

   !> End the coupling (collective over the model ranks): receive what was not asked for,
   !> complete the sends, tell the workers to stop, free the MPI objects. The model's
   !> communicator stays valid; MPI is finalised only if eh_init started it.
   !> ``restart``: write the results of lagged exchanges still in flight (what eh_get would
   !> return at the next ``lag`` occurrences) to ``PREFIX_rRRRR.ehr``, for the next run's
   !> eh_enddef(restart=PREFIX) (or the Python client's connect(..., restart=PREFIX)).
   subroutine eh_finalize(ierr, restart)
      integer, intent(out), optional :: ierr
      character(len=*), intent(in), optional :: restart
      call finish(core_finalize(restart), ierr)
   end subroutine eh_finalize

   ! ===================================================================== C entry points
   function c_string(s) result(out)
      character(kind=c_char), intent(in) :: s(*)
      character(len=:), allocatable :: out
      integer :: n
      n = 0
      do while (s(n + 1) /= c_null_char .and. n < 4096)
         n = n + 1
      end do
      allocate (character(len=n) :: out)
      out = transfer(s(1:n), out)
   end function c_string

   integer(c_int) function to_c(status)
      integer, intent(in) :: status
      if (status /= EH_OK .and. st_abort_c) call die(status)
      to_c = int(status, c_int)
   end function to_c

   integer(c_int) function eh_c_abort_on_error(flag) bind(C, name="eh_abort_on_error")
      integer(c_int), value :: flag
      st_abort_c = flag /= 0
      eh_c_abort_on_error = EH_OK
   end function eh_c_abort_on_error

   integer(c_int) function eh_c_init(comm) bind(C, name="eh_init_f")
      integer(c_int), intent(out) :: comm
      type(MPI_Comm) :: fcomm
      integer :: status
      status = core_init(fcomm, MPI_COMM_WORLD)
      comm = -1
      if (status == EH_OK) comm = int(fcomm%MPI_VAL, c_int)
      eh_c_init = to_c(status)
   end function eh_c_init

   integer(c_int) function eh_c_grid(nx, ny, east_west, south, north, pivot) &
      bind(C, name="eh_grid")
      integer(c_int), value :: nx, ny
      character(kind=c_char), intent(in) :: east_west(*), south(*), north(*), pivot(*)
      eh_c_grid = to_c(core_grid(int(nx), int(ny), c_string(east_west), c_string(south), &
         c_string(north), c_string(pivot)))
   end function eh_c_grid

   integer(c_int) function eh_c_box(i0, j0, ni, nj, halo, holes) bind(C, name="eh_box")
      integer(c_int), value :: i0, j0, ni, nj, holes
      integer(c_int), intent(in) :: halo(4)
      eh_c_box = to_c(core_box(int(i0), int(j0), int(ni), int(nj), int(halo), holes /= 0))
   end function eh_c_box

   integer(c_int) function eh_c_field(name, levels, direction, dtype, id) &
      bind(C, name="eh_field")
      character(kind=c_char), intent(in) :: name(*), direction(*), dtype(*)
      integer(c_int), value :: levels
      integer(c_int), intent(out) :: id
      integer :: k, status
      status = core_field(c_string(name), int(levels), c_string(direction), c_string(dtype), k)
      id = int(k, c_int)
      eh_c_field = to_c(status)
   end function eh_c_field

   integer(c_int) function eh_c_field_id(name, id) bind(C, name="eh_field_id")
      character(kind=c_char), intent(in) :: name(*)
      integer(c_int), intent(out) :: id
      integer :: k, status
      k = id_of(c_string(name), "eh_field_id")
      id = int(k, c_int)
      status = merge(EH_OK, EH_ERR_ARG, k /= 0)
      eh_c_field_id = to_c(status)
   end function eh_c_field_id

   integer(c_int) function eh_c_enddef() bind(C, name="eh_enddef")
      eh_c_enddef = to_c(core_enddef())
   end function eh_c_enddef

   integer(c_int) function eh_c_enddef_restart(prefix) bind(C, name="eh_enddef_restart")
      character(kind=c_char), intent(in) :: prefix(*)
      eh_c_enddef_restart = to_c(core_enddef(c_string(prefix)))
   end function eh_c_enddef_restart

   !> C arrays are [levels][ny + halos][nx + halos] (i fastest), the Fortran layout.
   integer(c_int) function eh_c_put(id, a, itemsize, nk, step, nonblocking) &
      bind(C, name="eh_put_raw")
      integer(c_int), value :: id, itemsize, nk, step, nonblocking
      type(c_ptr), value :: a
      if (.not. c_associated(a)) then
         eh_c_put = to_c(fail(EH_ERR_ARG, "eh_put: NULL array"))
         return
      end if
      eh_c_put = to_c(core_put(int(id), a, int(itemsize), array_nx(), array_ny(), int(nk), &
         .true., int(step), nonblocking /= 0))
   end function eh_c_put

   integer(c_int) function eh_c_get(id, a, itemsize, nk, step) bind(C, name="eh_get_raw")
      integer(c_int), value :: id, itemsize, nk, step
      type(c_ptr), value :: a
      if (.not. c_associated(a)) then
         eh_c_get = to_c(fail(EH_ERR_ARG, "eh_get: NULL array"))
         return
      end if
      eh_c_get = to_c(core_get(int(id), a, int(itemsize), array_nx(), array_ny(), int(nk), &
         .true., int(step)))
   end function eh_c_get

   integer(c_int) function eh_c_wait() bind(C, name="eh_wait")
      integer :: status
      status = EH_OK
      if (st_defined) status = core_wait()
      eh_c_wait = to_c(status)
   end function eh_c_wait

   integer(c_int) function eh_c_finalize() bind(C, name="eh_finalize")
      eh_c_finalize = to_c(core_finalize())
   end function eh_c_finalize

   integer(c_int) function eh_c_finalize_restart(prefix) bind(C, name="eh_finalize_restart")
      character(kind=c_char), intent(in) :: prefix(*)
      eh_c_finalize_restart = to_c(core_finalize(c_string(prefix)))
   end function eh_c_finalize_restart

   integer(c_int) function eh_c_set_timeout(seconds) bind(C, name="eh_set_timeout")
      real(c_double), value :: seconds
      call eh_set_timeout(real(seconds, real64))
      eh_c_set_timeout = EH_OK
   end function eh_c_set_timeout

   !> Copies the last error message (NUL-terminated, cut to ``n`` bytes) into ``buf``.
   integer(c_int) function eh_c_error_message(buf, n) bind(C, name="eh_error_message")
      character(kind=c_char), intent(out) :: buf(*)
      integer(c_int), value :: n
      integer :: k, m
      m = min(len_trim(st_msg), int(n) - 1)
      do k = 1, m
         buf(k) = st_msg(k:k)
      end do
      if (n > 0) buf(max(m, 0) + 1) = c_null_char
      eh_c_error_message = int(m, c_int)
   end function eh_c_error_message

end module eophis_hpc
