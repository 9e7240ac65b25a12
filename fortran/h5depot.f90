! The h5depot Fortran module: the C API (h5depot/h5depot.h) in the
! conventions of HDF5's own Fortran API. Subroutines end in _f and take a
! trailing hdferr (0 on success, -1 on failure); identifiers are
! INTEGER(HID_T); buffers are TYPE(C_PTR), as h5fget_file_image_f has them;
! a client is a TYPE(C_PTR) from h5depot_connect_f. After a failure,
! h5depot_errcode_f gives the error contract's code (H5DEPOT_NOT_FOUND, ...)
! and h5depot_errmsg_f the one-line message; both describe the calling
! thread's last failure.
!
!   USE hdf5
!   USE h5depot
!   TYPE(C_PTR) :: client
!   CALL h5depot_connect_f("unix:/run/h5depot.sock", client, hdferr)
!   CALL h5depot_push_file_f(client, "run-42/packet", file_id, hdferr)
!   CALL h5depot_open_f(client, "run-42/packet", 0, file_id, hdferr)
!   CALL h5depot_disconnect_f(client)
module h5depot
  use, intrinsic :: iso_c_binding
  use hdf5, only: hid_t
  implicit none
  private

  public :: h5depot_image_info_t
  public :: h5depot_connect_f, h5depot_disconnect_f
  public :: h5depot_push_file_f, h5depot_push_buffer_f
  public :: h5depot_fetch_f, h5depot_free_f, h5depot_open_f
  public :: h5depot_wait_f, h5depot_stat_f, h5depot_delete_f
  public :: h5depot_errcode_f, h5depot_errmsg_f
  public :: h5pset_fapl_remote_f
  public :: h5depot_stream_append_f, h5depot_stream_next_f
  public :: h5depot_stream_ack_f, h5depot_stream_finish_f
  public :: h5depot_stream_delete_f
  public :: h5depot_event_t
  public :: h5depot_watch_start_f, h5depot_watch_next_f
  public :: h5depot_watch_cancel_f, h5depot_watch_close_f
  public :: H5DEPOT_EVENT_PUBLISHED, H5DEPOT_EVENT_REPLACED, &
            H5DEPOT_EVENT_DELETED, H5DEPOT_EVENT_EXPIRED, &
            H5DEPOT_EVENT_EVICTED, H5DEPOT_EVENT_LOST
  public :: H5DEPOT_OK, H5DEPOT_CANCELLED, H5DEPOT_INVALID_ARGUMENT, H5DEPOT_DEADLINE_EXCEEDED, &
            H5DEPOT_NOT_FOUND, H5DEPOT_ALREADY_EXISTS, &
            H5DEPOT_PERMISSION_DENIED, H5DEPOT_RESOURCE_EXHAUSTED, &
            H5DEPOT_FAILED_PRECONDITION, H5DEPOT_ABORTED, &
            H5DEPOT_UNAVAILABLE, H5DEPOT_DATA_LOSS, H5DEPOT_UNAUTHENTICATED, &
            H5DEPOT_OUT_OF_RANGE
  public :: H5DEPOT_OPEN_RW

  ! The codes of h5depot_code (h5depot.h).
  integer, parameter :: H5DEPOT_OK = 0
  ! A watch was cancelled (h5depot_watch_cancel_f).
  integer, parameter :: H5DEPOT_CANCELLED = 1
  integer, parameter :: H5DEPOT_INVALID_ARGUMENT = 3
  integer, parameter :: H5DEPOT_DEADLINE_EXCEEDED = 4
  integer, parameter :: H5DEPOT_NOT_FOUND = 5
  integer, parameter :: H5DEPOT_ALREADY_EXISTS = 6
  integer, parameter :: H5DEPOT_PERMISSION_DENIED = 7
  integer, parameter :: H5DEPOT_RESOURCE_EXHAUSTED = 8
  integer, parameter :: H5DEPOT_FAILED_PRECONDITION = 9
  integer, parameter :: H5DEPOT_ABORTED = 10
  ! A stream is finished and the reader group has had every step.
  integer, parameter :: H5DEPOT_OUT_OF_RANGE = 11
  integer, parameter :: H5DEPOT_UNAVAILABLE = 14
  integer, parameter :: H5DEPOT_DATA_LOSS = 15
  integer, parameter :: H5DEPOT_UNAUTHENTICATED = 16

  ! H5LT_FILE_IMAGE_OPEN_RW, for h5depot_open_f's flags.
  integer, parameter :: H5DEPOT_OPEN_RW = 1

  ! What the server knows about one generation of an image
  ! (h5depot_image_info). Times are microseconds since 1970; expires is 0
  ! for an image that never expires.
  type, bind(c) :: h5depot_image_info_t
    integer(c_int64_t) :: size
    integer(c_int64_t) :: generation
    integer(c_int64_t) :: checksum
    integer(c_int64_t) :: created_unix_micros
    integer(c_int64_t) :: expires_unix_micros
  end type h5depot_image_info_t

  ! The kinds of change a watch reports (h5depot_event_kind).
  integer, parameter :: H5DEPOT_EVENT_PUBLISHED = 0  ! an id's first generation
  integer, parameter :: H5DEPOT_EVENT_REPLACED = 1   ! a new generation
  integer, parameter :: H5DEPOT_EVENT_DELETED = 2    ! removed by a delete
  integer, parameter :: H5DEPOT_EVENT_EXPIRED = 3    ! its time to live ended
  integer, parameter :: H5DEPOT_EVENT_EVICTED = 4    ! removed to make room
  ! Not a change: changes first_lost_sequence through sequence were not
  ! delivered (the server no longer kept them); look again and go on.
  integer, parameter :: H5DEPOT_EVENT_LOST = 5

  ! One change seen by a watch (h5depot_event), in the order changes took
  ! effect; sequences only grow. Published, replaced: the new generation
  ! and its size; deleted, expired, evicted: the generation removed and its
  ! size. The image's id comes apart, as a Fortran string.
  type :: h5depot_event_t
    integer :: kind
    integer(c_int64_t) :: sequence
    integer(c_int64_t) :: generation
    integer(c_int64_t) :: size
    integer(c_int64_t) :: replaced_generation  ! H5DEPOT_EVENT_REPLACED only
    integer(c_int64_t) :: time_unix_micros     ! when it took effect
    integer(c_int64_t) :: first_lost_sequence  ! H5DEPOT_EVENT_LOST only
  end type h5depot_event_t

  ! h5depot_event as C lays it out; converted by h5depot_watch_next_f.
  type, bind(c) :: c_event
    integer(c_int) :: kind
    integer(c_int64_t) :: sequence
    type(c_ptr) :: image_id
    integer(c_int64_t) :: generation
    integer(c_int64_t) :: size
    integer(c_int64_t) :: replaced_generation
    integer(c_int64_t) :: time_unix_micros
    integer(c_int64_t) :: first_lost_sequence
  end type c_event

  interface
    function c_connect(target) bind(c, name="h5depot_connect")
      import :: c_ptr, c_char
      character(kind=c_char), dimension(*), intent(in) :: target
      type(c_ptr) :: c_connect
    end function c_connect

    subroutine c_disconnect(client) bind(c, name="h5depot_disconnect")
      import :: c_ptr
      type(c_ptr), value :: client
    end subroutine c_disconnect

    function c_push_file(client, image_id, file_id, generation) &
        bind(c, name="h5depot_push_file")
      import :: c_ptr, c_char, c_int, c_int64_t
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: image_id
      integer(c_int64_t), value :: file_id  ! hid_t
      integer(c_int64_t), intent(out) :: generation
      integer(c_int) :: c_push_file
    end function c_push_file

    function c_push_buffer(client, image_id, buf, length, generation) &
        bind(c, name="h5depot_push_buffer")
      import :: c_ptr, c_char, c_int, c_int64_t, c_size_t
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: image_id
      type(c_ptr), value :: buf
      integer(c_size_t), value :: length
      integer(c_int64_t), intent(out) :: generation
      integer(c_int) :: c_push_buffer
    end function c_push_buffer

    function c_fetch(client, image_id, buf, length, generation) &
        bind(c, name="h5depot_fetch")
      import :: c_ptr, c_char, c_int, c_int64_t, c_size_t
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: image_id
      type(c_ptr), intent(out) :: buf
      integer(c_size_t), intent(out) :: length
      integer(c_int64_t), intent(out) :: generation
      integer(c_int) :: c_fetch
    end function c_fetch

    function c_stream_append_file(client, stream, file_id, wait_ms, step) &
        bind(c, name="h5depot_stream_append_file")
      import :: c_ptr, c_char, c_int, c_int64_t
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: stream
      integer(c_int64_t), value :: file_id  ! hid_t
      integer(c_int64_t), value :: wait_ms
      integer(c_int64_t), intent(out) :: step
      integer(c_int) :: c_stream_append_file
    end function c_stream_append_file

    function c_stream_append_file_buffered(client, stream, file_id, wait_ms, &
                                           step) &
        bind(c, name="h5depot_stream_append_file_buffered")
      import :: c_ptr, c_char, c_int, c_int64_t
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: stream
      integer(c_int64_t), value :: file_id  ! hid_t
      integer(c_int64_t), value :: wait_ms
      integer(c_int64_t), intent(out) :: step
      integer(c_int) :: c_stream_append_file_buffered
    end function c_stream_append_file_buffered

    function c_stream_open_next(client, stream, group, wait_ms, flags, step) &
        bind(c, name="h5depot_stream_open_next")
      import :: c_ptr, c_char, c_int, c_int64_t
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: stream, group
      integer(c_int64_t), value :: wait_ms
      integer(c_int), value :: flags
      integer(c_int64_t), intent(out) :: step
      integer(c_int64_t) :: c_stream_open_next  ! hid_t
    end function c_stream_open_next

    function c_stream_ack(client, stream, group, step) &
        bind(c, name="h5depot_stream_ack")
      import :: c_ptr, c_char, c_int, c_int64_t
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: stream, group
      integer(c_int64_t), value :: step
      integer(c_int) :: c_stream_ack
    end function c_stream_ack

    function c_stream_finish(client, stream) &
        bind(c, name="h5depot_stream_finish")
      import :: c_ptr, c_char, c_int
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: stream
      integer(c_int) :: c_stream_finish
    end function c_stream_finish

    ! `group`: a NUL-terminated name, or C_NULL_PTR for the whole stream.
    function c_stream_delete(client, stream, group) &
        bind(c, name="h5depot_stream_delete")
      import :: c_ptr, c_char, c_int
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: stream
      type(c_ptr), value :: group
      integer(c_int) :: c_stream_delete
    end function c_stream_delete

    subroutine c_free(buf) bind(c, name="free")
      import :: c_ptr
      type(c_ptr), value :: buf
    end subroutine c_free

    function c_open(client, image_id, flags) bind(c, name="h5depot_open")
      import :: c_ptr, c_char, c_int, c_int64_t
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: image_id
      integer(c_int), value :: flags
      integer(c_int64_t) :: c_open  ! hid_t
    end function c_open

    function c_wait(client, image_id, timeout_ms) bind(c, name="h5depot_wait")
      import :: c_ptr, c_char, c_int, c_int64_t
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: image_id
      integer(c_int64_t), value :: timeout_ms
      integer(c_int) :: c_wait
    end function c_wait

    function c_stat(client, image_id, info) bind(c, name="h5depot_stat")
      import :: c_ptr, c_char, c_int, h5depot_image_info_t
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: image_id
      type(h5depot_image_info_t), intent(out) :: info
      integer(c_int) :: c_stat
    end function c_stat

    function c_delete(client, image_id) bind(c, name="h5depot_delete")
      import :: c_ptr, c_char, c_int
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: image_id
      integer(c_int) :: c_delete
    end function c_delete

    function c_watch_start(client, prefix, after, watch) &
        bind(c, name="h5depot_watch_start")
      import :: c_ptr, c_char, c_int
      type(c_ptr), value :: client
      character(kind=c_char), dimension(*), intent(in) :: prefix
      type(c_ptr), value :: after  ! const uint64_t*, or NULL
      type(c_ptr), intent(out) :: watch
      integer(c_int) :: c_watch_start
    end function c_watch_start

    function c_watch_next(watch, timeout_ms, event) &
        bind(c, name="h5depot_watch_next")
      import :: c_ptr, c_int, c_int64_t, c_event
      type(c_ptr), value :: watch
      integer(c_int64_t), value :: timeout_ms
      type(c_event), intent(out) :: event
      integer(c_int) :: c_watch_next
    end function c_watch_next

    subroutine c_watch_cancel(watch) bind(c, name="h5depot_watch_cancel")
      import :: c_ptr
      type(c_ptr), value :: watch
    end subroutine c_watch_cancel

    subroutine c_watch_close(watch) bind(c, name="h5depot_watch_close")
      import :: c_ptr
      type(c_ptr), value :: watch
    end subroutine c_watch_close

    function c_errcode() bind(c, name="h5depot_errcode")
      import :: c_int
      integer(c_int) :: c_errcode
    end function c_errcode

    function c_errmsg() bind(c, name="h5depot_errmsg")
      import :: c_ptr
      type(c_ptr) :: c_errmsg
    end function c_errmsg

    function c_strlen(text) bind(c, name="strlen")
      import :: c_ptr, c_size_t
      type(c_ptr), value :: text
      integer(c_size_t) :: c_strlen
    end function c_strlen

    function c_set_fapl_remote(fapl_id, target, config) &
        bind(c, name="H5Pset_fapl_remote")
      import :: c_ptr, c_char, c_int, c_int64_t
      integer(c_int64_t), value :: fapl_id  ! hid_t
      character(kind=c_char), dimension(*), intent(in) :: target
      type(c_ptr), value :: config
      integer(c_int) :: c_set_fapl_remote
    end function c_set_fapl_remote
  end interface

contains

  ! A Fortran string as C wants it: without trailing blanks, NUL-ended.
  pure function c_string(text) result(terminated)
    character(len=*), intent(in) :: text
    character(kind=c_char, len=len_trim(text) + 1) :: terminated
    terminated = trim(text)//c_null_char
  end function c_string

  ! hdferr for a C result: 0 for H5DEPOT_OK, -1 otherwise.
  pure integer function status_of(result)
    integer(c_int), intent(in) :: result
    status_of = merge(0, -1, result == 0)
  end function status_of

  ! Connects to the h5depotd at `target` ("host:port" or "unix:/path";
  ! blank: H5DEPOT_SERVER, else 127.0.0.1:7878).
  subroutine h5depot_connect_f(target, client, hdferr)
    character(len=*), intent(in) :: target
    type(c_ptr), intent(out) :: client
    integer, intent(out) :: hdferr
    character(len=:), allocatable :: chosen
    integer :: length, status
    if (len_trim(target) > 0) then
      chosen = trim(target)
    else
      call get_environment_variable("H5DEPOT_SERVER", length=length, &
                                    status=status)
      if (status == 0 .and. length > 0) then
        allocate (character(len=length) :: chosen)
        call get_environment_variable("H5DEPOT_SERVER", value=chosen)
      else
        chosen = "127.0.0.1:7878"
      end if
    end if
    client = c_connect(c_string(chosen))
    hdferr = merge(0, -1, c_associated(client))
  end subroutine h5depot_connect_f

  ! Closes `client`; images fetched or opened stay usable.
  subroutine h5depot_disconnect_f(client)
    type(c_ptr), intent(inout) :: client
    if (c_associated(client)) call c_disconnect(client)
    client = c_null_ptr
  end subroutine h5depot_disconnect_f

  ! Pushes the image of `file_id`, an open file of the core, sec2 or stdio
  ! driver, as a new generation of `image_id`; the file stays open.
  subroutine h5depot_push_file_f(client, image_id, file_id, hdferr, generation)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: image_id
    integer(hid_t), intent(in) :: file_id
    integer, intent(out) :: hdferr
    integer(c_int64_t), intent(out), optional :: generation
    integer(c_int64_t) :: pushed
    hdferr = status_of(c_push_file(client, c_string(image_id), &
                                   int(file_id, c_int64_t), pushed))
    if (present(generation)) generation = pushed
  end subroutine h5depot_push_file_f

  ! Pushes `length` bytes at `buf` (h5fget_file_image_f's kind of buffer)
  ! as a new generation of `image_id`.
  subroutine h5depot_push_buffer_f(client, image_id, buf, length, hdferr, &
                                   generation)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: image_id
    type(c_ptr), intent(in) :: buf
    integer(c_size_t), intent(in) :: length
    integer, intent(out) :: hdferr
    integer(c_int64_t), intent(out), optional :: generation
    integer(c_int64_t) :: pushed
    hdferr = status_of(c_push_buffer(client, c_string(image_id), buf, length, &
                                     pushed))
    if (present(generation)) generation = pushed
  end subroutine h5depot_push_buffer_f

  ! Fetches the current generation of `image_id` into a new buffer, which
  ! the caller owns: free it with h5depot_free_f (or hand it to
  ! h5lt_open_file_image with H5LT_FILE_IMAGE_DONT_COPY).
  subroutine h5depot_fetch_f(client, image_id, buf, length, hdferr, generation)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: image_id
    type(c_ptr), intent(out) :: buf
    integer(c_size_t), intent(out) :: length
    integer, intent(out) :: hdferr
    integer(c_int64_t), intent(out), optional :: generation
    integer(c_int64_t) :: fetched
    hdferr = status_of(c_fetch(client, c_string(image_id), buf, length, &
                               fetched))
    if (present(generation)) generation = fetched
  end subroutine h5depot_fetch_f

  ! Frees a buffer from h5depot_fetch_f.
  subroutine h5depot_free_f(buf)
    type(c_ptr), intent(inout) :: buf
    call c_free(buf)
    buf = c_null_ptr
  end subroutine h5depot_free_f

  ! Fetches `image_id` and opens it as an HDF5 file in the fetched memory
  ! (nothing copied; HDF5 frees it when the file closes). `flags` is 0 or
  ! H5DEPOT_OPEN_RW (writable in memory). Close with h5fclose_f.
  subroutine h5depot_open_f(client, image_id, flags, file_id, hdferr)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: image_id
    integer, intent(in) :: flags
    integer(hid_t), intent(out) :: file_id
    integer, intent(out) :: hdferr
    file_id = int(c_open(client, c_string(image_id), int(flags, c_int)), hid_t)
    hdferr = merge(0, -1, file_id >= 0)
  end subroutine h5depot_open_f

  ! Waits up to `timeout_ms` milliseconds for `image_id` to exist
  ! (H5DEPOT_DEADLINE_EXCEEDED if it does not appear in time).
  subroutine h5depot_wait_f(client, image_id, timeout_ms, hdferr)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: image_id
    integer(c_int64_t), intent(in) :: timeout_ms
    integer, intent(out) :: hdferr
    hdferr = status_of(c_wait(client, c_string(image_id), timeout_ms))
  end subroutine h5depot_wait_f

  ! Describes the current generation of `image_id`.
  subroutine h5depot_stat_f(client, image_id, info, hdferr)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: image_id
    type(h5depot_image_info_t), intent(out) :: info
    integer, intent(out) :: hdferr
    hdferr = status_of(c_stat(client, c_string(image_id), info))
  end subroutine h5depot_stat_f

  ! Deletes `image_id` (H5DEPOT_NOT_FOUND if it does not exist).
  subroutine h5depot_delete_f(client, image_id, hdferr)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: image_id
    integer, intent(out) :: hdferr
    hdferr = status_of(c_delete(client, c_string(image_id)))
  end subroutine h5depot_delete_f

  ! Appends the image of `file_id` (an open HDF5 file of the core, sec2 or
  ! stdio driver) as the next step of `stream` (docs/STREAMS.md); `step`
  ! receives its number. A full stream that blocks waits up to 30 s.
  ! `step_buffer` .true.: the image is copied by HDF5 straight into one of
  ! the client's step buffers, the fast way for large steps on the
  ! server's host (h5depot_stream_append_file_buffered).
  subroutine h5depot_stream_append_f(client, stream, file_id, hdferr, step, &
                                     step_buffer)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: stream
    integer(hid_t), intent(in) :: file_id
    integer, intent(out) :: hdferr
    integer(c_int64_t), intent(out), optional :: step
    logical, intent(in), optional :: step_buffer
    integer(c_int64_t) :: appended
    logical :: buffered
    buffered = .false.
    if (present(step_buffer)) buffered = step_buffer
    if (buffered) then
      hdferr = status_of(c_stream_append_file_buffered( &
          client, c_string(stream), int(file_id, c_int64_t), &
          -1_c_int64_t, appended))
    else
      hdferr = status_of(c_stream_append_file(client, c_string(stream), &
                                              int(file_id, c_int64_t), &
                                              -1_c_int64_t, appended))
    end if
    if (present(step)) step = appended
  end subroutine h5depot_stream_append_f

  ! Takes the next step of `stream` for reader group `group`, waiting up to
  ! `wait_ms` milliseconds, and opens it as an HDF5 file in the memory it
  ! arrived in (close with h5fclose_f); `step` receives its number. hdferr
  ! -1 with H5DEPOT_DEADLINE_EXCEEDED if none came, H5DEPOT_OUT_OF_RANGE
  ! once the stream is finished. Acknowledge it with h5depot_stream_ack_f.
  subroutine h5depot_stream_next_f(client, stream, group, wait_ms, file_id, &
                                   step, hdferr)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: stream, group
    integer(c_int64_t), intent(in) :: wait_ms
    integer(hid_t), intent(out) :: file_id
    integer(c_int64_t), intent(out) :: step
    integer, intent(out) :: hdferr
    step = -1
    file_id = int(c_stream_open_next(client, c_string(stream), &
                                     c_string(group), wait_ms, 0_c_int, step), &
                  hid_t)
    hdferr = merge(0, -1, file_id >= 0)
  end subroutine h5depot_stream_next_f

  ! Done with `step` of `group`: the group will not get it again.
  subroutine h5depot_stream_ack_f(client, stream, group, step, hdferr)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: stream, group
    integer(c_int64_t), intent(in) :: step
    integer, intent(out) :: hdferr
    hdferr = status_of(c_stream_ack(client, c_string(stream), c_string(group), &
                                    step))
  end subroutine h5depot_stream_ack_f

  ! Ends `stream`: readers get the steps appended, then the end.
  subroutine h5depot_stream_finish_f(client, stream, hdferr)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: stream
    integer, intent(out) :: hdferr
    hdferr = status_of(c_stream_finish(client, c_string(stream)))
  end subroutine h5depot_stream_finish_f

  ! Deletes `stream` (its steps and reader groups), or with `group` only
  ! that reader group; hdferr -1 with H5DEPOT_NOT_FOUND if there is none.
  subroutine h5depot_stream_delete_f(client, stream, hdferr, group)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: stream
    integer, intent(out) :: hdferr
    character(len=*), intent(in), optional :: group
    character(kind=c_char), dimension(:), allocatable, target :: name
    integer :: i
    if (present(group)) then
      allocate(name(len_trim(group) + 1))
      do i = 1, len_trim(group)
        name(i) = group(i:i)
      end do
      name(len_trim(group) + 1) = c_null_char
      hdferr = status_of(c_stream_delete(client, c_string(stream), &
                                         c_loc(name)))
    else
      hdferr = status_of(c_stream_delete(client, c_string(stream), &
                                         c_null_ptr))
    end if
  end subroutine h5depot_stream_delete_f

  ! Starts watching the changes to the images whose ids start with `prefix`
  ! (blank: every image): from now on, or with `after`, every change after
  ! that sequence the server still keeps (H5DEPOT_EVENT_LOST first for
  ! those it does not). Returns once the watch runs on the server, so
  ! nothing done after it is missed. Close `watch` with
  ! h5depot_watch_close_f before disconnecting the client.
  subroutine h5depot_watch_start_f(client, prefix, watch, hdferr, after)
    type(c_ptr), intent(in) :: client
    character(len=*), intent(in) :: prefix
    type(c_ptr), intent(out) :: watch
    integer, intent(out) :: hdferr
    integer(c_int64_t), intent(in), optional :: after
    integer(c_int64_t), target :: sequence
    if (present(after)) then
      sequence = after
      hdferr = status_of(c_watch_start(client, c_string(prefix), &
                                       c_loc(sequence), watch))
    else
      hdferr = status_of(c_watch_start(client, c_string(prefix), &
                                       c_null_ptr, watch))
    end if
  end subroutine h5depot_watch_start_f

  ! The next change, waiting up to `timeout_ms` milliseconds (negative: for
  ! ever). `image_id` receives the image's id, blank-padded (blank for
  ! H5DEPOT_EVENT_LOST); `id_length` its length, which is more than
  ! len(image_id) when the id had to be cut. hdferr -1 with
  ! H5DEPOT_DEADLINE_EXCEEDED if nothing changed in time (the watch goes
  ! on), H5DEPOT_UNAVAILABLE once the server stops or the connection
  ! breaks, H5DEPOT_CANCELLED after h5depot_watch_cancel_f.
  subroutine h5depot_watch_next_f(watch, timeout_ms, event, image_id, &
                                  hdferr, id_length)
    type(c_ptr), intent(in) :: watch
    integer(c_int64_t), intent(in) :: timeout_ms
    type(h5depot_event_t), intent(out) :: event
    character(len=*), intent(out) :: image_id
    integer, intent(out) :: hdferr
    integer, intent(out), optional :: id_length
    type(c_event) :: raw
    character(kind=c_char), dimension(:), pointer :: text
    integer :: length, i
    image_id = ""
    length = 0
    hdferr = status_of(c_watch_next(watch, timeout_ms, raw))
    if (hdferr == 0) then
      event%kind = int(raw%kind)
      event%sequence = raw%sequence
      event%generation = raw%generation
      event%size = raw%size
      event%replaced_generation = raw%replaced_generation
      event%time_unix_micros = raw%time_unix_micros
      event%first_lost_sequence = raw%first_lost_sequence
      if (c_associated(raw%image_id)) then
        length = int(c_strlen(raw%image_id))
        call c_f_pointer(raw%image_id, text, [length])
        do i = 1, min(length, len(image_id))
          image_id(i:i) = text(i)
        end do
      end if
    end if
    if (present(id_length)) id_length = length
  end subroutine h5depot_watch_next_f

  ! Ends the watch, from any thread: an h5depot_watch_next_f waiting on
  ! another thread returns with H5DEPOT_CANCELLED.
  subroutine h5depot_watch_cancel_f(watch)
    type(c_ptr), intent(in) :: watch
    call c_watch_cancel(watch)
  end subroutine h5depot_watch_cancel_f

  ! Ends the watch and frees it; `watch` is C_NULL_PTR afterwards. Not while
  ! another thread is in h5depot_watch_next_f on it.
  subroutine h5depot_watch_close_f(watch)
    type(c_ptr), intent(inout) :: watch
    call c_watch_close(watch)
    watch = c_null_ptr
  end subroutine h5depot_watch_close_f

  ! The code of the calling thread's last failure (H5DEPOT_OK if none).
  subroutine h5depot_errcode_f(code)
    integer, intent(out) :: code
    code = int(c_errcode())
  end subroutine h5depot_errcode_f

  ! The message of the calling thread's last failure ("" if none), cut to
  ! len(message).
  subroutine h5depot_errmsg_f(message)
    character(len=*), intent(out) :: message
    type(c_ptr) :: text
    character(kind=c_char), pointer :: chars(:)
    integer :: i, length
    message = ""
    text = c_errmsg()
    if (.not. c_associated(text)) return
    length = int(c_strlen(text))
    call c_f_pointer(text, chars, [length])
    do i = 1, min(length, len(message))
      message(i:i) = chars(i)
    end do
  end subroutine h5depot_errmsg_f

  ! Makes `fapl_id` use the remote driver with the server at `target`:
  ! h5fopen_f and h5fcreate_f then take an image id as the file name
  ! (docs/REMOTE_DRIVER.md). The driver's defaults; the token and TLS
  ! settings come from the environment (H5DEPOT_TOKEN, H5DEPOT_TLS_*).
  subroutine h5pset_fapl_remote_f(fapl_id, target, hdferr)
    integer(hid_t), intent(in) :: fapl_id
    character(len=*), intent(in) :: target
    integer, intent(out) :: hdferr
    hdferr = merge(0, -1, c_set_fapl_remote(int(fapl_id, c_int64_t), &
                                            c_string(target), c_null_ptr) >= 0)
  end subroutine h5pset_fapl_remote_f
end module h5depot
