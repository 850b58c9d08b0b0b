// The device-generic engine (fastrnn/engine.h) run on the CPU, registered as the test-only ops
// fastrnn_engine_test::* (same schemas as fastrnn::*). The CUDA ops run the same engine; here
// its logic (step order, lengths, projections, workspace layout, gradients) is checked against
// the CPU kernels on machines without a GPU (tests/test_engine.py). Not used by fastrnn itself.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fastrnn/autograd.h"
#include "fastrnn/device_checks.h"
#include "fastrnn/engine_ops.h"
#include "fastrnn/schemas.h"

namespace fastrnn {
namespace engine {
namespace {

struct CpuLauncher {
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };
  static persistent::Plan check_call(const char* op, const LayerSizes&, const at::Tensor& x) {
    TORCH_CHECK(x.device().is_cpu(), op, ": the CPU engine got x on ", x.device());
    return {};  // the stepwise loop (the persistent one: csrc/cpu/persistent_emulation.cpp)
  }
  template <class Program>
  static void run_grid(const Program&, const persistent::Plan&, int64_t) {
    TORCH_INTERNAL_ASSERT(false, "the stepwise engine ran the persistent loop");
  }
  static at::Tensor host_to_device(const at::Tensor& host, const at::Tensor&) { return host; }
  template <typename F>
  static void run(int64_t n, const F& f) {
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) f(i);
    });
  }
};

}  // namespace

TORCH_LIBRARY(fastrnn_engine_test, m) { define_layer_ops(m); }

TORCH_LIBRARY_IMPL(fastrnn_engine_test, CPU, m) { register_ops<CpuLauncher>(m); }

TORCH_LIBRARY_IMPL(fastrnn_engine_test, BackendSelect, m) { register_device_checks(m); }

inline constexpr char kEngineNamespace[] = "fastrnn_engine_test";

TORCH_LIBRARY_IMPL(fastrnn_engine_test, Autograd, m) {
  register_layer_autograd<kEngineNamespace>(m);
  register_no_grad_autograd(m);
}

}  // namespace engine
}  // namespace fastrnn
