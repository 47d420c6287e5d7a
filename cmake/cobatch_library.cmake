# cobatch_add_layer(<layer> SOURCES ... DEPENDS ...): one library per layer
# (coro, gpu, engine) with the alias cobatch::<layer>, identical in the build
# and install trees. Warnings are set per target, never globally.
include_guard(GLOBAL)

function(cobatch_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor>)
  endif()
endfunction()

function(cobatch_add_layer layer)
  cmake_parse_arguments(arg "" "" "SOURCES;DEPENDS;PRIVATE_DEPENDS" ${ARGN})
  add_library(cobatch_${layer} ${arg_SOURCES})
  add_library(cobatch::${layer} ALIAS cobatch_${layer})
  set_target_properties(cobatch_${layer} PROPERTIES
    EXPORT_NAME ${layer}
    OUTPUT_NAME cobatch_${layer}
    POSITION_INDEPENDENT_CODE ON)
  target_compile_features(cobatch_${layer} PUBLIC cxx_std_20)
  target_include_directories(cobatch_${layer} PUBLIC
    $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    $<BUILD_INTERFACE:${PROJECT_BINARY_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
  target_link_libraries(cobatch_${layer} PUBLIC ${arg_DEPENDS} PRIVATE ${arg_PRIVATE_DEPENDS})
  cobatch_warnings(cobatch_${layer})
endfunction()
