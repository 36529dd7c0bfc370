# Replays of the fuzz targets in the normal test build (included from tests/CMakeLists.txt):
# for every tests/fuzz/fuzz_<target>.cpp, an executable fuzz_replay_<target> (the target's
# LLVMFuzzerTestOneInput + replay_main.cpp, no libFuzzer) and a ctest test fuzz_replay.<target>
# over tests/fuzz/corpus/<target>/ and tests/fuzz/regressions/<target>/ (whichever exist).
# A crash found by fuzzing becomes a regression test by saving its input in regressions/.
#
# Also the seed-corpus generator make_seed_corpus (see tests/fuzz/make_seed_corpus.cpp).
set(_bitgrad_fuzz_dir "${CMAKE_CURRENT_LIST_DIR}")

file(GLOB bitgrad_fuzz_sources CONFIGURE_DEPENDS "${_bitgrad_fuzz_dir}/fuzz_*.cpp")
foreach(source IN LISTS bitgrad_fuzz_sources)
  get_filename_component(name "${source}" NAME_WE)
  string(REGEX REPLACE "^fuzz_" "" target "${name}")
  set(inputs "")
  foreach(dir corpus/${target} regressions/${target})
    if(EXISTS "${_bitgrad_fuzz_dir}/${dir}")
      list(APPEND inputs "${_bitgrad_fuzz_dir}/${dir}")
    endif()
  endforeach()
  if(NOT inputs)
    message(WARNING "fuzz target ${target} has no corpus/${target} or regressions/${target}")
    continue()
  endif()
  add_executable(fuzz_replay_${target} "${source}" "${_bitgrad_fuzz_dir}/replay_main.cpp")
  target_link_libraries(fuzz_replay_${target} PRIVATE bitgrad::bitgrad bitgrad_warnings
    bitgrad_test_optimization)
  # As in the fuzz build (tests/fuzz/CMakeLists.txt), so a crash input replays the same way.
  target_compile_definitions(fuzz_replay_${target} PRIVATE FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION)
  add_test(NAME fuzz_replay.${target} COMMAND fuzz_replay_${target} ${inputs})
  set_tests_properties(fuzz_replay.${target} PROPERTIES LABELS fuzz_replay)
endforeach()

add_executable(make_seed_corpus "${_bitgrad_fuzz_dir}/make_seed_corpus.cpp")
target_link_libraries(make_seed_corpus PRIVATE bitgrad::bitgrad bitgrad_warnings
  bitgrad_test_optimization)
