# Configures, builds and runs a consumer project (cmake -P script).
# In: SOURCE, BINARY, EXTRA (one extra -D argument), COMPILER, optional OPENMP (ON/OFF: passed
# as -DBITGRAD_OPENMP to a consumer that configures bitgrad itself), optional FORBIDDEN_SOURCE
# (a path that must not appear in the consumer's build: proves it used the installed copy),
# optional EXPECT_OPENMP (ON/OFF: the consumer must report OpenMP on/off, i.e. the target's
# OpenMP flags reached it, or did not).
file(REMOVE_RECURSE "${BINARY}")
set(openmp_arg "")
if(NOT "${OPENMP}" STREQUAL "")
  set(openmp_arg "-DBITGRAD_OPENMP=${OPENMP}")
endif()
execute_process(
  COMMAND ${CMAKE_COMMAND} -S "${SOURCE}" -B "${BINARY}" "${EXTRA}" ${openmp_arg}
          -DCMAKE_CXX_COMPILER=${COMPILER} -DCMAKE_BUILD_TYPE=Release
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring ${SOURCE} failed (${rc})")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build "${BINARY}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building ${SOURCE} failed (${rc})")
endif()
if(FORBIDDEN_SOURCE)
  file(GLOB_RECURSE flag_files "${BINARY}/CMakeFiles/*flags.make" "${BINARY}/build.ninja")
  foreach(f IN LISTS flag_files)
    file(READ "${f}" text)
    string(FIND "${text}" "${FORBIDDEN_SOURCE}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "${f} refers to the source tree ${FORBIDDEN_SOURCE}: not an installed build")
    endif()
  endforeach()
endif()
execute_process(COMMAND "${BINARY}/consumer" RESULT_VARIABLE rc OUTPUT_VARIABLE out)
message(STATUS "${out}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "running the consumer failed (${rc})")
endif()
include("${CMAKE_CURRENT_LIST_DIR}/expect_openmp.cmake")
bitgrad_expect_openmp("${out}" "${EXPECT_OPENMP}")
