# vcpkg port for bitgrad (header-only). Written to vcpkg's documented port conventions; vcpkg is
# not available on the development machine, so this file is not exercised by the test suite.
# For an overlay port from a local checkout: vcpkg install bitgrad --overlay-ports=packaging/vcpkg
# with BITGRAD_SOURCE_DIR set to the checkout; a registry port would use vcpkg_from_github.
if(DEFINED ENV{BITGRAD_SOURCE_DIR})
  set(SOURCE_PATH "$ENV{BITGRAD_SOURCE_DIR}")
else()
  get_filename_component(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
endif()

vcpkg_cmake_configure(
  SOURCE_PATH "${SOURCE_PATH}"
  OPTIONS
    -DBITGRAD_BUILD_TESTS=OFF
    -DBITGRAD_BUILD_EXAMPLES=OFF
    -DBITGRAD_BUILD_BENCHMARKS=OFF
    -DBITGRAD_INSTALL=ON
)
vcpkg_cmake_install()
vcpkg_cmake_config_fixup(PACKAGE_NAME bitgrad CONFIG_PATH share/cmake/bitgrad)
vcpkg_fixup_pkgconfig()

# Header-only: nothing in lib/ or debug/.
file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}/debug" "${CURRENT_PACKAGES_DIR}/lib")
file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
if(EXISTS "${SOURCE_PATH}/LICENSE")
  vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
endif()
