! What the Fortran test programs share: stopping with status 1 and a line
! that says what failed, with the library's own message for an h5depot
! call.
module test_checks
  use h5depot, only: h5depot_errmsg_f
  implicit none
  private
  public :: fail, check, check_depot

contains

  ! Stops the program: "failed: " and `what`, status 1.
  subroutine fail(what)
    character(len=*), intent(in) :: what
    print '(a, a)', "failed: ", what
    error stop 1
  end subroutine fail

  ! Fails with `what` unless `status` (an hdferr) is 0.
  subroutine check(status, what)
    integer, intent(in) :: status
    character(len=*), intent(in) :: what
    if (status /= 0) call fail(what)
  end subroutine check

  ! As check, for an h5depot call: adds the message of the calling
  ! thread's last failure.
  subroutine check_depot(status, what)
    integer, intent(in) :: status
    character(len=*), intent(in) :: what
    character(len=512) :: message
    if (status /= 0) then
      call h5depot_errmsg_f(message)
      call fail(what//": "//trim(message))
    end if
  end subroutine check_depot
end module test_checks
