# Run by the consumer/find_package test (cmake -P): install, configure, build,
# run. Each step stops the test with its own message when it fails.
cmake_minimum_required(VERSION 3.22)

foreach(var COBATCH_BUILD_DIR CONSUMER_SOURCE_DIR CONSUMER_BUILD_DIR CONSUMER_PREFIX CONSUMER_GENERATOR CONSUMER_ARGS_FILE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_consumer.cmake: ${var} is not set")
  endif()
endforeach()

# Sets CONSUMER_ARGS: build type, compiler and flags of the build under test.
include("${CONSUMER_ARGS_FILE}")

function(step what)
  message(STATUS "consumer: ${what}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer: ${what} failed (${rc})")
  endif()
endfunction()

set(config_args "")
if(COBATCH_CONFIG)
  set(config_args --config "${COBATCH_CONFIG}")
endif()

# A fresh prefix each time, so that a header or target removed from the
# project cannot linger there and hide a broken install.
file(REMOVE_RECURSE "${CONSUMER_PREFIX}")
step("install cobatch into ${CONSUMER_PREFIX}"
  "${CMAKE_COMMAND}" --install "${COBATCH_BUILD_DIR}" --prefix "${CONSUMER_PREFIX}" ${config_args})

step("configure the consumer project"
  "${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${CONSUMER_BUILD_DIR}"
    -G "${CONSUMER_GENERATOR}"
    "-DCMAKE_PREFIX_PATH=${CONSUMER_PREFIX}"
    # Only the prefix may provide cobatch, never a package registry entry.
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
    ${CONSUMER_ARGS})

step("build the consumer project"
  "${CMAKE_COMMAND}" --build "${CONSUMER_BUILD_DIR}" ${config_args})

if(COBATCH_CONFIG AND EXISTS "${CONSUMER_BUILD_DIR}/${COBATCH_CONFIG}/cobatch_consumer${CMAKE_EXECUTABLE_SUFFIX}")
  set(program "${CONSUMER_BUILD_DIR}/${COBATCH_CONFIG}/cobatch_consumer")
else()
  set(program "${CONSUMER_BUILD_DIR}/cobatch_consumer")
endif()
step("run the consumer program" "${program}")
