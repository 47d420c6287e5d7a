# cmake -DBINARY_DIR=... -DTARGET=... -DCONFIG=... -DCASE=<case.cpp> -P expect_compile_error.cmake
# Passes when building TARGET fails with the diagnostic CASE's "// expect:" line names.
file(STRINGS "${CASE}" expect REGEX "^// expect: ")
string(REGEX REPLACE "^// expect: " "" expect "${expect}")
if(expect STREQUAL "")
  message(FATAL_ERROR "${CASE}: no '// expect: <regex>' line")
endif()
execute_process(
  COMMAND "${CMAKE_COMMAND}" --build "${BINARY_DIR}" --target "${TARGET}" --config "${CONFIG}"
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE out)
if(rc EQUAL 0)
  message(FATAL_ERROR "${TARGET} compiled, but it is misuse that must not")
endif()
if(NOT out MATCHES "${expect}")
  message(FATAL_ERROR "${TARGET} failed, but without the expected diagnostic\n  ${expect}\n${out}")
endif()
message(STATUS "${TARGET} failed to compile as expected: ${CMAKE_MATCH_0}")
