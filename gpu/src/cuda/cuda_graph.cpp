// Graphs: what a capture ended with, its executables (launch, update), and
// the notes a capture leaves for each launch.
#include "cuda_graph.hpp"

#include "cobatch/gpu/cuda/graph_update.hpp"
#include "cuda_stream.hpp"

#include <mutex>
#include <utility>

namespace cobatch::gpu::cuda::detail {

namespace {
struct capture_notes {
  std::mutex mutex;
  std::vector<std::pair<unsigned long long, std::shared_ptr<const launch_note>>> notes;
};
capture_notes& notes_in_progress() {
  static capture_notes instance;
  return instance;
}
}  // namespace

void add_capture_note(unsigned long long capture_id, std::shared_ptr<const launch_note> note) {
  auto& n = notes_in_progress();
  std::lock_guard lock(n.mutex);
  n.notes.emplace_back(capture_id, std::move(note));
}

std::vector<std::shared_ptr<const launch_note>> take_capture_notes(unsigned long long capture_id) {
  auto& n = notes_in_progress();
  std::vector<std::shared_ptr<const launch_note>> out;
  std::lock_guard lock(n.mutex);
  for (auto& [id, note] : n.notes) {
    if (id == capture_id) out.push_back(std::move(note));
  }
  std::erase_if(n.notes, [&](const auto& entry) { return entry.first == capture_id; });
  return out;
}

class cuda_graph_exec final : public gpu::detail::graph_exec_impl {
 public:
  // Keeps the graph it was made or last updated from: host functions of an
  // update's graph are owned by that graph (user objects are not carried over
  // by cudaGraphExecUpdate), and the executable runs them from now on.
  cuda_graph_exec(cudaGraphExec_t exec, std::size_t nodes, std::shared_ptr<CUgraph_st> source,
                  std::vector<std::shared_ptr<const launch_note>> notes)
      : exec_(exec), nodes_(nodes), source_(std::move(source)), notes_(std::move(notes)) {}
  ~cuda_graph_exec() override {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  }
  void launch(gpu::detail::stream_impl& s) override {
    auto& cs = as_cuda(s);
    for (const auto& note : notes_) {
      if (auto ec = note->before_launch()) {
        cs.fail(ec);
        return;
      }
    }
    cs.issue();
    COBATCH_CUDA_CHECK(cudaGraphLaunch(exec_, cs.get()));
    for (const auto& note : notes_) note->on_launch(cs);
  }
  std::size_t node_count() const noexcept override { return nodes_; }

  graph_update_result update(const std::shared_ptr<CUgraph_st>& source, std::size_t nodes,
                             const std::vector<std::shared_ptr<const launch_note>>& notes) {
    cudaGraph_t g = source.get();
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(exec_, g, &info) == cudaSuccess) {
      nodes_ = nodes;
      source_ = source;
      notes_ = notes;
      return graph_update_result::updated_in_place;
    }
    // Topology or node kinds changed: the failure is expected, not an error.
    cudaGetLastError();
    cudaGraphExec_t fresh = nullptr;
    COBATCH_CUDA_CHECK(cudaGraphInstantiate(&fresh, g, 0));
    cudaGraphExecDestroy(exec_);
    exec_ = fresh;
    nodes_ = nodes;
    source_ = source;
    notes_ = notes;
    return graph_update_result::reinstantiated;
  }

 private:
  cudaGraphExec_t exec_;
  std::size_t nodes_;
  std::shared_ptr<CUgraph_st> source_;
  std::vector<std::shared_ptr<const launch_note>> notes_;
};

class cuda_graph final : public gpu::detail::graph_impl {
 public:
  cuda_graph(cudaGraph_t g, std::vector<std::shared_ptr<const launch_note>> notes)
      : graph_(g, [](cudaGraph_t x) { cudaGraphDestroy(x); }), notes_(std::move(notes)) {
    std::size_t n = 0;
    COBATCH_CUDA_CHECK(cudaGraphGetNodes(g, nullptr, &n));
    nodes_ = n;
  }
  std::unique_ptr<gpu::detail::graph_exec_impl> instantiate() const override {
    cudaGraphExec_t exec = nullptr;
    COBATCH_CUDA_CHECK(cudaGraphInstantiate(&exec, graph_.get(), 0));
    return std::make_unique<cuda_graph_exec>(exec, nodes_, graph_, notes_);
  }
  std::size_t node_count() const noexcept override { return nodes_; }
  const std::shared_ptr<CUgraph_st>& shared() const noexcept { return graph_; }
  const std::vector<std::shared_ptr<const launch_note>>& notes() const noexcept { return notes_; }

 private:
  std::shared_ptr<CUgraph_st> graph_;
  std::vector<std::shared_ptr<const launch_note>> notes_;
  std::size_t nodes_ = 0;
};

graph make_graph(cudaGraph_t g, std::vector<std::shared_ptr<const launch_note>> notes) {
  return graph(std::make_unique<cuda_graph>(g, std::move(notes)));
}

}  // namespace cobatch::gpu::cuda::detail

namespace cobatch::gpu::cuda {

graph_update_result update(graph_exec& exec, const graph& g) {
  auto* ce = dynamic_cast<detail::cuda_graph_exec*>(exec.impl());
  auto* cg = dynamic_cast<detail::cuda_graph*>(g.impl());
  if (ce == nullptr || cg == nullptr) {
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: update needs an instantiated graph and a graph of the CUDA backend");
  }
  return ce->update(cg->shared(), cg->node_count(), cg->notes());
}

}  // namespace cobatch::gpu::cuda
