! A Fortran model that stops in its definition phase, before eh_enddef (a bad namelist, say):
! the whole job must end at once, with its message, not leave the workers waiting.
program early_stop
   use mpi_f08
   use eophis_hpc
   implicit none
   type(MPI_Comm) :: comm
   call eh_init(comm)
   call eh_grid(16, 8, 'cyclic', 'closed', 'closed')
   write (*, '(a)') 'ocean: bad namelist, stopping before eh_enddef'
   flush (6)
   error stop 1
end program early_stop
