// A stream_ref always refers to a stream: building one from nullptr is a
// compile error, not a crash later.
#include "cobatch/gpu/stream.hpp"

int main() {
  cobatch::gpu::stream_ref s(nullptr);
  (void)s;
}
