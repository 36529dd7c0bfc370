# BITGRAD_TEST_OPTIMIZATION does what it says (cmake -P script): a scratch configure of the
# release preset with a distinctive value (-Og) puts it after the build type's -O2 in every
# compile command under tests/ (unit and MPI tests, probes, fuzz replays, interop tools) and in
# none under examples/ or studies/. The compile-fail cases (-fsyntax-only: no code generated,
# no optimisation to choose) are left out.
# In: SOURCE_DIR (bitgrad), WORK (scratch folder), GENERATOR, COMPILER.
file(REMOVE_RECURSE "${WORK}")
execute_process(
  COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}" --preset release -B "${WORK}"
          -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${COMPILER} -DBITGRAD_TEST_OPTIMIZATION=-Og
  RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the release preset with BITGRAD_TEST_OPTIMIZATION=-Og failed (${rc})")
endif()
file(READ "${WORK}/compile_commands.json" commands)
string(JSON count LENGTH "${commands}")
math(EXPR last "${count} - 1")
set(tests 0)
set(others 0)
foreach(i RANGE ${last})
  string(JSON dir GET "${commands}" ${i} directory)
  string(JSON file GET "${commands}" ${i} file)
  string(JSON command GET "${commands}" ${i} command)
  string(FIND "${command}" " -fsyntax-only " syntax_only)
  if(NOT syntax_only EQUAL -1)
    continue()
  endif()
  string(FIND "${command}" " -O2 " at_o2)
  string(FIND "${command}" " -Og " at_og)
  string(FIND "${dir}" "${WORK}/tests" in_tests)
  string(FIND "${dir}" "${WORK}/examples" in_examples)
  string(FIND "${dir}" "${WORK}/studies" in_studies)
  if(in_tests EQUAL 0)
    math(EXPR tests "${tests} + 1")
    if(at_og EQUAL -1 OR at_o2 EQUAL -1 OR at_og LESS at_o2)
      message(FATAL_ERROR "${file}: a test program's command lacks -O2 ... -Og: ${command}")
    endif()
  elseif(in_examples EQUAL 0 OR in_studies EQUAL 0)
    math(EXPR others "${others} + 1")
    if(NOT at_og EQUAL -1)
      message(FATAL_ERROR "${file}: an example or study compiles with the test flags: ${command}")
    endif()
  endif()
endforeach()
if(tests LESS 10 OR others LESS 3)
  message(FATAL_ERROR "expected >= 10 test and >= 3 example/study compile commands, found ${tests} and ${others}")
endif()
message(STATUS "-Og in all ${tests} test compile commands, in none of ${others} example/study ones")
