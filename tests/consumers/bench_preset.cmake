# Configures the `bench` preset (-O3 -march=native) into a scratch folder and fails if any of
# bitgrad's own targets would compile with -Werror (cmake -P script): GCC's optimiser warnings
# depend on the CPU the compiler targets, so `make bench` must not stop on them.
# In: SOURCE_DIR (bitgrad), WORK (scratch folder), GENERATOR, COMPILER.
file(REMOVE_RECURSE "${WORK}")
execute_process(
  COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}" --preset bench -B "${WORK}"
          -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${COMPILER}
  RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the bench preset failed (${rc})")
endif()
file(READ "${WORK}/compile_commands.json" commands)
foreach(want -O3 -march=native -Wall examples/inspect_model.cpp benchmarks/bench_inference.cpp)
  string(FIND "${commands}" "${want}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "the bench preset's compile commands lack ${want}")
  endif()
endforeach()
string(FIND "${commands}" "-Werror" at)
if(NOT at EQUAL -1)
  message(FATAL_ERROR "the bench preset compiles bitgrad's own targets with -Werror")
endif()
