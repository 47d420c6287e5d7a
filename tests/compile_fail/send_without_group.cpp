// Point-to-point calls need an open group: a send without a group_guard is a
// compile error, not a deadlock at run time.
#include "cobatch/gpu/communicator.hpp"

void exchange(const cobatch::gpu::communicator& comm, cobatch::gpu::stream_ref s, float* x) {
  comm.send(x, 1, cobatch::gpu::data_type::f32, 1, s);
}

int main() {}
