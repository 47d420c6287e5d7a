// Catch2's runner, compiled once for all suites.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
