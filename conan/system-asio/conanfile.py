"""Standalone Asio as the system installs it (Debian: libasio-dev), packaged
for Conan so that cobatch's recipe resolves offline. The version is the one in
the installed asio/version.hpp; the headers are copied from there."""
import os
import re

from conan import ConanFile
from conan.errors import ConanInvalidConfiguration
from conan.tools.files import copy

required_conan_version = ">=2.0"


def _include_dir():
    return os.environ.get("COBATCH_SYSTEM_INCLUDE_DIR", "/usr/include")


def _installed_version():
    header = os.path.join(_include_dir(), "asio", "version.hpp")
    try:
        with open(header, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    match = re.search(r"#\s*define\s+ASIO_VERSION\s+(\d+)", text)
    if not match:
        return None
    number = int(match.group(1))  # XXYYZZ: major, minor, patch
    return f"{number // 100000}.{number // 100 % 1000}.{number % 100}"


class SystemAsioConan(ConanFile):
    name = "asio"
    description = "Standalone Asio, taken from the system's include directory"
    license = "BSL-1.0"
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"

    def set_version(self):
        self.version = self.version or _installed_version()
        if not self.version:
            raise ConanInvalidConfiguration(
                f"no asio/version.hpp under {_include_dir()} (Debian: apt-get install libasio-dev)")

    def validate(self):
        installed = _installed_version()
        if installed != str(self.version):
            raise ConanInvalidConfiguration(
                f"asio/{self.version} asked for, but {_include_dir()} holds Asio {installed}")

    def package_id(self):
        self.info.clear()

    def package(self):
        include = os.path.join(self.package_folder, "include")
        copy(self, "asio.hpp", _include_dir(), include)
        copy(self, "asio/*", _include_dir(), include)
        copy(self, "copyright", "/usr/share/doc/libasio-dev", os.path.join(self.package_folder, "licenses"))

    def package_info(self):
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.set_property("cmake_file_name", "asio")
        self.cpp_info.set_property("cmake_target_name", "asio::asio")
        self.cpp_info.defines = ["ASIO_STANDALONE"]
        if self.settings.os in ("Linux", "FreeBSD"):
            self.cpp_info.system_libs = ["pthread"]
