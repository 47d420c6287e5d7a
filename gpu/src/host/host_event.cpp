// Host backend: events.
#include "host_event.hpp"

#include "cobatch/gpu/error.hpp"

#include <system_error>

namespace cobatch::gpu::host {

host_event& as_host(const detail::event_impl& e) {
  auto* h = dynamic_cast<const host_event*>(&e);
  if (h == nullptr) {
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: a host stream was given an event of another backend");
  }
  return const_cast<host_event&>(*h);
}

}  // namespace cobatch::gpu::host
