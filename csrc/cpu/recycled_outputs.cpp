// Recycled output blocks: see recycled_outputs.h.
#include "recycled_outputs.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "scratch.h"

namespace fastrnn {
namespace cpu {
namespace {

// Each block starts with a header holding its size; the data follow at kHeader, so they keep the 64-byte
// alignment of c10::alloc_cpu.
constexpr size_t kHeader = 64;
constexpr size_t kRounding = 4096;  // a page: requests of nearly the same size share blocks

struct Pool {
  std::mutex mutex;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // by data size
  int64_t kept_bytes = 0;
};

// Never destroyed: outputs may die after static destruction.
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

size_t block_size(void* block) {
  size_t size;
  std::memcpy(&size, block, sizeof(size));
  return size;
}

// The deleter of every recycled output: its block is kept while the pool is under the limit, else freed.
void give_back(void* block) {
  const size_t size = block_size(block);
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    if (p.kept_bytes + static_cast<int64_t>(size) <= scratch_limit_bytes()) {
      p.free_blocks[size].push_back(block);
      p.kept_bytes += static_cast<int64_t>(size);
      return;
    }
  }
  c10::free_cpu(block);
}

class RecyclingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < static_cast<size_t>(kMinRecycledBytes)) {
      return c10::GetDefaultCPUAllocator()->allocate(n);
    }
    const size_t size = (n + kRounding - 1) / kRounding * kRounding;
    void* block = nullptr;
    {
      Pool& p = pool();
      std::lock_guard<std::mutex> lock(p.mutex);
      auto found = p.free_blocks.find(size);
      if (found != p.free_blocks.end() && !found->second.empty()) {
        block = found->second.back();
        found->second.pop_back();
        p.kept_bytes -= static_cast<int64_t>(size);
      }
    }
    if (block == nullptr) {
      block = c10::alloc_cpu(size + kHeader);
      std::memcpy(block, &size, sizeof(size));
    }
    return {static_cast<char*>(block) + kHeader, block, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

}  // namespace

c10::Allocator* recycling_allocator() {
  static RecyclingAllocator* allocator = new RecyclingAllocator;
  return allocator;
}

int64_t empty_recycled_outputs() {
  std::vector<void*> blocks;
  int64_t freed = 0;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    for (auto& [size, list] : p.free_blocks) blocks.insert(blocks.end(), list.begin(), list.end());
    p.free_blocks.clear();
    freed = p.kept_bytes;
    p.kept_bytes = 0;
  }
  for (void* block : blocks) c10::free_cpu(block);
  return freed;
}

int64_t recycled_output_bytes() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  return p.kept_bytes;
}

}  // namespace cpu
}  // namespace fastrnn
