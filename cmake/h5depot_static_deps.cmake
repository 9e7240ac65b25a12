# Short-lived programs start faster with gRPC, Protocol Buffers and Abseil
# linked in statically.
#
# Loading them as shared libraries is most of what `h5depot --version` or a
# small `h5depot get` costs: 55 objects and about 15,000 symbol relocations
# before main(), against 8 objects for a program that links them in
# (docs/PERFORMANCE.md, "The command line"). Only executables that nothing
# else links into take them statically: a library (libh5depot, the remote
# driver) keeps them shared, so that an application using gRPC itself has
# one gRPC in its process. OpenSSL stays shared, for its security updates
# to reach the program without a rebuild; so do xxHash (Debian's archive
# lacks its CPU dispatch) and the C and C++ runtimes.
#
# The static archives are Debian's own (libgrpc++-dev, libprotobuf-dev,
# libabsl-dev); pkg-config names what each needs.
option(H5DEPOT_STATIC_CLI
       "Link gRPC, Protocol Buffers and Abseil into the h5depot CLI statically"
       ON)

# The Abseil components the project's own libraries use; gRPC's come from
# its pkg-config file.
set(_h5depot_static_modules grpc++ protobuf absl_base absl_flat_hash_map
    absl_status absl_statusor absl_str_format absl_strings
    absl_synchronization absl_time)

# Links `target`, an executable, against gRPC, Protocol Buffers and Abseil
# statically (when H5DEPOT_STATIC_CLI is on). Call it after the target's own
# target_link_libraries, naming the project's static libraries it links, so
# that they come first on the link line: every symbol they need is then
# found in the archives, and --as-needed drops the shared libraries that
# their usage requirements still list.
function(h5depot_link_third_party_statically target)
  if(NOT H5DEPOT_STATIC_CLI OR H5DEPOT_GRPC_FREE_ONLY)
    return()
  endif()
  pkg_check_modules(H5DEPOT_STATIC_DEPS REQUIRED ${_h5depot_static_modules})
  set(static_libraries)
  foreach(library IN LISTS H5DEPOT_STATIC_DEPS_STATIC_LIBRARIES)
    # Kept shared (above), or system libraries.
    if(NOT library MATCHES "^(ssl|crypto|xxhash|dl|rt|m|atomic|pthread)$")
      list(APPEND static_libraries -l${library})
    endif()
  endforeach()
  list(REMOVE_DUPLICATES static_libraries)
  target_link_options(${target} PRIVATE LINKER:--as-needed)
  target_link_libraries(${target} PRIVATE ${ARGN}
    "-Wl,--push-state,-Bstatic,--start-group" ${static_libraries}
    "-Wl,--end-group,--pop-state")
endfunction()
