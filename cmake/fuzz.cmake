# libFuzzer targets: tests/fuzz/fuzz_<name>.c, each exporting LLVMFuzzerTestOneInput.
# Configure with CC=clang -DLORELEY_FUZZ=ON; run e.g. build/fuzz_archive_blob -max_total_time=60.
if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "LORELEY_FUZZ needs clang: CC=clang cmake -DLORELEY_FUZZ=ON ...")
endif()
file(GLOB LORELEY_FUZZERS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_*.c)
foreach(src ${LORELEY_FUZZERS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_compile_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(${name} PRIVATE loreley_core)
endforeach()
