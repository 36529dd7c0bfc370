# BITGRAD_FIXED_COMPILER_TESTS does what it says (cmake -P script): a scratch configure of the
# release preset registers the tests that call g++ / clang++-14 with their own flags; the same
# configure with the option OFF (what the asan preset sets) registers none of them and every
# other test still.
# In: SOURCE_DIR (bitgrad), WORK (scratch folder), GENERATOR, COMPILER, CTEST.
set(fixed_pattern "^(consumer\\.plain_include\\.|build\\.gcc_O3_warnings|build\\.output_rounding\\.)")

# tests_of(VALUE OUT_FIXED OUT_OTHERS): configures with BITGRAD_FIXED_COMPILER_TESTS=VALUE and
# lists the registered tests, split into the fixed-compiler ones and the others.
function(tests_of value out_fixed out_others)
  execute_process(
    COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}" --preset release -B "${WORK}" -G "${GENERATOR}"
            -DCMAKE_CXX_COMPILER=${COMPILER} -DBITGRAD_FIXED_COMPILER_TESTS=${value}
    RESULT_VARIABLE rc OUTPUT_QUIET)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "configuring the release preset with BITGRAD_FIXED_COMPILER_TESTS=${value} failed (${rc})")
  endif()
  execute_process(COMMAND ${CTEST} -N WORKING_DIRECTORY "${WORK}" OUTPUT_VARIABLE listing
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "ctest -N in ${WORK} failed (${rc})")
  endif()
  string(REGEX MATCHALL "Test +#[0-9]+: [^\n]+" lines "${listing}")
  set(fixed "")
  set(others "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^Test +#[0-9]+: " "" name "${line}")
    if(name MATCHES "${fixed_pattern}")
      list(APPEND fixed "${name}")
    else()
      list(APPEND others "${name}")
    endif()
  endforeach()
  set(${out_fixed} "${fixed}" PARENT_SCOPE)
  set(${out_others} "${others}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK}")
tests_of(ON fixed_on others_on)
tests_of(OFF fixed_off others_off)
list(LENGTH fixed_on n_fixed_on)
list(LENGTH others_on n_others_on)
if(n_fixed_on LESS 2)
  message(FATAL_ERROR "with the option ON, expected the fixed-compiler tests (g++ at least), found: ${fixed_on}")
endif()
if(fixed_off)
  message(FATAL_ERROR "with the option OFF, these fixed-compiler tests are still registered: ${fixed_off}")
endif()
if(NOT others_off STREQUAL others_on)
  message(FATAL_ERROR "the option OFF changed other tests: ON ${n_others_on} tests (${others_on}), OFF: ${others_off}")
endif()
message(STATUS "option ON: ${n_fixed_on} fixed-compiler tests (${fixed_on}) beside ${n_others_on} others; OFF: none of them, the same ${n_others_on} others")
