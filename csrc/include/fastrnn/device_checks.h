// The devices of every tensor argument of every op, checked before the dispatcher picks a kernel
// (a kernel for the BackendSelect dispatch key, which runs on every call just before a backend's).
//
// Why not only in the kernels (checks.h): the dispatcher chooses the kernel from the union of the
// arguments' devices, the highest priority winning, and Meta ranks above CPU and CUDA. A call with
// x on the CPU and a single argument on meta (a parameter left there by load_state_dict(assign=True),
// a module built with device="meta") therefore never reaches the CPU kernel and its checks: it runs
// the Meta kernel, the fake of fastrnn/_ops.py, which checks nothing and returns uninitialised tensors
// on x's device (garbage, not an error). Here every tensor must be on x's device (lengths: on the CPU,
// where the kernels read it), with the kernels' wording; then the call goes on, unchanged, to the
// backend. Dtypes, shapes and strides are the kernels' checks (checks.h; every kernel makes its inputs
// contiguous). Calls with FakeTensors (torch.compile) are answered above this key and never come here.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>

#include "fastrnn/checks.h"
#include "fastrnn/schemas.h"

namespace fastrnn {

// A boxed kernel (one for every op: the arguments are read by their schema names, as the messages name them).
inline void check_argument_devices(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const auto first = stack->end() - static_cast<std::ptrdiff_t>(arguments.size());
  const std::string& op_name = op.schema().name();
  const at::Tensor* x = nullptr;
  for (size_t i = 0; i < arguments.size(); ++i) {
    if (arguments[i].name() == "x" && first[i].isTensor()) {
      x = &first[i].toTensor();
    }
  }
  TORCH_INTERNAL_ASSERT(x != nullptr, op_name, ": every fastrnn op has a tensor argument x");
  for (size_t i = 0; i < arguments.size(); ++i) {
    if (!first[i].isTensor()) {
      continue;  // None for an absent optional tensor, or a bool
    }
    const at::Tensor& t = first[i].toTensor();
    const std::string& name = arguments[i].name();
    if (name == "lengths") {
      TORCH_CHECK(t.device().is_cpu(), op_name, ": lengths must be on the CPU but is on ", t.device());
    } else {
      check_same_device(op_name.c_str(), name.c_str(), t, *x);
    }
  }
  op.redispatchBoxed(keys & c10::DispatchKeySet(c10::DispatchKeySet::FULL_AFTER, c10::DispatchKey::BackendSelect),
                     stack);
}

// m: a TORCH_LIBRARY_IMPL(namespace, BackendSelect, m) block.
inline void register_device_checks(torch::Library& m) {
  for (const char* name : kLayerOps) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&check_argument_devices>());
  }
}

}  // namespace fastrnn
