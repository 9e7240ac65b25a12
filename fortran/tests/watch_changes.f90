! A Fortran watch of a prefix sees the changes made under it, in order,
! with their ids and generations, and none made elsewhere; a watch started
! after a sequence sees again what came after it; waiting with nothing to
! see times out and the watch goes on; a cancelled watch says so. The
! server comes from H5DEPOT_SERVER.
!
! Usage: fortran_watch_changes PREFIX
program watch_changes
  use, intrinsic :: iso_c_binding
  use hdf5
  use h5depot
  use test_checks
  implicit none
  character(len=200) :: prefix
  character(len=300) :: seen_id
  character(len=8) :: short_id
  type(c_ptr) :: client, watch, again
  type(h5depot_event_t) :: event
  integer(hid_t) :: fapl, file
  integer(c_int64_t) :: first, second, published_sequence
  integer :: hdferr, code, id_length

  call get_command_argument(1, prefix)
  call h5open_f(hdferr)
  call h5pcreate_f(H5P_FILE_ACCESS_F, fapl, hdferr)
  call h5pset_fapl_core_f(fapl, int(65536, size_t), .false., hdferr)
  call h5fcreate_f("watched.h5", H5F_ACC_TRUNC_F, file, hdferr, &
                   access_prp=fapl)
  call check(hdferr, "h5fcreate_f")

  call h5depot_connect_f("", client, hdferr)
  call check_depot(hdferr, "connect")
  call h5depot_watch_start_f(client, trim(prefix), watch, hdferr)
  call check_depot(hdferr, "watch_start")

  ! Published, an image elsewhere (not seen), replaced, deleted.
  call h5depot_push_file_f(client, trim(prefix)//"packet", file, hdferr, first)
  call check_depot(hdferr, "first push")
  call h5depot_push_file_f(client, "elsewhere/packet", file, hdferr)
  call check_depot(hdferr, "push elsewhere")
  call h5depot_push_file_f(client, trim(prefix)//"packet", file, hdferr, &
                           second)
  call check_depot(hdferr, "second push")
  call h5depot_delete_f(client, trim(prefix)//"packet", hdferr)
  call check_depot(hdferr, "delete")

  call next_event(watch, H5DEPOT_EVENT_PUBLISHED, first)
  published_sequence = event%sequence
  call next_event(watch, H5DEPOT_EVENT_REPLACED, second)
  if (event%replaced_generation /= first) call fail("replaced generation")
  if (event%sequence <= published_sequence) call fail("sequence order")
  call next_event(watch, H5DEPOT_EVENT_DELETED, second)

  ! Nothing more under the prefix: a short wait times out, the watch goes on.
  call h5depot_watch_next_f(watch, 200_c_int64_t, event, seen_id, hdferr)
  call h5depot_errcode_f(code)
  if (hdferr /= -1 .or. code /= H5DEPOT_DEADLINE_EXCEEDED) then
    call fail("a wait with nothing to see did not time out")
  end if

  ! From after the publication: the replacement and the deletion again,
  ! with an id longer than the string it is given, cut, its length told.
  call h5depot_watch_start_f(client, trim(prefix), again, hdferr, &
                             after=published_sequence)
  call check_depot(hdferr, "watch_start after")
  call h5depot_watch_next_f(again, 60000_c_int64_t, event, short_id, hdferr, &
                            id_length)
  call check_depot(hdferr, "watch_next after")
  if (event%kind /= H5DEPOT_EVENT_REPLACED) call fail("kind after")
  if (id_length /= len_trim(prefix) + len("packet")) call fail("id length")
  if (short_id /= prefix(1:len(short_id))) call fail("cut id")
  call h5depot_watch_close_f(again)

  call h5depot_watch_cancel_f(watch)
  call h5depot_watch_next_f(watch, 60000_c_int64_t, event, seen_id, hdferr)
  call h5depot_errcode_f(code)
  if (hdferr /= -1 .or. code /= H5DEPOT_CANCELLED) then
    call fail("a cancelled watch did not say so")
  end if
  call h5depot_watch_close_f(watch)
  if (c_associated(watch)) call fail("closed watch not null")

  call h5depot_disconnect_f(client)
  call h5fclose_f(file, hdferr)
  call h5pclose_f(fapl, hdferr)
  call h5close_f(hdferr)
  print '(a)', "watch events as expected"

contains

  ! The next event must be `kind` of prefix//"packet" at `generation`.
  subroutine next_event(from, kind, generation)
    type(c_ptr), intent(in) :: from
    integer, intent(in) :: kind
    integer(c_int64_t), intent(in) :: generation
    call h5depot_watch_next_f(from, 60000_c_int64_t, event, seen_id, hdferr, &
                              id_length)
    call check_depot(hdferr, "watch_next")
    if (event%kind /= kind) then
      print '(a, i0, a, i0)', "kind ", event%kind, " instead of ", kind
      call fail("event kind")
    end if
    if (trim(seen_id) /= trim(prefix)//"packet") then
      call fail("event id "//trim(seen_id))
    end if
    if (id_length /= len_trim(seen_id)) call fail("event id length")
    if (event%generation /= generation) call fail("event generation")
    if (event%size <= 0) call fail("event size")
  end subroutine next_event
end program watch_changes
