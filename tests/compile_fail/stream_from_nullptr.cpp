// An owning stream always owns a stream: building one from nullptr is a
// compile error (a stream used without owning it is a stream_ref).
// expect: (use of deleted function [^ ]*cobatch::gpu::stream::stream\(std::nullptr_t\)|call to deleted constructor of 'cobatch::gpu::stream')
#include "cobatch/gpu/device.hpp"
#include "cobatch/gpu/stream.hpp"

void make(cobatch::gpu::device& device) {
#ifdef COBATCH_COMPILE_FAIL
  cobatch::gpu::stream s(nullptr);
#else
  cobatch::gpu::stream s = device.make_stream();
#endif
  (void)device;
  (void)s;
}

int main() {}
