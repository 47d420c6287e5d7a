// A stream_ref always refers to a stream: building one from nullptr is a
// compile error, not a crash later.
// expect: (use of deleted function [^ ]*cobatch::gpu::stream_ref::stream_ref\(std::nullptr_t\)|call to deleted constructor of 'cobatch::gpu::stream_ref')
#include "cobatch/gpu/stream.hpp"

void refer(const cobatch::gpu::stream& owner) {
#ifdef COBATCH_COMPILE_FAIL
  cobatch::gpu::stream_ref s(nullptr);
#else
  cobatch::gpu::stream_ref s(owner);
#endif
  (void)owner;
  (void)s;
}

int main() {}
