# Installs bitgrad with the `install` preset while doctest, Google Benchmark and CLI11 cannot be
# found (CMAKE_DISABLE_FIND_PACKAGE_*), then builds and runs the find_package consumer against
# that install (cmake -P script): installing must need only the library's own dependencies.
# In: SOURCE_DIR (bitgrad), WORK (scratch folder), GENERATOR, COMPILER, CONSUMER_SOURCE (the
# find_package consumer project), OPENMP (the BITGRAD_OPENMP to install with), EXPECT_OPENMP.
file(REMOVE_RECURSE "${WORK}")
set(openmp_arg "")
if(NOT "${OPENMP}" STREQUAL "")
  set(openmp_arg "-DBITGRAD_OPENMP=${OPENMP}")
endif()
execute_process(
  COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}" --preset install -B "${WORK}/build"
          -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${COMPILER}
          -DCMAKE_DISABLE_FIND_PACKAGE_doctest=ON
          -DCMAKE_DISABLE_FIND_PACKAGE_benchmark=ON
          -DCMAKE_DISABLE_FIND_PACKAGE_CLI11=ON
          ${openmp_arg}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring bitgrad with the install preset failed (${rc}) while "
                      "doctest, benchmark and CLI11 were not findable")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --install "${WORK}/build" --prefix "${WORK}/prefix"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install of the install preset failed (${rc})")
endif()
foreach(f include/bitgrad/bitgrad.hpp share/cmake/bitgrad/bitgradConfig.cmake
          share/pkgconfig/bitgrad.pc)
  if(NOT EXISTS "${WORK}/prefix/${f}")
    message(FATAL_ERROR "the install preset did not install ${f}")
  endif()
endforeach()
set(SOURCE "${CONSUMER_SOURCE}")
set(BINARY "${WORK}/consumer")
set(EXTRA "-DCMAKE_PREFIX_PATH=${WORK}/prefix")
set(FORBIDDEN_SOURCE "${SOURCE_DIR}/include")
set(OPENMP "")  # the consumer only finds the install; the install decided OpenMP
include("${CMAKE_CURRENT_LIST_DIR}/build_and_run.cmake")
