// The one place bitgrad includes xtensor.
//
// xtensor <= 0.25 (Debian 12 ships 0.24) keeps its headers flat: <xtensor/xtensor.hpp>.
// xtensor >= 0.26 moved them into subfolders: <xtensor/containers/xtensor.hpp>.
// Every other bitgrad header includes this shim instead of xtensor itself.
#pragma once

#if __has_include(<xtensor/containers/xtensor.hpp>)
#include <xtensor/containers/xadapt.hpp>
#include <xtensor/containers/xarray.hpp>
#include <xtensor/containers/xtensor.hpp>
#include <xtensor/core/xmath.hpp>
#include <xtensor/io/xnpy.hpp>
#include <xtensor/views/xview.hpp>
#define BITGRAD_XTENSOR_LAYOUT_NESTED 1
#elif __has_include(<xtensor/xtensor.hpp>)
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xnpy.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>
#define BITGRAD_XTENSOR_LAYOUT_NESTED 0
#else
#error "bitgrad needs xtensor >= 0.24 (Debian: libxtensor-dev)"
#endif
