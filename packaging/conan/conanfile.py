# Conan 2 recipe for bitgrad, a header-only library.
# Not run on the development machine (no Conan there); written to Conan's documented
# conventions for header-only packages: package_type "header-library", no settings in the
# package id, headers copied from include/, CMake config provided by CMakeDeps on the consumer.
import os

from conan import ConanFile
from conan.tools.build import check_min_cppstd
from conan.tools.files import copy
from conan.tools.layout import basic_layout


class BitgradConan(ConanFile):
    name = "bitgrad"
    description = "Header-only C++20 library for training neural networks with learned bitwidths"
    license = "MIT"
    topics = ("deep-learning", "quantization", "mixed-precision", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    no_copy_source = True
    exports_sources = "include/*", "LICENSE*"

    def set_version(self):
        # The version lives in include/bitgrad/version.hpp.
        header = os.path.join(self.recipe_folder, "..", "..", "include", "bitgrad", "version.hpp")
        if not os.path.exists(header):
            header = os.path.join(self.recipe_folder, "include", "bitgrad", "version.hpp")
        parts = {}
        with open(header) as f:
            for line in f:
                for key in ("MAJOR", "MINOR", "PATCH"):
                    prefix = f"#define BITGRAD_VERSION_{key} "
                    if line.startswith(prefix):
                        parts[key] = line[len(prefix):].strip()
        self.version = f"{parts['MAJOR']}.{parts['MINOR']}.{parts['PATCH']}"

    def export_sources(self):
        root = os.path.join(self.recipe_folder, "..", "..")
        copy(self, "include/*", root, self.export_sources_folder)

    def layout(self):
        basic_layout(self, src_folder=".")

    def requirements(self):
        self.requires("xtensor/0.24.7")
        self.requires("xsimd/[>=8.1 <14]")
        self.requires("xtl/0.7.5")
        self.requires("zlib/[>=1.2.11 <2]")
        self.requires("nlohmann_json/[>=3.9 <4]")

    def validate(self):
        check_min_cppstd(self, 20)

    def package_id(self):
        self.info.clear()

    def package(self):
        copy(self, "*.hpp", os.path.join(self.source_folder, "include"),
             os.path.join(self.package_folder, "include"))

    def package_info(self):
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.set_property("cmake_file_name", "bitgrad")
        self.cpp_info.set_property("cmake_target_name", "bitgrad::bitgrad")
        self.cpp_info.set_property("pkg_config_name", "bitgrad")
        self.cpp_info.requires = [
            "xtensor::xtensor", "xsimd::xsimd", "xtl::xtl", "zlib::zlib",
            "nlohmann_json::nlohmann_json",
        ]
