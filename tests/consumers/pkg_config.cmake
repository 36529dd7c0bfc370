# Builds and runs the consumer with nothing but `pkg-config --cflags --libs bitgrad` against an
# installed copy of bitgrad that was moved after `cmake --install` (cmake -P script).
# In: PREFIX (the install prefix), WORK (scratch folder), COMPILER, CONSUMER (the .cpp),
# PKG_CONFIG, FORBIDDEN_SOURCE (bitgrad's source include folder: must not be used),
# EXPECT_OPENMP (ON/OFF: how bitgrad was configured).
include("${CMAKE_CURRENT_LIST_DIR}/expect_openmp.cmake")
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}")
# A copy of the installed tree somewhere else: bitgrad.pc must not depend on where it was put.
file(COPY "${PREFIX}/" DESTINATION "${WORK}/moved")
set(pc_dir "${WORK}/moved/share/pkgconfig")
if(NOT EXISTS "${pc_dir}/bitgrad.pc")
  message(FATAL_ERROR "no bitgrad.pc under ${pc_dir}")
endif()
set(ENV{PKG_CONFIG_PATH} "${pc_dir}")

execute_process(COMMAND "${PKG_CONFIG}" --variable=includedir bitgrad
  OUTPUT_VARIABLE includedir OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config --variable=includedir bitgrad failed (${rc})")
endif()
file(REAL_PATH "${includedir}" includedir_real)
file(REAL_PATH "${WORK}/moved/include" want_real)
if(NOT includedir_real STREQUAL want_real)
  message(FATAL_ERROR "bitgrad.pc's includedir is ${includedir}, expected the moved tree's "
                      "${want_real}")
endif()

execute_process(COMMAND "${PKG_CONFIG}" --cflags --libs bitgrad
  OUTPUT_VARIABLE flags OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config --cflags --libs bitgrad failed (${rc})")
endif()
message(STATUS "pkg-config --cflags --libs bitgrad: ${flags}")
string(FIND "${flags}" "${FORBIDDEN_SOURCE}" at)
if(NOT at EQUAL -1)
  message(FATAL_ERROR "the flags refer to the source tree ${FORBIDDEN_SOURCE}")
endif()

separate_arguments(flag_list UNIX_COMMAND "${flags}")
execute_process(
  COMMAND "${COMPILER}" -O2 "${CONSUMER}" ${flag_list} -o "${WORK}/consumer"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "compiling the consumer with the pkg-config flags failed (${rc})")
endif()
execute_process(COMMAND "${WORK}/consumer" RESULT_VARIABLE rc OUTPUT_VARIABLE out)
message(STATUS "${out}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "running the consumer failed (${rc})")
endif()
bitgrad_expect_openmp("${out}" "${EXPECT_OPENMP}")
