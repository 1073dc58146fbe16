# Test registration. Adding a test is adding a file:
#   tests/c/test_<name>.c      a pure-C unit test program (links loreley_core), exit 0 = pass
#   tests/lua/test_<name>.lua  run as `loreley-host --once tests/lua/test_<name>.lua`
# A Lua test may declare CTest properties on a line of its own near the top:
#   -- ctest: labels=pg;redis timeout=300 serial
# Labels in use: unit, cli, pg, redis, git, e2e, fault, slow.

file(GLOB LORELEY_C_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/c/test_*.c)
foreach(src ${LORELEY_C_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/tests/c)
  target_link_libraries(${name} PRIVATE loreley_core)
  target_compile_definitions(${name} PRIVATE
    LORELEY_SOURCE_DIR="${CMAKE_SOURCE_DIR}" LORELEY_BINARY_DIR="${CMAKE_BINARY_DIR}")
  add_test(NAME c_${name} COMMAND ${name} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(c_${name} PROPERTIES LABELS "unit" TIMEOUT 300)
endforeach()

file(GLOB LORELEY_LUA_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/lua/test_*.lua)
foreach(src ${LORELEY_LUA_TESTS})
  get_filename_component(name ${src} NAME_WE)
  set(labels "unit")
  set(timeout 300)
  set(serial FALSE)
  file(STRINGS ${src} directive LIMIT_COUNT 1 REGEX "^-- ctest:")
  if(directive)
    if(directive MATCHES "labels=([^ ]+)")
      set(labels "${CMAKE_MATCH_1}")
    endif()
    if(directive MATCHES "timeout=([0-9]+)")
      set(timeout "${CMAKE_MATCH_1}")
    endif()
    if(directive MATCHES " serial")
      set(serial TRUE)
    endif()
  endif()
  add_test(NAME lua_${name} COMMAND loreley-host --once ${src}
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(lua_${name} PROPERTIES LABELS ${labels} TIMEOUT ${timeout}
    RUN_SERIAL ${serial} SKIP_RETURN_CODE 77
    ENVIRONMENT "LORELEY_HOST=$<TARGET_FILE:loreley-host>;LORELEY_SOURCE_DIR=${CMAKE_SOURCE_DIR};LORELEY_BINARY_DIR=${CMAKE_BINARY_DIR};LUA_PATH=${CMAKE_SOURCE_DIR}/tests/lua/?.lua\\;\\;")
endforeach()

# Shell tests: tests/sh/test_<name>.sh BUILD_DIR SOURCE_DIR
file(GLOB LORELEY_SH_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/sh/test_*.sh)
foreach(src ${LORELEY_SH_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_test(NAME sh_${name} COMMAND bash ${src} ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(sh_${name} PROPERTIES LABELS "unit;cli" TIMEOUT 120)
endforeach()
