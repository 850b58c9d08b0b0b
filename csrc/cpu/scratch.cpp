// Scratch memory: see scratch.h.
#include "scratch.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>

#include <array>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fastrnn/layer_io.h"

namespace fastrnn {
namespace cpu {
namespace {

// One thread's buffers. Its own calls and empty_scratch_cache (from any thread) take the mutex:
// uncontended but for the moment the cache is emptied.
struct ThreadBuffers {
  std::mutex mutex;
  std::array<at::Tensor, kScratchSlots> slots;
};

// Every live thread's buffers, so that one call can free them all. Never destroyed: threads may
// exit after static destruction.
struct Registry {
  std::mutex mutex;
  std::vector<std::shared_ptr<ThreadBuffers>> threads;
};

Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}

// This thread's buffers, registered on first use and unregistered (and freed) when it exits.
ThreadBuffers& this_thread_buffers() {
  struct Registration {
    std::shared_ptr<ThreadBuffers> buffers = std::make_shared<ThreadBuffers>();
    Registration() {
      std::lock_guard<std::mutex> lock(registry().mutex);
      registry().threads.push_back(buffers);
    }
    ~Registration() {
      std::lock_guard<std::mutex> lock(registry().mutex);
      auto& threads = registry().threads;
      for (size_t i = 0; i < threads.size(); ++i) {
        if (threads[i] == buffers) {
          threads.erase(threads.begin() + static_cast<std::ptrdiff_t>(i));
          break;
        }
      }
    }
  };
  thread_local Registration registration;
  return *registration.buffers;
}

int64_t limit_from_environment() {
  const char* value = std::getenv("FASTRNN_SCRATCH_LIMIT_MB");
  if (value == nullptr || *value == '\0') {
    return kDefaultScratchLimitMB << 20;
  }
  char* end = nullptr;
  const long long mb = std::strtoll(value, &end, 10);
  TORCH_CHECK(end != value && *end == '\0' && mb >= 0 && mb <= (std::numeric_limits<int64_t>::max() >> 20),
              "fastrnn: FASTRNN_SCRATCH_LIMIT_MB must be a whole number of megabytes >= 0 (0: keep no buffer), "
              "got '", value, "'");
  return static_cast<int64_t>(mb) << 20;
}

// Every buffer of every thread, `visit`ed under both locks.
template <typename Visit>
void for_each_kept_buffer(Visit visit) {
  std::lock_guard<std::mutex> lock(registry().mutex);
  for (const auto& thread : registry().threads) {
    std::lock_guard<std::mutex> thread_lock(thread->mutex);
    for (at::Tensor& buffer : thread->slots) {
      if (buffer.defined()) {
        visit(buffer);
      }
    }
  }
}

}  // namespace

int64_t scratch_limit_bytes() {
  static const int64_t limit = limit_from_environment();
  return limit;
}

at::Tensor scratch(ScratchSlot slot, const at::Tensor& like, at::IntArrayRef sizes) {
  const int64_t bytes = c10::multiply_integers(sizes) * static_cast<int64_t>(like.element_size());
  at::Tensor buffer;
  if (bytes > scratch_limit_bytes()) {
    buffer = at::empty({bytes}, like.options().dtype(at::kByte));  // this call's only
  } else {
    ThreadBuffers& mine = this_thread_buffers();
    std::lock_guard<std::mutex> lock(mine.mutex);
    at::Tensor& kept = mine.slots[slot];
    if (!kept.defined() || kept.numel() < bytes) {
      kept = at::Tensor();  // free the smaller one first
      kept = at::empty({bytes}, like.options().dtype(at::kByte));
    }
    buffer = kept;
  }
  at::Tensor t = buffer.narrow(0, 0, bytes).view(like.scalar_type()).view(sizes);
  if (debug_poison()) {
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return t;
}

int64_t empty_scratch_cache() {
  int64_t freed = 0;
  for_each_kept_buffer([&](at::Tensor& buffer) {
    freed += buffer.numel();
    buffer = at::Tensor();
  });
  return freed;
}

int64_t scratch_bytes_kept() {
  int64_t kept = 0;
  for_each_kept_buffer([&](at::Tensor& buffer) { kept += buffer.numel(); });
  return kept;
}

}  // namespace cpu
}  // namespace fastrnn
