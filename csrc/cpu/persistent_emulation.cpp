// The persistent kernel's block programs (fastrnn/persistent.h) run on the CPU, for tests only:
// registered as the test-only ops fastrnn_persistent_test::* (the schemas of fastrnn::*), through the
// same engine (fastrnn/engine.h) as the CUDA ops, with the persistent time loop always.
//
// It runs one host thread per thread of every block of the grid (the grid of the plan made for an
// emulated device: fastrnn._C.set_persistent_emulation sets its multiprocessors, shared memory per
// block and threads per block), each block's threads sharing one buffer as their shared memory; the
// block barrier (__syncthreads) and the grid barrier are std::barriers. The programs run unchanged:
// the same indexing, the same units per block and the same barriers in the same order as on CUDA, so
// a missing barrier or a wrong owner shows up here as a wrong or NaN result (tests/test_persistent.py).
// Not used by fastrnn itself.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <barrier>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "fastrnn/autograd.h"
#include "fastrnn/device_checks.h"
#include "fastrnn/engine_ops.h"
#include "fastrnn/persistent_emulation.h"
#include "fastrnn/schemas.h"

namespace fastrnn {
namespace persistent {

namespace {
std::mutex& emulated_mutex() {
  static std::mutex m;
  return m;
}
DeviceLimits& emulated() {
  static DeviceLimits limits{4, 48 * 1024, 2, 32, 0, 0, 0};
  return limits;
}
}  // namespace

DeviceLimits emulated_device() {
  std::lock_guard<std::mutex> lock(emulated_mutex());
  return emulated();
}

DeviceLimits set_emulated_device(const DeviceLimits& limits) {
  TORCH_CHECK(limits.multiprocessors >= 1 && limits.shared_bytes_per_block >= 1 && limits.threads_per_block >= 1 &&
                  limits.max_row_chunk >= 1 && limits.tile >= 0 && limits.max_k_chunk >= 0 && limits.k_splits >= 0,
              "set_persistent_emulation: every limit must be at least 1 but got multiprocessors=",
              limits.multiprocessors, ", shared_bytes_per_block=", limits.shared_bytes_per_block,
              ", threads_per_block=", limits.threads_per_block, ", max_row_chunk=", limits.max_row_chunk,
              " (tile=", limits.tile, ", max_k_chunk=", limits.max_k_chunk, ", k_splits=", limits.k_splits,
              ": 0 or more)");
  std::lock_guard<std::mutex> lock(emulated_mutex());
  const DeviceLimits before = emulated();
  emulated() = limits;
  return before;
}

namespace {

// What a block program sees of where it runs (fastrnn/persistent.h, Ctx).
struct EmulatedCtx {
  int64_t block_, thread_, threads_;
  unsigned char* shared_;
  std::barrier<>* block_barrier;
  std::barrier<>* grid_barrier;
  index_t block() const { return static_cast<index_t>(block_); }
  index_t thread() const { return static_cast<index_t>(thread_); }
  index_t threads() const { return static_cast<index_t>(threads_); }
  void sync_block() const { block_barrier->arrive_and_wait(); }
  void sync_grid() const { grid_barrier->arrive_and_wait(); }
  template <typename T>
  T* shared() const {
    return reinterpret_cast<T*>(shared_);
  }
  template <typename T>
  void product(const T* A, const T* W, at::opmath_type<T>* partial, int64_t rows, const Product& pr, int64_t k0,
               int64_t kc) const {
    block_product(*this, A, W, partial, rows, pr, k0, kc);
  }
};

struct EmulationLauncher {
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };
  static Plan check_call(const char* op, const LayerSizes& s, const at::Tensor& x) {
    TORCH_CHECK(x.device().is_cpu(), op, ": the persistent kernel's emulation got x on ", x.device());
    Plan plan = make_plan(s, s.G, x.element_size(), emulated_device());
    TORCH_CHECK(plan.fits, op, ": the persistent kernel cannot run this call: ", plan.why);
    return plan;
  }
  static at::Tensor host_to_device(const at::Tensor& host, const at::Tensor&) { return host; }
  template <typename F>
  static void run(int64_t n, const F& f) {  // the engine's other per-element passes (none in the loop)
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) f(i);
    });
  }
  template <class Program>
  static void run_grid(const Program& program, const Plan& plan, int64_t shared_bytes) {
    const int64_t blocks = plan.blocks(), threads = plan.threads_per_block;
    // Shared memory as a kernel gets it: uninitialised (NaN-filled, so a read before the block wrote it shows).
    std::vector<std::unique_ptr<double[]>> shared(blocks);
    const int64_t words = (shared_bytes + 7) / 8;
    std::vector<std::unique_ptr<std::barrier<>>> block_barriers(blocks);
    for (int64_t b = 0; b < blocks; ++b) {
      shared[b] = std::make_unique<double[]>(words);
      std::fill_n(reinterpret_cast<unsigned char*>(shared[b].get()), words * 8, 0xFF);  // NaN in every float type
      block_barriers[b] = std::make_unique<std::barrier<>>(threads);
    }
    std::barrier<> grid_barrier(blocks * threads);
    std::vector<std::thread> pool;
    pool.reserve(blocks * threads);
    for (int64_t b = 0; b < blocks; ++b) {
      for (int64_t t = 0; t < threads; ++t) {
        const EmulatedCtx ctx{b, t, threads, reinterpret_cast<unsigned char*>(shared[b].get()),
                              block_barriers[b].get(), &grid_barrier};
        pool.emplace_back([&program, ctx] { program(ctx); });
      }
    }
    for (auto& t : pool) t.join();
  }
};

}  // namespace
}  // namespace persistent

namespace engine {

TORCH_LIBRARY(fastrnn_persistent_test, m) { define_layer_ops(m); }

TORCH_LIBRARY_IMPL(fastrnn_persistent_test, CPU, m) { register_ops<persistent::EmulationLauncher>(m); }

TORCH_LIBRARY_IMPL(fastrnn_persistent_test, BackendSelect, m) { register_device_checks(m); }

inline constexpr char kPersistentNamespace[] = "fastrnn_persistent_test";

TORCH_LIBRARY_IMPL(fastrnn_persistent_test, Autograd, m) {
  register_layer_autograd<kPersistentNamespace>(m);
  register_no_grad_autograd(m);
}

}  // namespace engine
}  // namespace fastrnn
