# Resolves COBATCH_CUDA / COBATCH_NCCL (ON, OFF, AUTO) into COBATCH_WITH_CUDA and
# COBATCH_WITH_NCCL. AUTO turns a backend on only where its toolkit is found, so
# the same tree configures on a laptop without CUDA and on a GPU node.
include_guard(GLOBAL)

set(COBATCH_WITH_CUDA OFF)
set(COBATCH_WITH_NCCL OFF)

if(NOT COBATCH_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  find_package(CUDAToolkit QUIET)
  if(CMAKE_CUDA_COMPILER AND CUDAToolkit_FOUND)
    enable_language(CUDA)
    set(COBATCH_WITH_CUDA ON)
  elseif(COBATCH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "COBATCH_CUDA=ON but no CUDA compiler or toolkit was found")
  endif()
endif()

if(COBATCH_WITH_CUDA AND NOT COBATCH_NCCL STREQUAL "OFF")
  find_path(COBATCH_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_HOME PATH_SUFFIXES include)
  find_library(COBATCH_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ENV NCCL_HOME PATH_SUFFIXES lib lib64)
  if(COBATCH_NCCL_INCLUDE_DIR AND COBATCH_NCCL_LIBRARY)
    set(COBATCH_WITH_NCCL ON)
    if(NOT TARGET cobatch_dep::nccl)
      add_library(cobatch_dep::nccl UNKNOWN IMPORTED)
      set_target_properties(cobatch_dep::nccl PROPERTIES
        IMPORTED_LOCATION "${COBATCH_NCCL_LIBRARY}"
        INTERFACE_INCLUDE_DIRECTORIES "${COBATCH_NCCL_INCLUDE_DIR}")
    endif()
  elseif(COBATCH_NCCL STREQUAL "ON")
    message(FATAL_ERROR "COBATCH_NCCL=ON but nccl.h or libnccl was not found")
  endif()
endif()

message(STATUS "cobatch: CUDA backend ${COBATCH_WITH_CUDA}, NCCL communicator ${COBATCH_WITH_NCCL}")

if(COBATCH_WITH_CUDA)
  set(COBATCH_WITH_CUDA_01 1)
else()
  set(COBATCH_WITH_CUDA_01 0)
endif()
if(COBATCH_WITH_NCCL)
  set(COBATCH_WITH_NCCL_01 1)
else()
  set(COBATCH_WITH_NCCL_01 0)
endif()
