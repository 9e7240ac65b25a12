# Warning and sanitizer flags for the project's own targets only; generated
# protobuf code is compiled without -Werror (its warnings are not ours).
function(h5depot_target_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic
      -Wshadow $<$<COMPILE_LANGUAGE:CXX>:-Wnon-virtual-dtor> -Wcast-align
      -Wformat=2)
  if(H5DEPOT_THREAD_SAFETY)
    # Every lock is an annotated capability (docs/ARCHITECTURE.md, "Locks"):
    # clang proves each guarded member is touched only under its lock.
    target_compile_options(${target} PRIVATE -Wthread-safety)
  endif()
  if(H5DEPOT_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

if(H5DEPOT_SANITIZE)
  list(JOIN H5DEPOT_SANITIZE "," _h5depot_sanitizers)
  add_compile_options(-fsanitize=${_h5depot_sanitizers} -fno-omit-frame-pointer
                      -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${_h5depot_sanitizers})
endif()

# The fuzz preset: every library compiled with libFuzzer's coverage
# instrumentation, ASan and UBSan; only the fuzz targets link libFuzzer
# itself (fuzz/CMakeLists.txt).
if(H5DEPOT_FUZZ)
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined
                      -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=address,undefined)
endif()
