# An option that leaves tests out does what it says (cmake -P script): a scratch configure of the
# release preset with OPTION=ON registers the tests it governs (names matching PATTERN, exactly
# COUNT of them); the same configure with OPTION=OFF registers none of them and every other test
# still. Two options use it (tests/consumers/CMakeLists.txt):
#   BITGRAD_FIXED_COMPILER_TESTS  the tests that call g++ / clang++-14 with their own flags
#   BITGRAD_TRAINING_TESTS        the unit tests that train whole networks (batches train, act)
# In: SOURCE_DIR (bitgrad), WORK (scratch folder), GENERATOR, COMPILER, CTEST, OPTION, PATTERN,
# COUNT (the number of tests the option governs when ON, or "at least N" as ">=N").

# tests_of(VALUE OUT_GOVERNED OUT_OTHERS): configures with OPTION=VALUE and lists the registered
# tests, split into the ones PATTERN matches and the others.
function(tests_of value out_governed out_others)
  execute_process(
    COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}" --preset release -B "${WORK}" -G "${GENERATOR}"
            -DCMAKE_CXX_COMPILER=${COMPILER} -D${OPTION}=${value}
    RESULT_VARIABLE rc OUTPUT_QUIET)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "configuring the release preset with ${OPTION}=${value} failed (${rc})")
  endif()
  execute_process(COMMAND ${CTEST} -N WORKING_DIRECTORY "${WORK}" OUTPUT_VARIABLE listing
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "ctest -N in ${WORK} failed (${rc})")
  endif()
  string(REGEX MATCHALL "Test +#[0-9]+: [^\n]+" lines "${listing}")
  set(governed "")
  set(others "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^Test +#[0-9]+: " "" name "${line}")
    if(name MATCHES "${PATTERN}")
      list(APPEND governed "${name}")
    else()
      list(APPEND others "${name}")
    endif()
  endforeach()
  set(${out_governed} "${governed}" PARENT_SCOPE)
  set(${out_others} "${others}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK}")
tests_of(ON governed_on others_on)
tests_of(OFF governed_off others_off)
list(LENGTH governed_on n_on)
list(LENGTH others_on n_others_on)
if(COUNT MATCHES "^>=([0-9]+)$")
  if(n_on LESS CMAKE_MATCH_1)
    message(FATAL_ERROR "${OPTION}=ON: expected at least ${CMAKE_MATCH_1} tests matching ${PATTERN}, found ${n_on}: ${governed_on}")
  endif()
elseif(NOT n_on EQUAL COUNT)
  message(FATAL_ERROR "${OPTION}=ON: expected ${COUNT} tests matching ${PATTERN}, found ${n_on}: ${governed_on}")
endif()
if(governed_off)
  message(FATAL_ERROR "${OPTION}=OFF: these tests are still registered: ${governed_off}")
endif()
if(NOT others_off STREQUAL others_on)
  message(FATAL_ERROR "${OPTION}=OFF changed other tests: ON ${n_others_on} tests (${others_on}), OFF: ${others_off}")
endif()
message(STATUS "${OPTION}=ON: ${n_on} tests (${governed_on}) beside ${n_others_on} others; OFF: none of them, the same ${n_others_on} others")
