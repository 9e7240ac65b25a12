! The remote driver from Fortran: h5pset_fapl_remote_f, then h5fcreate_f
! and h5fopen_f on an image id; writes are committed at h5fflush_f and
! h5fclose_f, and read back through the driver and through h5depot_open_f.
! The server comes from H5DEPOT_SERVER.
!
! Usage: fortran_remote_driver IMAGE_ID
program remote_driver
  use, intrinsic :: iso_c_binding
  use hdf5
  use h5depot
  implicit none
  character(len=255) :: image_id, target
  type(c_ptr) :: client
  integer(hid_t) :: fapl, file, space, dataset
  integer(hsize_t), dimension(1) :: dims = [50]
  integer :: numbers(50), read_back(50), hdferr, i
  logical :: exists

  call get_command_argument(1, image_id)
  call get_environment_variable("H5DEPOT_SERVER", target)
  numbers = [(i * i, i = 1, 50)]
  call h5open_f(hdferr)
  call h5pcreate_f(H5P_FILE_ACCESS_F, fapl, hdferr)
  call h5pset_fapl_remote_f(fapl, trim(target), hdferr)
  if (hdferr /= 0) error stop "h5pset_fapl_remote_f failed"

  ! Created through the driver; committed at close.
  call h5fcreate_f(trim(image_id), H5F_ACC_EXCL_F, file, hdferr, &
                   access_prp=fapl)
  if (hdferr /= 0) error stop "h5fcreate_f through the driver failed"
  call h5screate_simple_f(1, dims, space, hdferr)
  call h5dcreate_f(file, "squares", H5T_NATIVE_INTEGER, space, dataset, hdferr)
  call h5dwrite_f(dataset, H5T_NATIVE_INTEGER, numbers, dims, hdferr)
  call h5dclose_f(dataset, hdferr)
  call h5fclose_f(file, hdferr)

  ! Opened again read-write: another dataset, committed by the flush.
  call h5fopen_f(trim(image_id), H5F_ACC_RDWR_F, file, hdferr, access_prp=fapl)
  if (hdferr /= 0) error stop "h5fopen_f through the driver failed"
  call h5dopen_f(file, "squares", dataset, hdferr)
  call h5dread_f(dataset, H5T_NATIVE_INTEGER, read_back, dims, hdferr)
  call h5dclose_f(dataset, hdferr)
  if (any(read_back /= numbers)) error stop "read other values than written"
  call h5dcreate_f(file, "negated", H5T_NATIVE_INTEGER, space, dataset, hdferr)
  call h5dwrite_f(dataset, H5T_NATIVE_INTEGER, -numbers, dims, hdferr)
  call h5dclose_f(dataset, hdferr)
  call h5fflush_f(file, H5F_SCOPE_GLOBAL_F, hdferr)
  if (hdferr /= 0) error stop "the commit at h5fflush_f failed"
  call h5fclose_f(file, hdferr)
  call h5sclose_f(space, hdferr)

  ! Both datasets are in the image the server holds.
  call h5depot_connect_f(trim(target), client, hdferr)
  call h5depot_open_f(client, trim(image_id), 0, file, hdferr)
  if (hdferr /= 0) error stop "h5depot_open_f of the committed image failed"
  call h5lexists_f(file, "negated", exists, hdferr)
  if (.not. exists) error stop "the flushed dataset is not in the image"
  call h5dopen_f(file, "negated", dataset, hdferr)
  call h5dread_f(dataset, H5T_NATIVE_INTEGER, read_back, dims, hdferr)
  if (any(read_back /= -numbers)) error stop "the committed values differ"
  call h5dclose_f(dataset, hdferr)
  call h5fclose_f(file, hdferr)
  call h5depot_disconnect_f(client)
  call h5pclose_f(fapl, hdferr)
  call h5close_f(hdferr)
  print '(a, a)', trim(image_id), ": written and read through the remote driver"
end program remote_driver
