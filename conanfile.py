import glob
import os

from conan import ConanFile
from conan.tools.build import check_min_cppstd
from conan.tools.cmake import CMake, CMakeDeps, CMakeToolchain, cmake_layout
from conan.errors import ConanException
from conan.tools.files import copy, load, save

required_conan_version = ">=2.0"


class CobatchConan(ConanFile):
    name = "cobatch"
    version = "0.1.0"
    description = "C++20 coroutines that drive GPU batch execution"
    license = "Apache-2.0"
    topics = ("coroutines", "cuda", "gpu", "batching", "asio")
    package_type = "library"
    settings = "os", "arch", "compiler", "build_type"
    options = {
        "shared": [True, False],
        "fPIC": [True, False],
        # The CUDA backend needs the CUDA Toolkit on the build machine; Conan
        # does not provide it, so it is off unless asked for.
        "cuda": [True, False],
        "nccl": [True, False],
    }
    default_options = {
        "shared": False,
        "fPIC": True,
        "cuda": False,
        "nccl": False,
    }
    exports_sources = (
        "LICENSE",
        "CMakeLists.txt",
        "cmake/*",
        "coro/*",
        "gpu/*",
        "engine/*",
    )

    def config_options(self):
        if self.settings.os == "Windows":
            del self.options.fPIC

    def configure(self):
        if self.options.shared:
            self.options.rm_safe("fPIC")
        if not self.options.cuda:
            self.options.rm_safe("nccl")

    def layout(self):
        cmake_layout(self)

    def requirements(self):
        # Both are header-only and appear in cobatch's public headers or
        # link interface, hence transitive. The minimum versions are the ones
        # cobatch is built and tested with (Debian bookworm's packages), which
        # conan/system-* package for an offline build (scripts/conan-check).
        self.requires("asio/[>=1.22.1 <2]", transitive_headers=True)
        self.requires("concurrentqueue/[>=1.0.3 <2]")

    def validate(self):
        check_min_cppstd(self, 20)

    def generate(self):
        tc = CMakeToolchain(self)
        tc.cache_variables["COBATCH_CUDA"] = "ON" if self.options.cuda else "OFF"
        tc.cache_variables["COBATCH_NCCL"] = "ON" if self.options.get_safe("nccl") else "OFF"
        tc.cache_variables["COBATCH_BUILD_TESTS"] = False
        tc.cache_variables["COBATCH_BUILD_BENCHMARKS"] = False
        tc.cache_variables["COBATCH_BUILD_EXAMPLES"] = False
        tc.cache_variables["COBATCH_HEADER_TESTS"] = False
        tc.cache_variables["COBATCH_DEPS_INCLUDE_DIR"] = ";".join(self._deps_include_dirs())
        tc.generate()
        CMakeDeps(self).generate()

    def _deps_include_dirs(self):
        """Include directories for cobatch_dependencies.cmake, which looks for
        <asio.hpp> and <concurrentqueue/concurrentqueue.h> (the Debian layout)."""
        dirs = list(self.dependencies["asio"].cpp_info.aggregated_components().includedirs)
        queue_dirs = self.dependencies["concurrentqueue"].cpp_info.aggregated_components().includedirs
        for d in queue_dirs:
            if os.path.isfile(os.path.join(d, "concurrentqueue", "concurrentqueue.h")):
                return dirs + [d]
        # Conan Center keeps the headers under include/moodycamel/. They are
        # used only by cobatch's sources, so a copy in the build folder under
        # the name the sources use is enough.
        for d in queue_dirs:
            found = glob.glob(os.path.join(d, "**", "concurrentqueue.h"), recursive=True)
            if found:
                shim = os.path.join(self.generators_folder, "cobatch_deps")
                copy(self, "*.h", os.path.dirname(found[0]), os.path.join(shim, "concurrentqueue"))
                return dirs + [shim]
        return dirs + list(queue_dirs)

    def build(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def package(self):
        cmake = CMake(self)
        cmake.install()
        copy(self, "LICENSE", self.source_folder, os.path.join(self.package_folder, "licenses"))
        if self.options.cuda:
            # Where CMake found the toolkit's libraries (and NCCL's), so that
            # consumers link the same ones.
            save(self, os.path.join(self.package_folder, "res", "cobatch_cuda_libdirs.txt"),
                 "\n".join(self._found_cuda_libdirs()) + "\n")

    def _found_cuda_libdirs(self):
        cache = load(self, os.path.join(self.build_folder, "CMakeCache.txt"))
        dirs = []
        for line in cache.splitlines():
            key, _, value = line.partition("=")
            name = key.split(":")[0]
            # FindCUDAToolkit's cudart and cmake/cobatch_cuda.cmake's NCCL.
            if name in ("CUDA_cudart_LIBRARY", "COBATCH_NCCL_LIBRARY") and value and not value.endswith("-NOTFOUND"):
                dirs.append(os.path.dirname(value))
        if not dirs:
            raise ConanException("cobatch: the CUDA build left no CUDA_cudart_LIBRARY in CMakeCache.txt")
        return list(dict.fromkeys(dirs))

    def package_info(self):
        # Same names as the package's own cobatchConfig.cmake, so a consumer
        # cannot tell which one it got.
        self.cpp_info.set_property("cmake_file_name", "cobatch")
        self.cpp_info.set_property("cmake_target_name", "cobatch::cobatch")

        coro = self.cpp_info.components["coro"]
        coro.set_property("cmake_target_name", "cobatch::coro")
        coro.libs = ["cobatch_coro"]
        # The same definitions as cobatch::coro's usage requirements
        # (cmake/cobatch_dependencies.cmake, coro/CMakeLists.txt): every
        # translation unit that includes Asio must agree on them, and
        # ASIO_HAS_CO_AWAIT turns on asio::awaitable under Clang with libstdc++.
        coro.defines = ["ASIO_STANDALONE", "ASIO_NO_DEPRECATED", "ASIO_DISABLE_STD_ALIGNED_ALLOC", "ASIO_HAS_CO_AWAIT=1"]
        coro.requires = ["asio::asio", "concurrentqueue::concurrentqueue"]
        if self.settings.os in ("Linux", "FreeBSD"):
            coro.system_libs = ["pthread"]

        gpu = self.cpp_info.components["gpu"]
        gpu.set_property("cmake_target_name", "cobatch::gpu")
        gpu.libs = ["cobatch_gpu"]
        gpu.requires = ["coro"]
        if self.options.cuda:
            # From the CUDA Toolkit installed on the system, outside Conan: the
            # library folders the build found (see package()).
            libdirs = load(self, os.path.join(self.package_folder, "res", "cobatch_cuda_libdirs.txt"))
            gpu.libdirs = ["lib"] + [d for d in libdirs.splitlines() if d]
            gpu.system_libs.append("cudart")
            if self.options.get_safe("nccl"):
                gpu.system_libs.append("nccl")

        engine = self.cpp_info.components["engine"]
        engine.set_property("cmake_target_name", "cobatch::engine")
        engine.libs = ["cobatch_engine"]
        engine.requires = ["coro", "gpu"]
