! Streams from Fortran: appends five HDF5 files built in memory (core
! driver) as steps of a stream, two of them through step buffers,
! finishes it, then takes every step as a
! reader group would: each opens in place, holds the value written, and
! is acknowledged; after the last one the end is H5DEPOT_OUT_OF_RANGE.
! The server comes from H5DEPOT_SERVER.
!
! Usage: fortran_stream_steps STREAM
program stream_steps
  use, intrinsic :: iso_c_binding
  use hdf5
  use h5depot
  use test_checks
  implicit none
  character(len=255) :: stream
  type(c_ptr) :: client
  integer(hid_t) :: fapl, file, space, dataset
  integer(hsize_t), dimension(1) :: dims = [100000]
  integer(c_int32_t) :: values(100000)
  integer(c_int64_t) :: step
  integer :: hdferr, code, i

  call get_command_argument(1, stream)
  call h5open_f(hdferr)
  call h5depot_connect_f("", client, hdferr)
  call check_depot(hdferr, "connect")

  do i = 0, 4
    values = i
    call h5pcreate_f(H5P_FILE_ACCESS_F, fapl, hdferr)
    call h5pset_fapl_core_f(fapl, int(65536, size_t), .false., hdferr)
    call h5fcreate_f("step.h5", H5F_ACC_TRUNC_F, file, hdferr, &
                     access_prp=fapl)
    call check_depot(hdferr, "h5fcreate_f")
    call h5screate_simple_f(1, dims, space, hdferr)
    call h5dcreate_f(file, "values", H5T_NATIVE_INTEGER, space, dataset, &
                     hdferr)
    call h5dwrite_f(dataset, H5T_NATIVE_INTEGER, values, dims, hdferr)
    call h5dclose_f(dataset, hdferr)
    call h5sclose_f(space, hdferr)
    ! Every other step copied into a step buffer of the client's (400 KB
    ! each: on the server's host, large enough to be handed over).
    call h5depot_stream_append_f(client, trim(stream), file, hdferr, step, &
                                 step_buffer=(mod(i, 2) == 1))
    call check_depot(hdferr, "append")
    if (step /= i) error stop "steps are numbered in order from 0"
    call h5fclose_f(file, hdferr)
    call h5pclose_f(fapl, hdferr)
  end do
  call h5depot_stream_finish_f(client, trim(stream), hdferr)
  call check_depot(hdferr, "finish")

  do i = 0, 4
    call h5depot_stream_next_f(client, trim(stream), "readers", &
                               10000_c_int64_t, file, step, hdferr)
    call check_depot(hdferr, "next")
    if (step /= i) error stop "steps arrive in order"
    call h5dopen_f(file, "values", dataset, hdferr)
    call h5dread_f(dataset, H5T_NATIVE_INTEGER, values, dims, hdferr)
    call check_depot(hdferr, "h5dread_f")
    if (any(values /= i)) error stop "a step holds another step's values"
    call h5dclose_f(dataset, hdferr)
    call h5fclose_f(file, hdferr)
    call h5depot_stream_ack_f(client, trim(stream), "readers", step, hdferr)
    call check_depot(hdferr, "ack")
  end do
  call h5depot_stream_next_f(client, trim(stream), "readers", &
                             1000_c_int64_t, file, step, hdferr)
  call h5depot_errcode_f(code)
  if (hdferr /= -1 .or. code /= H5DEPOT_OUT_OF_RANGE) then
    error stop "the end of a finished stream is H5DEPOT_OUT_OF_RANGE"
  end if
  call h5depot_stream_delete_f(client, trim(stream), hdferr, group="readers")
  call check_depot(hdferr, "delete the group")
  call h5depot_stream_delete_f(client, trim(stream), hdferr, group="readers")
  call h5depot_errcode_f(code)
  if (hdferr /= -1 .or. code /= H5DEPOT_NOT_FOUND) then
    error stop "a deleted group is H5DEPOT_NOT_FOUND"
  end if
  call h5depot_stream_delete_f(client, trim(stream), hdferr)
  call check_depot(hdferr, "delete the stream")
  call h5depot_stream_delete_f(client, trim(stream), hdferr)
  if (hdferr /= -1) error stop "a deleted stream is not there to delete"
  print '(a, a)', trim(stream), ": 5 steps appended and read back"
  call h5depot_disconnect_f(client)
  call h5close_f(hdferr)
end program stream_steps
