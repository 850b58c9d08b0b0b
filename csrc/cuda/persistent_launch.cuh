// The CUDA backend of the persistent kernel's block programs (fastrnn/persistent.h): the context they
// run in (block and thread indices, __syncthreads, the cooperative grid barrier, dynamic shared
// memory) and the cooperative launch. Everything else of the kernel is the shared block program,
// which the CPU emulation runs in the tests (csrc/cpu/persistent_emulation.cpp).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

#include "fastrnn/persistent.h"

namespace fastrnn {
namespace cuda {

// The block's dynamic shared memory (the launch's shared_bytes), aligned for wmma's 256-bit fragment loads
// (persistent::SharedTiles keeps each region's start a multiple of 512 bytes from here).
extern __shared__ __align__(128) unsigned char persistent_shared[];

// A chunk of the step's product on the tensor cores, for half and bfloat16, and float in TF32 (fp32
// accumulation): the contract of persistent::block_product, which the CPU emulation runs instead over the
// same padded tiles (rounding float operands to TF32 as __float_to_tf32 does). The warps take (16 x 16 tile
// of the output, split of the chunk's columns) pairs in turn; each runs its split's MMA steps (16 deep; TF32:
// 8) and stores its partial tile (zeros for a split with no columns left). Rows past `rows` up to the next
// tile are computed too (from whatever the row tile holds there) and never read.
// What it relies on: k_pad, n_pad, k_chunk and split_len are multiples of 16 (the plan pads them), the
// operands start 32-byte aligned (SharedTiles), A's padded columns and W's padded rows are zero.
template <typename scalar_t>
__device__ __forceinline__ void tensor_core_product(const scalar_t* A, const scalar_t* W, float* partial,
                                                    int64_t rows, const persistent::Product& pr, int64_t k0,
                                                    int64_t kc) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  constexpr bool kTf32 = std::is_same_v<scalar_t, float>;
  // In shared memory (at::Half, at::BFloat16: the same 16 bits as CUDA's types), and in the fragments.
  using stored = std::conditional_t<kTf32, float, std::conditional_t<std::is_same_v<scalar_t, at::Half>, __half,
                                                                     __nv_bfloat16>>;
  using element = std::conditional_t<kTf32, wmma::precision::tf32, stored>;
  constexpr unsigned kDepth = kTf32 ? 8 : 16;
  const stored* a = reinterpret_cast<const stored*>(A);
  const stored* w = reinterpret_cast<const stored*>(W) + k0 * pr.n_pad;
  const unsigned k_chunk = static_cast<unsigned>(pr.k_chunk), n_pad = static_cast<unsigned>(pr.n_pad);
  const unsigned splits = static_cast<unsigned>(pr.k_splits), len = static_cast<unsigned>(pr.split_len(kc));
  const unsigned k_end = static_cast<unsigned>(kc), slice = static_cast<unsigned>(pr.slice());
  const unsigned row_tiles = (static_cast<unsigned>(rows) + 15) / 16, col_tiles = n_pad / 16;
  for (unsigned job = threadIdx.x / 32; job < row_tiles * col_tiles * splits; job += blockDim.x / 32) {
    const unsigned split = job % splits, tile = job / splits, tm = tile / col_tiles, tn = tile % col_tiles;
    const unsigned begin = split * len, end = begin + len < k_end ? begin + len : k_end;
    wmma::fragment<wmma::accumulator, 16, 16, kDepth, float> c;
    wmma::fill_fragment(c, 0.0f);
    for (unsigned k = begin; k < end; k += kDepth) {
      wmma::fragment<wmma::matrix_a, 16, 16, kDepth, element, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, kDepth, element, wmma::row_major> fb;
      wmma::load_matrix_sync(fa, a + tm * 16 * k_chunk + k, k_chunk);
      wmma::load_matrix_sync(fb, w + k * n_pad + tn * 16, n_pad);
      if constexpr (kTf32) {  // the fragments hold floats: round them as the emulation does (to nearest)
        for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
        for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
      }
      wmma::mma_sync(c, fa, fb, c);
    }
    wmma::store_matrix_sync(partial + split * slice + tm * 16 * n_pad + tn * 16, c, n_pad, wmma::mem_row_major);
  }
#endif
}

// fastrnn/persistent.h's Ctx on the GPU. Host-device so that the programs' host-device operator() can
// call it; only the device instantiation is ever run (from persistent_kernel).
struct CudaCtx {
  FASTRNN_HOST_DEVICE persistent::index_t block() const {
#ifdef __CUDA_ARCH__
    return blockIdx.x;
#else
    return 0;
#endif
  }
  FASTRNN_HOST_DEVICE persistent::index_t thread() const {
#ifdef __CUDA_ARCH__
    return threadIdx.x;
#else
    return 0;
#endif
  }
  FASTRNN_HOST_DEVICE persistent::index_t threads() const {
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
  // Tensor cores from sm_80 for half and bfloat16 (wmma's bfloat16 needs it; one rule for both), and for
  // float where the plan says TF32 (the launcher asks for it only from sm_80): make_plan gives both 16 x 16
  // tiles. CUDA cores (persistent::block_product) otherwise.
  template <typename T>
  FASTRNN_HOST_DEVICE void product(const T* A, const T* W, at::opmath_type<T>* partial, int64_t rows,
                                   const persistent::Product& pr, int64_t k0, int64_t kc) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16> || std::is_same_v<T, float>) {
      if (pr.tile == persistent::kMmaTile && (sizeof(T) == 2 || pr.tf32)) {
        tensor_core_product(A, W, partial, rows, pr, k0, kc);
        return;
      }
    }
#endif
    persistent::block_product(*this, A, W, partial, rows, pr, k0, kc);
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
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  // The attribute is the kernel's, shared by every host thread: always the device's opt-in maximum (the
  // same value from every caller, so a concurrent call can never lower it below what this one needs; the
  // launch's own size below is what occupancy and the launch use).
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(prop->sharedMemPerBlockOptin)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel,
                                                               static_cast<int>(plan.threads_per_block),
                                                               static_cast<size_t>(shared_bytes)));
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
