# BITGRAD_TEST_OPTIMIZATION and BITGRAD_RUNNER_OPTIMIZATION do what they say (cmake -P script):
# a scratch configure of the release preset with distinctive values (-Og, -Os) puts -Og after the
# build type's -O2 in every compile command under tests/ (unit and MPI tests, probes, fuzz
# replays, interop tools) and in none under examples/ or studies/, and -Os after -O2 in exactly
# the whole-network runner TUs (examples/common/train_*.cpp, fashion_mnist's run*.cpp, the Pareto
# study's main.cpp and run_resnet20.cpp) and in no other. The compile-fail cases (-fsyntax-only:
# no code generated, no optimisation to choose) are left out.
# In: SOURCE_DIR (bitgrad), WORK (scratch folder), GENERATOR, COMPILER.
file(REMOVE_RECURSE "${WORK}")
execute_process(
  COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}" --preset release -B "${WORK}"
          -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${COMPILER} -DBITGRAD_TEST_OPTIMIZATION=-Og
          -DBITGRAD_RUNNER_OPTIMIZATION=-Os
  RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the release preset with BITGRAD_TEST_OPTIMIZATION=-Og and BITGRAD_RUNNER_OPTIMIZATION=-Os failed (${rc})")
endif()
file(READ "${WORK}/compile_commands.json" commands)
string(JSON count LENGTH "${commands}")
math(EXPR last "${count} - 1")
set(tests 0)
set(others 0)
set(runners 0)
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
  string(FIND "${command}" " -Os " at_os)
  string(FIND "${dir}" "${WORK}/tests" in_tests)
  string(FIND "${dir}" "${WORK}/examples" in_examples)
  string(FIND "${dir}" "${WORK}/studies" in_studies)
  set(runner OFF)
  if(file MATCHES "/examples/common/train_[a-z0-9_]+\\.cpp$"
     OR file MATCHES "/examples/fashion_mnist/run(_resnet20)?\\.cpp$"
     OR file MATCHES "/studies/pareto/(main|run_resnet20)\\.cpp$")
    set(runner ON)
  endif()
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
  if(runner)
    math(EXPR runners "${runners} + 1")
    if(at_os EQUAL -1 OR at_o2 EQUAL -1 OR at_os LESS at_o2)
      message(FATAL_ERROR "${file}: a runner TU's command lacks -O2 ... -Os: ${command}")
    endif()
  elseif(NOT at_os EQUAL -1)
    message(FATAL_ERROR "${file}: compiles with the runner flags but is no runner TU: ${command}")
  endif()
endforeach()
if(tests LESS 10 OR others LESS 3 OR NOT runners EQUAL 7)
  message(FATAL_ERROR "expected >= 10 test, >= 3 example/study and 7 runner compile commands, found ${tests}, ${others} and ${runners}")
endif()
message(STATUS "-Og in all ${tests} test compile commands, in none of ${others} example/study ones; -Os in the ${runners} runner TUs only")
