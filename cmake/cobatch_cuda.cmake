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
    # enable_language(CUDA) fills CMAKE_CUDA_ARCHITECTURES with the compiler's
    # default (sm_75 for nvcc 13) when nobody chose, after which no later
    # default of ours could apply, and a Hopper GPU would JIT-compile PTX for
    # every kernel at first launch. So the choice is made before: the
    # caller's (-DCMAKE_CUDA_ARCHITECTURES=..., or the CUDAARCHS environment
    # variable), else machine code for Ampere (sm_80) and Hopper (sm_90) plus
    # sm_90 PTX for what comes later.
    set(COBATCH_CUDA_DEFAULT_ARCHITECTURES "80-real;90-real;90-virtual")
    if(DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT CMAKE_CUDA_ARCHITECTURES STREQUAL "")
      set(cobatch_cuda_arch_origin "given with CMAKE_CUDA_ARCHITECTURES")
    elseif(DEFINED ENV{CUDAARCHS} AND NOT "$ENV{CUDAARCHS}" STREQUAL "")
      set(cobatch_cuda_arch_origin "given with the CUDAARCHS environment variable")
    else()
      set(CMAKE_CUDA_ARCHITECTURES "${COBATCH_CUDA_DEFAULT_ARCHITECTURES}" CACHE STRING
          "CUDA architectures to build for (cobatch's default: sm_80 and sm_90 machine code, sm_90 PTX)")
      set(cobatch_cuda_arch_origin "cobatch's default")
    endif()
    enable_language(CUDA)
    set(COBATCH_WITH_CUDA ON)
    message(STATUS "cobatch: CUDA architectures ${CMAKE_CUDA_ARCHITECTURES} (${cobatch_cuda_arch_origin}); "
                   "nvcc ${CMAKE_CUDA_COMPILER_VERSION}")
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
