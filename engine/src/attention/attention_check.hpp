// Private to the engine's attention sources: the checks behind the
// validate_* functions, returning faults so that throwing and error_code
// overloads share them.
#pragma once

#include <cobatch/engine/attention/attention_plan.hpp>
#include <cobatch/engine/attention/dcp.hpp>
#include <cobatch/engine/attention/paged_kv_cache.hpp>

#include "message.hpp"

#include <string>

namespace cobatch::engine::detail {

fault check_dcp(const dcp_layout& layout, const char* api, std::string* detail);
fault check_kv_cache_config(const kv_cache_config& config, std::string* detail);
fault check_attention_config(const kv_cache_config& cache, const attention_config& config, std::string* detail);

}  // namespace cobatch::engine::detail
