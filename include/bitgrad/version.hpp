// bitgrad — version of the library. CMake reads the three numbers from this file.
#pragma once

#define BITGRAD_VERSION_MAJOR 0
#define BITGRAD_VERSION_MINOR 1
#define BITGRAD_VERSION_PATCH 0

#define BITGRAD_STRINGIFY_IMPL(x) #x
#define BITGRAD_STRINGIFY(x) BITGRAD_STRINGIFY_IMPL(x)
#define BITGRAD_VERSION_STRING                                                                     \
  BITGRAD_STRINGIFY(BITGRAD_VERSION_MAJOR)                                                         \
  "." BITGRAD_STRINGIFY(BITGRAD_VERSION_MINOR) "." BITGRAD_STRINGIFY(BITGRAD_VERSION_PATCH)
