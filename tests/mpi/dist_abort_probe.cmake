# Runs dist_abort_probe under mpirun in both modes (cmake -P script). In: MPIEXEC (the mpirun
# command and its flags, a list), PROBE (the executable). Each run must exit non-zero within
# 30 s; the throw mode must print "rank 1: deliberate failure in step 7" on stderr.
foreach(mode throw kill)
  string(TIMESTAMP t0 "%s")
  execute_process(COMMAND ${MPIEXEC} ${PROBE} ${mode}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 50)
  string(TIMESTAMP t1 "%s")
  math(EXPR seconds "${t1} - ${t0}")
  message(STATUS "mode ${mode}: exit ${rc} after ${seconds} s\nstdout: ${out}\nstderr: ${err}")
  if(rc EQUAL 0 OR rc MATCHES "timeout")
    message(FATAL_ERROR "mode ${mode}: expected a non-zero exit, got '${rc}'")
  endif()
  if(seconds GREATER 30)
    message(FATAL_ERROR "mode ${mode}: the job took ${seconds} s to end (limit 30 s)")
  endif()
  if(out MATCHES "the all-reduce returned")
    message(FATAL_ERROR "mode ${mode}: rank 0 passed the all-reduce rank 1 never joined")
  endif()
  if(mode STREQUAL "throw" AND NOT err MATCHES "rank 1: deliberate failure in step 7")
    message(FATAL_ERROR "mode throw: stderr lacks \"rank 1: deliberate failure in step 7\"")
  endif()
endforeach()
