# Benchmarks: bench/bench_<name>.c is a program; bench/*.lua scripts run with
# loreley-host --once. None of them is a test: run them by hand (bench/README.md).
file(GLOB LORELEY_BENCHES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/bench/bench_*.c)
foreach(src ${LORELEY_BENCHES})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_link_libraries(${name} PRIVATE loreley_core)
endforeach()
