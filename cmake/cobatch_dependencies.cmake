# Finds what every cobatch target needs. Used by the build and, through
# cobatchConfig.cmake, by consumers of the installed package, so both see the
# same imported targets.
include_guard(GLOBAL)

find_package(Threads REQUIRED)

if(NOT TARGET cobatch_dep::asio)
  find_path(COBATCH_ASIO_INCLUDE_DIR asio.hpp
    HINTS ${COBATCH_DEPS_INCLUDE_DIR} ENV COBATCH_DEPS_INCLUDE_DIR
    DOC "Directory holding standalone Asio's asio.hpp")
  if(NOT COBATCH_ASIO_INCLUDE_DIR)
    message(FATAL_ERROR "cobatch needs standalone Asio (Debian: apt-get install libasio-dev)")
  endif()
  add_library(cobatch_dep::asio INTERFACE IMPORTED)
  target_include_directories(cobatch_dep::asio INTERFACE "${COBATCH_ASIO_INCLUDE_DIR}")
  # Asio without deprecated names keeps compile times and surprises down.
  # ASIO_DISABLE_STD_ALIGNED_ALLOC: Asio decides between aligned_alloc/free and
  # operator new/delete from a libstdc++ macro that is defined only if a
  # standard header came before Asio's in the translation unit. Translation
  # units that include in different orders then disagree on one inline
  # function, and memory allocated by one is freed by the other (AddressSanitizer
  # reports alloc-dealloc-mismatch). One choice for every unit removes that.
  target_compile_definitions(cobatch_dep::asio INTERFACE
    ASIO_STANDALONE ASIO_NO_DEPRECATED ASIO_DISABLE_STD_ALIGNED_ALLOC)
  target_link_libraries(cobatch_dep::asio INTERFACE Threads::Threads)
endif()

if(NOT TARGET cobatch_dep::concurrentqueue)
  find_path(COBATCH_CONCURRENTQUEUE_INCLUDE_DIR concurrentqueue/concurrentqueue.h
    HINTS ${COBATCH_DEPS_INCLUDE_DIR} ENV COBATCH_DEPS_INCLUDE_DIR
    DOC "Directory holding concurrentqueue/concurrentqueue.h")
  if(NOT COBATCH_CONCURRENTQUEUE_INCLUDE_DIR)
    message(FATAL_ERROR "cobatch needs moodycamel concurrentqueue (Debian: apt-get install libconcurrentqueue-dev)")
  endif()
  add_library(cobatch_dep::concurrentqueue INTERFACE IMPORTED)
  target_include_directories(cobatch_dep::concurrentqueue INTERFACE "${COBATCH_CONCURRENTQUEUE_INCLUDE_DIR}")
endif()
