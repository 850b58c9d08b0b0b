// The CUDA backend of the persistent kernel's block programs (fastrnn/persistent.h): the context they
// run in (block and thread indices, __syncthreads, the cooperative grid barrier, dynamic shared
// memory) and the cooperative launch. Everything else of the kernel is the shared block program,
// which the CPU emulation runs in the tests (csrc/cpu/persistent_emulation.cpp).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>

#include "fastrnn/persistent.h"

namespace fastrnn {
namespace cuda {

// The block's dynamic shared memory (the launch's shared_bytes): 16-byte aligned for any element type.
extern __shared__ __align__(16) unsigned char persistent_shared[];

// fastrnn/persistent.h's Ctx on the GPU. Host-device so that the programs' host-device operator() can
// call it; only the device instantiation is ever run (from persistent_kernel).
struct CudaCtx {
  FASTRNN_HOST_DEVICE int64_t block() const {
#ifdef __CUDA_ARCH__
    return blockIdx.x;
#else
    return 0;
#endif
  }
  FASTRNN_HOST_DEVICE int64_t thread() const {
#ifdef __CUDA_ARCH__
    return threadIdx.x;
#else
    return 0;
#endif
  }
  FASTRNN_HOST_DEVICE int64_t threads() const {
#ifdef __CUDA_ARCH__
    return blockDim.x;
#else
    return 1;
#endif
  }
  // Must: every thread of the block arrives, and their shared-memory writes before it are visible to all
  // after it (both hold for __syncthreads in code every thread of the block reaches: the programs' loop
  // bounds depend only on the block, never on the thread).
  FASTRNN_HOST_DEVICE void sync_block() const {
#ifdef __CUDA_ARCH__
    __syncthreads();
#endif
  }
  // Must: every thread of every block arrives, and global-memory writes before it are visible to every
  // block after it. grid_group::sync() guarantees both when the kernel was launched with
  // cudaLaunchCooperativeKernel (which fails, rather than deadlocks, if the grid cannot be co-resident).
  FASTRNN_HOST_DEVICE void sync_grid() const {
#ifdef __CUDA_ARCH__
    cooperative_groups::this_grid().sync();
#endif
  }
  template <typename T>
  FASTRNN_HOST_DEVICE T* shared() const {
#ifdef __CUDA_ARCH__
    return reinterpret_cast<T*>(persistent_shared);
#else
    return nullptr;
#endif
  }
};

template <class Program>
__global__ void __launch_bounds__(persistent::kThreadsPerBlock) persistent_kernel(const Program program) {
  program(CudaCtx{});
}

// One cooperative launch of the program over plan.blocks() blocks on the current stream. The grid is
// one block per multiprocessor at most (persistent::make_plan); the occupancy query below confirms that
// every block can be resident with this kernel's registers and shared memory before it launches.
template <class Program>
void launch_persistent(const char* op, const Program& program, const persistent::Plan& plan, int64_t shared_bytes) {
  const auto kernel = persistent_kernel<Program>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(shared_bytes)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel,
                                                               static_cast<int>(plan.threads_per_block),
                                                               static_cast<size_t>(shared_bytes)));
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(static_cast<int64_t>(per_sm) * prop->multiProcessorCount >= plan.blocks(), op,
              ": FASTRNN_CUDA_PATH=persistent, but the persistent kernel's ", plan.blocks(),
              " blocks cannot all be resident: ", per_sm, " per multiprocessor with ", shared_bytes,
              " bytes of shared memory, on ", prop->multiProcessorCount, " multiprocessors");
  void* args[] = {const_cast<Program*>(&program)};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel),
                                             dim3(static_cast<unsigned>(plan.blocks())),
                                             dim3(static_cast<unsigned>(plan.threads_per_block)), args,
                                             static_cast<size_t>(shared_bytes), c10::cuda::getCurrentCUDAStream()));
}

}  // namespace cuda
}  // namespace fastrnn
