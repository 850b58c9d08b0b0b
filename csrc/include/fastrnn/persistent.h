// The persistent recurrence (CUDA path "persistent", fastrnn/cuda_path.h): one cooperative launch
// runs a layer's whole time loop, both directions at once. Each block owns a slice of U hidden units
// of one direction and holds, in shared memory for every step, the rows of W_hh those units need:
// forward, the G gate rows of each owned unit ([H, G, U]: its step GEMM slice); backward, the
// columns of W_hh at the owned units ([G*H, U]: W_hh^T's rows, for dL/dh_{t-1} of those units).
// The state crosses blocks through global memory (L2), with one grid-wide barrier per step.
//
// The block programs below are written once, over a context that says where they run:
//
//   struct Ctx {
//     index_t block() const, thread() const, threads() const;  // this block, this thread, threads per block
//     void sync_block() const;  // every thread of this block (CUDA: __syncthreads)
//     void sync_grid() const;   // every thread of every block (CUDA: cooperative_groups grid sync)
//     template <typename T> T* shared() const;  // the block's shared memory
//     // A chunk of the step's product (block_product's contract): the tensor cores for half/bfloat16 on
//     // CUDA, block_product itself elsewhere (and always in the emulation).
//     template <typename T> void product(const T* A, const T* W, at::opmath_type<T>* partial, int64_t rows,
//                                        const Product& pr, int64_t k0, int64_t kc) const;
//   };
//
// CUDA runs them from csrc/cuda/persistent_launch.cuh (included by csrc/cuda/layers.cu); the CPU emulation (csrc/cpu/persistent_emulation.cpp,
// the test-only ops fastrnn_persistent_test::*) runs one host thread per thread of every block, with
// std::barrier for both barriers, so that the tests run this code, its indexing, its ownership of
// units and its barrier order, against the CPU kernels (tests/test_persistent.py).
//
// Per step, a block: loads a chunk of rows of the state every direction's blocks wrote at the last
// step (h, or backward's gate gradients) into shared memory; multiplies it by the on-chip weight slice
// (the step GEMM's slice, accumulated in at::opmath_type, into shared memory); then each thread takes
// elements (row b, unit j) and runs the engine's per-element functor (fastrnn/engine_steps.h: the gate
// math of fastrnn/cells.h, the outputs, what backward saves) for that element; then the grid barrier.
// Why one barrier per step is enough: forward, the state is double-buffered (step k reads h[k % 2]
// and writes h[(k + 1) % 2]; a block can only overwrite h[k % 2] at step k + 1, after every block has
// passed step k's barrier, so after every read of it); backward likewise with the step's recurrent
// gate gradients, while dL/dh and dL/dc of a unit are only ever read and written by its owning
// block (within a step, the thread that adds the recurrent part of dL/dh for a (row, unit) may differ
// from the one running that element's cell: the block barrier between the two orders them).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "fastrnn/checks.h"
#include "fastrnn/engine_steps.h"

namespace fastrnn {
namespace persistent {

// ---------------------------------------------------------------- the plan (host)

// What the plan needs to know of the device (CUDA: cudaDeviceProp; the emulation: set by the tests).
struct DeviceLimits {
  int64_t multiprocessors;         // SMs
  int64_t shared_bytes_per_block;  // the most dynamic shared memory one block may have (opt-in)
  int64_t threads_per_block;       // the program's block size
  int64_t max_row_chunk = 32;      // the most rows of the state a block loads at a time (tests make it small)
  int64_t tile = 0;                // float/double tiles' edge (Product::tile); 0: 1 (tests force 16)
  int64_t max_k_chunk = 0;         // the most columns of rows loaded at a time; 0: all (tests make it small)
  int64_t k_splits = 0;            // Product::k_splits; 0: chosen by the plan (tests force more)
  bool tf32 = false;               // float: the product in TF32 on the tensor cores (CUDA: sm_80+ and
                                   // torch.backends.cudnn.allow_tf32, as torch.nn's cuDNN RNNs; 16 x 16 tiles)
};

// Threads per block of the CUDA kernel: 8 warps, enough to hide shared-memory latency, and warps for
// the tensor-core tiles of a step's product.
inline constexpr int64_t kThreadsPerBlock = 256;

// The tile edge of a step's product in half and bfloat16 (and float in TF32): the shape of a tensor-core
// MMA (wmma 16 x 16 x 16; TF32's 16 x 16 x 8 twice), to which the operands in shared memory are
// zero-padded. float in IEEE and double run on CUDA cores: no padding (tile 1), so more of the weight fits.
inline constexpr int64_t kMmaTile = 16;

// Indices within one block's work: its tiles (within its shared memory), its rows x units (make_plan keeps
// B * G * H under 2^31). 32 bits: on the GPU a 64-bit division is a called subroutine.
using index_t = int32_t;

FASTRNN_HOST_DEVICE inline int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// A step's product in one block: acc [rows, n_pad] = A [rows, k_pad] @ W [k_pad, n_pad], A a chunk of
// rows of the state (forward: h, K = H; backward: the gate gradients, K = G*H), W the block's on-chip
// weight slice (forward: N = G*U gate columns; backward: N = U units); k_pad, n_pad and the rows' tile
// are K, N and the chunk's rows rounded up to `tile`.
//
// A is loaded k_chunk columns at a time (so a wide K, backward's 4H, needs no tile of whole rows), and
// each chunk's product is split along K into k_splits partial sums (so that more warps work on a few
// output tiles: a tile's MMA chain is k / 16 steps long), which block_sum then adds into acc.
struct Product {
  int64_t k_pad = 0, n_pad = 0, tile = 1, k_chunk = 0, k_splits = 1;
  int64_t row_tile_rows = 0;  // the rows of the tiles of A, acc and each partial sum: the row chunk, rounded up
  bool tf32 = false;          // float operands rounded to TF32 (10 mantissa bits), products summed in float
  FASTRNN_HOST_DEVICE int64_t slice() const { return row_tile_rows * n_pad; }  // one partial sum's elements
  // Columns [k0, k0 + k_chunk_at(k0)) form the chunk starting at k0; each split takes split_len of them.
  FASTRNN_HOST_DEVICE int64_t k_chunk_at(int64_t k0) const { return k_pad - k0 < k_chunk ? k_pad - k0 : k_chunk; }
  FASTRNN_HOST_DEVICE int64_t split_len(int64_t kc) const { return round_up((kc + k_splits - 1) / k_splits, tile); }
  int64_t shared_bytes(int64_t element_bytes, int64_t acc_bytes) const {
    return (k_pad * n_pad + row_tile_rows * k_chunk) * element_bytes + (1 + k_splits) * slice() * acc_bytes;
  }
};

// How a call is split over the grid, or why it cannot run persistently.
//
// Residency (a cooperative launch needs every block resident at once): one block per multiprocessor
// at most (D * blocks_per_direction <= multiprocessors); its shared memory is within the per-block
// limit, which on sm_80/sm_90 is the multiprocessor's whole capacity less what the system keeps;
// threads_per_block <= 1024; so one block fits on each SM whatever its registers (a block of 256
// threads can use 255 registers each: 65280 <= 65536). The CUDA launcher checks it again with
// cudaOccupancyMaxActiveBlocksPerMultiprocessor before it launches.
struct Plan {
  bool fits = false;
  std::string why;  // when it does not fit
  int64_t D = 0, H = 0, G = 0;
  int64_t blocks_per_direction = 0, units_per_block = 0, threads_per_block = 0, row_chunk = 0;
  int64_t element_bytes = 0, acc_bytes = 0;
  Product forward, backward;
  int64_t blocks() const { return D * blocks_per_direction; }
  int64_t forward_shared_bytes() const { return forward.shared_bytes(element_bytes, acc_bytes); }
  int64_t backward_shared_bytes() const { return backward.shared_bytes(element_bytes, acc_bytes); }
};

inline Plan make_plan(const LayerSizes& s, int64_t G, int64_t element_bytes, const DeviceLimits& dev) {
  Plan p;
  p.D = s.D, p.H = s.H, p.G = G, p.element_bytes = element_bytes, p.threads_per_block = dev.threads_per_block;
  p.acc_bytes = element_bytes == 8 ? 8 : 4;  // at::opmath_type: double for double, else float
  if (s.proj) {
    p.why = "proj_size is not supported by the persistent kernel (the stepwise path runs it)";
    return p;
  }
  if (s.B * G * s.H >= (int64_t{1} << 31)) {
    p.why = "B * G * H = " + std::to_string(s.B * G * s.H) + " is 2^31 or more (the kernel's indices are 32-bit)";
    return p;
  }
  const int64_t max_blocks = dev.multiprocessors / s.D;
  if (max_blocks < 1 || s.H < 1) {
    p.why = "the device has " + std::to_string(dev.multiprocessors) + " multiprocessors for " +
            std::to_string(s.D) + " directions";
    return p;
  }
  // As many blocks as multiprocessors allow: the smallest slice per block, so the least arithmetic per step.
  const int64_t U = (s.H + max_blocks - 1) / max_blocks;
  p.units_per_block = U;
  p.blocks_per_direction = (s.H + U - 1) / U;
  const bool tf32 = element_bytes == 4 && dev.tf32;
  const int64_t tile = element_bytes == 2 || tf32 ? kMmaTile : (dev.tile > 0 ? dev.tile : 1);
  // Each product's chunks and splits for a row chunk of `rows`: the whole K at once where it fits, else
  // halved (in whole tiles); then as many K splits as leave no warp (thread, on CUDA cores) idle, each at
  // least one 16-deep step (32 FMAs on CUDA cores), if their partial sums fit too.
  const auto shape = [&](Product& pr, int64_t K, int64_t N, int64_t rows) {
    pr = Product{round_up(K, tile), round_up(N, tile), tile, 0, 1, round_up(rows, tile), tf32};
    pr.k_chunk = dev.max_k_chunk > 0 ? std::min(pr.k_pad, round_up(dev.max_k_chunk, tile)) : pr.k_pad;
    while (pr.shared_bytes(element_bytes, p.acc_bytes) > dev.shared_bytes_per_block && pr.k_chunk > tile) {
      pr.k_chunk = round_up(pr.k_chunk / 2, tile);
    }
    if (dev.k_splits > 0) {
      pr.k_splits = dev.k_splits;
    } else {
      const int64_t workers = tile == kMmaTile ? dev.threads_per_block / 32 : dev.threads_per_block;
      const int64_t outputs = (pr.row_tile_rows / tile) * (pr.n_pad / tile);
      const int64_t min_len = tile == kMmaTile ? kMmaTile : 32;
      pr.k_splits = std::max<int64_t>(1, std::min(workers / std::max<int64_t>(outputs, 1), pr.k_chunk / min_len));
      while (pr.k_splits > 1 && pr.shared_bytes(element_bytes, p.acc_bytes) > dev.shared_bytes_per_block) {
        pr.k_splits /= 2;
      }
    }
    return pr.shared_bytes(element_bytes, p.acc_bytes) <= dev.shared_bytes_per_block;
  };
  // The most rows per chunk that fit: halved while that saves shared memory (below one tile it does not).
  const auto fits = [&](int64_t rows) {
    const bool forward_fits = shape(p.forward, s.H, G * U, rows);
    const bool backward_fits = shape(p.backward, G * s.H, U, rows);
    return forward_fits && backward_fits;
  };
  p.row_chunk = std::max<int64_t>(1, std::min(s.B, dev.max_row_chunk));
  while (!fits(p.row_chunk) && p.row_chunk > 1 && round_up(p.row_chunk / 2, tile) < round_up(p.row_chunk, tile)) {
    p.row_chunk /= 2;
  }
  if (!fits(p.row_chunk)) {
    p.why = "the recurrent weight's slice (" + std::to_string(G) + " x " + std::to_string(U) + " x " +
            std::to_string(s.H) + " elements of " + std::to_string(element_bytes) + " bytes per block, " +
            std::to_string(p.blocks_per_direction) + " blocks per direction) and the smallest tiles of rows need " +
            std::to_string(std::max(p.forward_shared_bytes(), p.backward_shared_bytes())) +
            " bytes of shared memory, more than the " + std::to_string(dev.shared_bytes_per_block) +
            " a block can have";
    return p;
  }
  p.fits = true;
  return p;
}

// ---------------------------------------------------------------- the block programs (host and device)

// A float rounded to TF32 as the tensor cores take it (CUDA: wmma::__float_to_tf32, cvt.rna.tf32.f32): to
// nearest, ties away from zero, keeping 10 mantissa bits; NaN and infinity as they are.
FASTRNN_HOST_DEVICE inline float round_to_tf32(float x) {
  uint32_t bits;
  __builtin_memcpy(&bits, &x, sizeof(bits));
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
  __builtin_memcpy(&x, &bits, sizeof(bits));
  return x;
}

// An operand of the step's product as the product multiplies it (TF32 when the plan says so).
template <typename scalar_t>
FASTRNN_HOST_DEVICE inline at::opmath_type<scalar_t> product_operand(scalar_t x, const Product& pr) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (pr.tf32) return round_to_tf32(x);
  }
  return static_cast<at::opmath_type<scalar_t>>(x);
}

// The step's product where no tensor core serves (float, double; the CPU emulation always), for the chunk
// of columns [k0, k0 + kc) loaded in A ([row tile, k_chunk]): partial[s] [rows, n_pad] = the sum over split
// s's columns of A times W's rows k0 + those columns. Each thread computes whole elements of one partial sum.
// Contract (the tensor-core version's too): every element of partial[s] for r < rows, n < n_pad, s <
// k_splits (a split with no columns left writes zeros); rows past `rows` up to the row tile may be written
// with anything.
template <typename Ctx, typename scalar_t>
FASTRNN_HOST_DEVICE void block_product(const Ctx& ctx, const scalar_t* A, const scalar_t* W,
                                       at::opmath_type<scalar_t>* partial, int64_t rows, const Product& pr,
                                       int64_t k0, int64_t kc) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t n_pad = static_cast<index_t>(pr.n_pad), k_chunk = static_cast<index_t>(pr.k_chunk);
  const index_t len = static_cast<index_t>(pr.split_len(kc)), per_split = static_cast<index_t>(rows) * n_pad;
  const index_t slice = static_cast<index_t>(pr.slice()), k_end = static_cast<index_t>(kc);
  for (index_t i = ctx.thread(); i < static_cast<index_t>(pr.k_splits) * per_split; i += ctx.threads()) {
    const index_t split = i / per_split, r = (i % per_split) / n_pad, n = i % n_pad;
    const index_t begin = split * len, end = begin + len < k_end ? begin + len : k_end;
    acc_t sum = 0;
    for (index_t k = begin; k < end; ++k) {
      sum += product_operand(A[r * k_chunk + k], pr) * product_operand(W[(k0 + k) * n_pad + n], pr);
    }
    partial[split * slice + r * n_pad + n] = sum;
  }
}

// acc (+)= the partial sums of a chunk's product (=: for the first chunk), rows [0, rows).
template <typename Ctx, typename acc_t>
FASTRNN_HOST_DEVICE void block_sum(const Ctx& ctx, acc_t* acc, const acc_t* partial, int64_t rows, const Product& pr,
                                   bool first) {
  const index_t count = static_cast<index_t>(rows * pr.n_pad), slice = static_cast<index_t>(pr.slice());
  const index_t splits = static_cast<index_t>(pr.k_splits);
  for (index_t i = ctx.thread(); i < count; i += ctx.threads()) {
    acc_t sum = first ? acc_t(0) : acc[i];
    for (index_t split = 0; split < splits; ++split) sum += partial[split * slice + i];
    acc[i] = sum;
  }
}

// Where direction d's blocks find a step's rows: with variable lengths, step t runs its first rows[t]
// rows, and its compact rows (xp, dgx) start at offset[t] (engine.h RealRows, on the device); without,
// every row, at t * B.
struct StepRows {
  const int64_t* rows;    // [T] or nullptr
  const int64_t* offset;  // [T] or nullptr
  int64_t B;
  FASTRNN_HOST_DEVICE int64_t count(int64_t t) const { return rows ? rows[t] : B; }
  FASTRNN_HOST_DEVICE int64_t first(int64_t t) const { return offset ? offset[t] : t * B; }
};

// The block's place in the grid: its direction and the units [j0, j0 + units) it owns (the last block of a
// direction may own fewer than U).
struct Slice {
  int64_t d, j0, units;
  template <typename Ctx>
  FASTRNN_HOST_DEVICE static Slice of(const Ctx& ctx, int64_t blocks_per_direction, int64_t U, int64_t H) {
    const index_t per_direction = static_cast<index_t>(blocks_per_direction);
    const int64_t d = ctx.block() / per_direction, j0 = static_cast<int64_t>(ctx.block() % per_direction) * U;
    return {d, j0, j0 < H ? (H - j0 < U ? H - j0 : U) : 0};
  }
};

// The block's shared memory: the weight slice [k_pad, n_pad], a chunk of rows and columns [row tile,
// k_chunk], the product [row tile, n_pad] and its k_splits partial sums [k_splits, row tile, n_pad]. Half and
// bfloat16 (always tile 16): each region's size is a multiple of 512 bytes, so each starts aligned for MMA
// fragments when the base is. float and double: the product, in the element type itself, follows regions
// of whole elements.
template <typename scalar_t>
struct SharedTiles {
  using acc_t = at::opmath_type<scalar_t>;
  scalar_t* w;
  scalar_t* a;
  acc_t* acc;
  acc_t* partial;
  template <typename Ctx>
  FASTRNN_HOST_DEVICE static SharedTiles carve(const Ctx& ctx, const Product& pr) {
    scalar_t* w = ctx.template shared<scalar_t>();
    scalar_t* a = w + pr.k_pad * pr.n_pad;
    acc_t* acc = reinterpret_cast<acc_t*>(a + pr.row_tile_rows * pr.k_chunk);
    return {w, a, acc, acc + pr.slice()};
  }
};

// One chunk of rows times the weight slice, into acc [rows, n_pad]: chunk by chunk of columns, each loaded
// from src (rows of K elements, row stride K) into the row tile, zero past K (zero times the weight's zero
// padding: a NaN left in shared memory must not enter a sum), multiplied (ctx.product), and summed. Ends
// with a block barrier: acc is ready for every thread.
template <typename Ctx, typename scalar_t>
FASTRNN_HOST_DEVICE void rows_times_weight(const Ctx& ctx, const SharedTiles<scalar_t>& sh, const scalar_t* src,
                                           int64_t rows, int64_t K, const Product& pr) {
  const index_t k_chunk = static_cast<index_t>(pr.k_chunk);
  for (int64_t k0 = 0; k0 < pr.k_pad; k0 += pr.k_chunk) {
    const int64_t kc = pr.k_chunk_at(k0);
    for (index_t i = ctx.thread(); i < static_cast<index_t>(rows) * k_chunk; i += ctx.threads()) {
      const index_t r = i / k_chunk, k = i % k_chunk;
      sh.a[i] = k0 + k < K ? src[r * K + k0 + k] : scalar_t(0);
    }
    ctx.sync_block();
    ctx.product(sh.a, sh.w, sh.partial, rows, pr, k0, kc);
    ctx.sync_block();
    block_sum(ctx, sh.acc, sh.partial, rows, pr, k0 == 0);
    ctx.sync_block();  // acc complete; and the next chunk may overwrite the row tile and the partial sums
  }
}

template <typename scalar_t, typename Cell>
struct ForwardProgram {
  using Forward = typename Cell::template Forward<scalar_t>;
  static constexpr int64_t G = Cell::kGates;
  int64_t T, B, H, D, blocks_per_direction, U, row_chunk;
  Product product;       // K = H, N = G*U
  engine::Steps steps[2];
  StepRows rows;
  const scalar_t* xp;    // [N, D*G*H]: W_ih x + b_ih over the compact rows
  const scalar_t* w_hh;  // [D, G*H, H]
  const scalar_t* b_hh;  // [D, G*H] or nullptr
  scalar_t* h[2];        // [D, B, H] each, both starting at h0; step k reads h[k % 2], writes h[(k + 1) % 2]
  scalar_t* hg;          // [D, B, G*H]: the step's recurrent products, each element read back by its writer only
  scalar_t* c;           // [D, B, H] (LSTM), updated in place, or nullptr
  scalar_t* y;           // [T, B, D*H]
  scalar_t* saved;       // [D, T, B, kSaved*H] or nullptr

  template <typename Ctx>
  FASTRNN_HOST_DEVICE void operator()(const Ctx& ctx) const {
    const int64_t GH = G * H;
    const Slice sl = Slice::of(ctx, blocks_per_direction, U, H);
    const SharedTiles<scalar_t> sh = SharedTiles<scalar_t>::carve(ctx, product);
    // w[p, q*U + u] = W_hh[q*H + j0 + u, p]; zero where p >= H or u >= the block's units.
    const index_t n_pad = static_cast<index_t>(product.n_pad), units = static_cast<index_t>(sl.units);
    for (index_t i = ctx.thread(); i < static_cast<index_t>(product.k_pad) * n_pad; i += ctx.threads()) {
      const index_t p = i / n_pad, n = i % n_pad, q = n / static_cast<index_t>(U), u = n % static_cast<index_t>(U);
      sh.w[i] = p < H && q < G && u < sl.units ? w_hh[(sl.d * GH + q * H + sl.j0 + u) * H + p] : scalar_t(0);
    }
    ctx.sync_block();
    const engine::Steps& st = steps[sl.d];
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = st.time(k), n = rows.count(t);
      const scalar_t* h_prev = h[k & 1] + sl.d * B * H;
      scalar_t* hg_d = hg + sl.d * B * GH;
      const Forward cell{engine::ForwardStep<scalar_t>{
          st, t, H, H, xp + rows.first(t) * D * GH + sl.d * GH, D * GH, hg_d, b_hh ? b_hh + sl.d * GH : nullptr,
          h_prev, h[(k + 1) & 1] + sl.d * B * H, c ? c + sl.d * B * H : nullptr, nullptr,
          y + t * B * D * H + sl.d * H, D * H, saved ? saved + (sl.d * T + t) * B * Cell::kSaved * H : nullptr}};
      for (int64_t b0 = 0; b0 < n; b0 += row_chunk) {
        const int64_t chunk = n - b0 < row_chunk ? n - b0 : row_chunk;
        rows_times_weight(ctx, sh, h_prev + b0 * H, chunk, H, product);
        for (index_t i = ctx.thread(); i < static_cast<index_t>(chunk) * units; i += ctx.threads()) {
          const index_t r = i / units, u = i % units;
          const int64_t b = b0 + r, j = sl.j0 + u;
          if (st.active(t, b)) {
            for (int64_t q = 0; q < G; ++q) {
              hg_d[b * GH + q * H + j] = static_cast<scalar_t>(sh.acc[r * product.n_pad + q * U + u]);
            }
          }
          cell.element(b, j);
        }
        ctx.sync_block();  // every thread has read acc before the next chunk's product overwrites it
      }
      // Rows past the step's running ones: their state carries into the other buffer, y is zero.
      for (index_t i = ctx.thread(); i < static_cast<index_t>(B - n) * units; i += ctx.threads()) {
        cell.element(n + i / units, sl.j0 + i % units);
      }
      ctx.sync_grid();
    }
  }
};

template <typename scalar_t, typename Cell>
struct BackwardProgram {
  using Backward = typename Cell::template Backward<scalar_t>;
  static constexpr int64_t G = Cell::kGates;
  int64_t T, B, H, D, blocks_per_direction, U, row_chunk;
  Product product;        // K = G*H, N = U
  engine::Steps steps[2];
  StepRows rows;
  const scalar_t* w_hh;   // [D, G*H, H]
  const scalar_t* saved;  // [D, T, B, kSaved*H] or nullptr (RNN)
  const scalar_t* y;      // [T, B, D*H]
  const scalar_t* gy;     // grad_y, y's layout
  const scalar_t* h0;     // [D, B, H]
  const scalar_t* c0;     // [D, B, H] (LSTM) or nullptr
  scalar_t* dh;           // [D, B, H]: dL/dh, starting at grad_hn, in place; grad_h0 at the end
  scalar_t* dc;           // [D, B, H] (LSTM): dL/dc, starting at grad_cn, in place; or nullptr
  scalar_t* dgh[2];       // [D, B, G*H] each: the recurrent gate gradients of the step processed, by parity
  scalar_t* dgx;          // [N, D*G*H] (compact rows)
  scalar_t* dgh_all;      // [N, D*G*H] (GRU) or nullptr

  // dL/dh of the owned units of rows [0, n) += (gate gradients dg of the step processed before) @ W_hh.
  template <typename Ctx>
  FASTRNN_HOST_DEVICE void add_recurrent(const Ctx& ctx, const Slice& sl, const SharedTiles<scalar_t>& sh,
                                         const scalar_t* dg, int64_t n) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t GH = G * H;
    const index_t units = static_cast<index_t>(sl.units), n_pad = static_cast<index_t>(product.n_pad);
    for (int64_t b0 = 0; b0 < n; b0 += row_chunk) {
      const int64_t chunk = n - b0 < row_chunk ? n - b0 : row_chunk;
      rows_times_weight(ctx, sh, dg + b0 * GH, chunk, GH, product);
      for (index_t i = ctx.thread(); i < static_cast<index_t>(chunk) * units; i += ctx.threads()) {
        const index_t r = i / units, u = i % units;
        scalar_t& d = dh[(sl.d * B + b0 + r) * H + sl.j0 + u];
        d = static_cast<scalar_t>(static_cast<acc_t>(d) + sh.acc[r * n_pad + u]);
      }
      ctx.sync_block();  // every thread has read acc before the next chunk's product overwrites it
    }
  }

  template <typename Ctx>
  FASTRNN_HOST_DEVICE void operator()(const Ctx& ctx) const {
    const int64_t GH = G * H;
    const Slice sl = Slice::of(ctx, blocks_per_direction, U, H);
    const SharedTiles<scalar_t> sh = SharedTiles<scalar_t>::carve(ctx, product);
    // w[col, u] = W_hh[col, j0 + u] (W_hh^T's rows of the owned units); zero where col >= G*H or u >= units.
    const index_t n_pad = static_cast<index_t>(product.n_pad), units = static_cast<index_t>(sl.units);
    for (index_t i = ctx.thread(); i < static_cast<index_t>(product.k_pad) * n_pad; i += ctx.threads()) {
      const index_t col = i / n_pad, u = i % n_pad;
      sh.w[i] = col < GH && u < sl.units ? w_hh[(sl.d * GH + col) * H + sl.j0 + u] : scalar_t(0);
    }
    ctx.sync_block();
    const engine::Steps& st = steps[sl.d];
    for (int64_t k = T - 1; k >= 0; --k) {
      const int64_t t = st.time(k), n = rows.count(t), parity = (T - 1 - k) & 1;
      if (k < T - 1) add_recurrent(ctx, sl, sh, dgh[parity ^ 1] + sl.d * B * GH, rows.count(st.time(k + 1)));
      const int64_t compact = rows.first(t) * D;  // (t, 0)'s compact row, in units of one direction's width
      const Backward cell{engine::BackwardStep<scalar_t>{
          st, t, B, H, H, saved ? saved + sl.d * T * B * Cell::kSaved * H : nullptr, y + sl.d * H, gy + sl.d * H,
          D * H, h0 + sl.d * B * H, c0 ? c0 + sl.d * B * H : nullptr, dh + sl.d * B * H, nullptr,
          dh + sl.d * B * H, dc ? dc + sl.d * B * H : nullptr, dgx + (compact + sl.d) * GH, D * GH, n,
          dgh[parity] + sl.d * B * GH, dgh_all ? dgh_all + (compact + sl.d) * GH : nullptr, nullptr, D * H}};
      // Every row: a row past the step's running ones writes zero gate gradients (the next step's product
      // then adds nothing for it) and keeps its dL/dh.
      for (index_t i = ctx.thread(); i < static_cast<index_t>(B) * units; i += ctx.threads()) {
        cell.element(i / units, sl.j0 + i % units);
      }
      ctx.sync_grid();
    }
    // dL/dh0 = what bypasses W_hh at the first step + its gate gradients @ W_hh.
    if (T > 0) add_recurrent(ctx, sl, sh, dgh[(T - 1) & 1] + sl.d * B * GH, rows.count(st.time(0)));
  }
};

}  // namespace persistent
}  // namespace fastrnn
