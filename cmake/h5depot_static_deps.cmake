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
# to reach the program without a rebuild; so do xxHash (Debian's static
# archive lacks its CPU dispatch) and the C library (its name service
# modules are loaded at run time, and must match it).
#
# The C++ runtime and libgcc come in statically too, outside sanitizer and
# fuzz builds (whose runtime replaces operator new and delete, which a static
# libstdc++ would define first): the dynamic loader then searches only C
# libraries (the C library, OpenSSL, xxHash), and a small `h5depot get`
# starts about 0.5 ms sooner (docs/PERFORMANCE.md). No C++ object crosses
# into those libraries.
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

# Links `target`, an executable, against gRPC, Protocol Buffers, Abseil and
# (outside sanitizer and fuzz builds) the C++ runtime statically, when
# H5DEPOT_STATIC_CLI is on. Call it after the target's own
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
  if(NOT H5DEPOT_SANITIZE AND NOT H5DEPOT_FUZZ)
    target_link_options(${target} PRIVATE -static-libstdc++ -static-libgcc)
  endif()
  target_link_libraries(${target} PRIVATE ${ARGN}
    "-Wl,--push-state,-Bstatic,--start-group" ${static_libraries}
    "-Wl,--end-group,--pop-state")
endfunction()
