! Process A of the Fortran test: builds an HDF5 file in memory with the
! core driver (h5pset_fapl_core_f), writes a dataset with h5dwrite_f and
! pushes the open file's image. The server comes from H5DEPOT_SERVER.
!
! Usage: fortran_packet_producer IMAGE_ID
program packet_producer
  use, intrinsic :: iso_c_binding
  use hdf5
  use h5depot
  use test_checks
  implicit none
  character(len=255) :: image_id
  type(c_ptr) :: client
  integer(hid_t) :: fapl, file, space, dataset
  integer(hsize_t), dimension(2) :: dims = [10, 100]
  real(c_double) :: values(10, 100)
  integer(c_int64_t) :: generation
  integer :: hdferr, i, j

  call get_command_argument(1, image_id)
  do j = 1, 100
    do i = 1, 10
      values(i, j) = 1000.0d0 * j + i
    end do
  end do

  call h5open_f(hdferr)
  call h5pcreate_f(H5P_FILE_ACCESS_F, fapl, hdferr)
  call h5pset_fapl_core_f(fapl, int(1048576, size_t), .false., hdferr)
  call h5fcreate_f("packet.h5", H5F_ACC_TRUNC_F, file, hdferr, &
                   access_prp=fapl)
  call check(hdferr, "h5fcreate_f")
  call h5screate_simple_f(2, dims, space, hdferr)
  call h5dcreate_f(file, "values", H5T_NATIVE_DOUBLE, space, dataset, hdferr)
  call h5dwrite_f(dataset, H5T_NATIVE_DOUBLE, values, dims, hdferr)
  call check(hdferr, "h5dwrite_f")
  call h5dclose_f(dataset, hdferr)
  call h5sclose_f(space, hdferr)

  call h5depot_connect_f("", client, hdferr)
  call check_depot(hdferr, "connect")
  call h5depot_push_file_f(client, trim(image_id), file, hdferr, generation)
  call check_depot(hdferr, "push")
  print '(a, a, i0)', trim(image_id), " pushed as generation ", generation
  call h5depot_disconnect_f(client)
  call h5fclose_f(file, hdferr)
  call h5pclose_f(fapl, hdferr)
  call h5close_f(hdferr)
end program packet_producer
