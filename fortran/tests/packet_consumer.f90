! Process B of the Fortran test: waits for the image process A pushes,
! opens it in place with h5depot_open_f and checks every value with
! h5dread_f; then checks the errors a Fortran program sees. The server
! comes from H5DEPOT_SERVER.
!
! Usage: fortran_packet_consumer IMAGE_ID
program packet_consumer
  use, intrinsic :: iso_c_binding
  use hdf5
  use h5depot
  use test_checks
  implicit none
  character(len=255) :: image_id
  character(len=512) :: message
  type(c_ptr) :: client, buf
  integer(hid_t) :: file, dataset, missing
  integer(hsize_t), dimension(2) :: dims = [10, 100]
  real(c_double) :: values(10, 100)
  type(h5depot_image_info_t) :: info
  integer(c_size_t) :: length
  integer(c_int64_t) :: generation
  integer :: hdferr, code, i, j

  call get_command_argument(1, image_id)
  call h5open_f(hdferr)
  call h5depot_connect_f("", client, hdferr)
  call check_depot(hdferr, "connect")
  call h5depot_wait_f(client, trim(image_id), 60000_c_int64_t, hdferr)
  call check_depot(hdferr, "wait")

  call h5depot_open_f(client, trim(image_id), 0, file, hdferr)
  call check_depot(hdferr, "open")
  call h5dopen_f(file, "values", dataset, hdferr)
  call h5dread_f(dataset, H5T_NATIVE_DOUBLE, values, dims, hdferr)
  if (hdferr /= 0) error stop "h5dread_f failed"
  do j = 1, 100
    do i = 1, 10
      if (abs(values(i, j) - (1000.0d0 * j + i)) > 0.0d0) then
        print '(a, i0, a, i0)', "wrong value at ", i, ", ", j
        error stop 1
      end if
    end do
  end do
  call h5dclose_f(dataset, hdferr)
  call h5fclose_f(file, hdferr)

  call h5depot_stat_f(client, trim(image_id), info, hdferr)
  call check_depot(hdferr, "stat")
  call h5depot_fetch_f(client, trim(image_id), buf, length, hdferr, generation)
  call check_depot(hdferr, "fetch")
  if (length /= info%size .or. generation /= info%generation) then
    error stop "fetch and stat disagree"
  end if
  call h5depot_free_f(buf)

  ! A missing image: hdferr -1, the code and a message naming it.
  call h5depot_open_f(client, "fortran/never-pushed", 0, missing, hdferr)
  call h5depot_errcode_f(code)
  call h5depot_errmsg_f(message)
  if (hdferr /= -1 .or. code /= H5DEPOT_NOT_FOUND .or. &
      index(message, "fortran/never-pushed") == 0) then
    print '(a, i0, a, a)', "unexpected error ", code, ": ", trim(message)
    error stop 1
  end if
  call h5depot_wait_f(client, "fortran/never-pushed", 100_c_int64_t, hdferr)
  call h5depot_errcode_f(code)
  if (hdferr /= -1 .or. code /= H5DEPOT_DEADLINE_EXCEEDED) then
    error stop "a wait that ran out is not DEADLINE_EXCEEDED"
  end if

  print '(a, a, i0, a)', trim(image_id), ": ", size(values), " values checked"
  call h5depot_disconnect_f(client)
  call h5close_f(hdferr)
end program packet_consumer
