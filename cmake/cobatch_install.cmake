# Install rules: the same namespaced targets (cobatch::coro, ::gpu, ::engine,
# ::cobatch) in the install tree as in the build tree, an exported package
# config and a version file so that find_package(cobatch CONFIG) works.
include_guard(GLOBAL)
include(CMakePackageConfigHelpers)

set(cobatch_cmake_dir "${CMAKE_INSTALL_LIBDIR}/cmake/cobatch")

install(TARGETS cobatch_coro cobatch_gpu cobatch_engine cobatch_all
  EXPORT cobatch-targets
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}"
  INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")

# Without the CUDA backend its headers declare what the libraries lack, so
# they stay out of the install tree (as they stay out of the header tests).
set(cobatch_header_excludes "")
if(NOT COBATCH_WITH_CUDA)
  list(APPEND cobatch_header_excludes PATTERN "cuda" EXCLUDE)
endif()
foreach(layer coro gpu engine)
  install(DIRECTORY "${PROJECT_SOURCE_DIR}/${layer}/include/"
    DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
    ${cobatch_header_excludes})
endforeach()
install(FILES "${PROJECT_BINARY_DIR}/include/cobatch/config.hpp"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/cobatch")

install(EXPORT cobatch-targets
  NAMESPACE cobatch::
  DESTINATION "${cobatch_cmake_dir}")

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/cobatchConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/cobatchConfig.cmake"
  INSTALL_DESTINATION "${cobatch_cmake_dir}")
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/cobatchConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES
  "${PROJECT_BINARY_DIR}/cobatchConfig.cmake"
  "${PROJECT_BINARY_DIR}/cobatchConfigVersion.cmake"
  "${PROJECT_SOURCE_DIR}/cmake/cobatch_dependencies.cmake"
  DESTINATION "${cobatch_cmake_dir}")
