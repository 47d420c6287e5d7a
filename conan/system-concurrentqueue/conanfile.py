"""moodycamel::ConcurrentQueue as the system installs it (Debian:
libconcurrentqueue-dev, headers in <include>/concurrentqueue/), packaged for
Conan so that cobatch's recipe resolves offline. The version is given when the
recipe is exported (the headers carry none); see scripts/conan-check."""
import os

from conan import ConanFile
from conan.errors import ConanInvalidConfiguration
from conan.tools.files import copy

required_conan_version = ">=2.0"


def _include_dir():
    return os.environ.get("COBATCH_SYSTEM_INCLUDE_DIR", "/usr/include")


class SystemConcurrentQueueConan(ConanFile):
    name = "concurrentqueue"
    description = "moodycamel::ConcurrentQueue, taken from the system's include directory"
    license = "BSD-2-Clause OR BSL-1.0"
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"

    def validate(self):
        if not os.path.isfile(os.path.join(_include_dir(), "concurrentqueue", "concurrentqueue.h")):
            raise ConanInvalidConfiguration(
                f"no concurrentqueue/concurrentqueue.h under {_include_dir()} "
                "(Debian: apt-get install libconcurrentqueue-dev)")

    def package_id(self):
        self.info.clear()

    def package(self):
        include = os.path.join(self.package_folder, "include")
        copy(self, "concurrentqueue/*.h", _include_dir(), include)
        copy(self, "copyright", "/usr/share/doc/libconcurrentqueue-dev",
             os.path.join(self.package_folder, "licenses"))

    def package_info(self):
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.set_property("cmake_file_name", "concurrentqueue")
        self.cpp_info.set_property("cmake_target_name", "concurrentqueue::concurrentqueue")
