# bitgrad_expect_openmp(<consumer output> <ON|OFF|empty>): fails unless the consumer reported
# "OpenMP on" (ON) or "OpenMP off" (OFF); an empty expectation checks nothing.
function(bitgrad_expect_openmp out expect)
  if("${expect}" STREQUAL "")
    return()
  endif()
  if(expect)
    set(want "OpenMP on")
  else()
    set(want "OpenMP off")
  endif()
  string(FIND "${out}" "${want}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "the consumer should report '${want}' (bitgrad was configured with "
                        "OpenMP ${expect}), it printed: ${out}")
  endif()
endfunction()
