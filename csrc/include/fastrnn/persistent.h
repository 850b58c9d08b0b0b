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
//     int64_t block() const, thread() const, threads() const;  // this block, this thread, threads per block
//     void sync_block() const;  // every thread of this block (CUDA: __syncthreads)
//     void sync_grid() const;   // every thread of every block (CUDA: cooperative_groups grid sync)
//     template <typename T> T* shared() const;  // the block's shared memory
//   };
//
// CUDA runs them from csrc/cuda/persistent.cu; the CPU emulation (csrc/cpu/persistent_emulation.cpp,
// the test-only ops fastrnn_persistent_test::*) runs one host thread per thread of every block, with
// std::barrier for both barriers, so that the tests run this code, its indexing, its ownership of
// units and its barrier order, against the CPU kernels (tests/test_persistent.py).
//
// Per step, a block: loads a chunk of rows of the state every direction's blocks wrote at the last
// step (h, or backward's gate gradients) into shared memory; each thread takes elements (row b, unit
// j), multiplies the on-chip weight slice by the row (the step GEMM's slice, accumulated in
// at::opmath_type), and runs the engine's per-element functor (fastrnn/engine_steps.h: the gate math
// of fastrnn/cells.h, the outputs, what backward saves) for that element; then the grid barrier.
// Why one barrier per step is enough: forward, the state is double-buffered (step k reads h[k % 2]
// and writes h[(k + 1) % 2]; a block can only overwrite h[k % 2] at step k + 1, after every block has
// passed step k's barrier, so after every read of it); backward likewise with the step's recurrent
// gate gradients, while dL/dh and dL/dc of a unit are only ever read and written by the thread of
// its owning block that handles that (row, unit).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <string>

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
};

// Threads per block of the CUDA kernel: 8 warps, enough to hide shared-memory latency while a block's
// (row, unit) elements (at least one row chunk of U units) keep them busy.
inline constexpr int64_t kThreadsPerBlock = 256;

// The most rows of the state one block loads at a time (more rows: more shared memory, fewer block
// barriers per step).
inline constexpr int64_t kMaxRowChunk = 32;

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
  int64_t blocks_per_direction = 0, units_per_block = 0, threads_per_block = 0;
  int64_t forward_row_chunk = 0, backward_row_chunk = 0;  // rows of h / of the gate gradients per load
  int64_t element_bytes = 0;
  int64_t blocks() const { return D * blocks_per_direction; }
  // Shared memory per block: the weight slice, then a chunk of rows.
  int64_t weight_elements() const { return G * units_per_block * H; }
  int64_t forward_shared_bytes() const { return (weight_elements() + forward_row_chunk * H) * element_bytes; }
  int64_t backward_shared_bytes() const {
    return (weight_elements() + backward_row_chunk * G * H) * element_bytes;
  }
};

inline Plan make_plan(const LayerSizes& s, int64_t G, int64_t element_bytes, const DeviceLimits& dev) {
  Plan p;
  p.D = s.D, p.H = s.H, p.G = G, p.element_bytes = element_bytes, p.threads_per_block = dev.threads_per_block;
  if (s.proj) {
    p.why = "proj_size is not supported by the persistent kernel (the stepwise path runs it)";
    return p;
  }
  const int64_t max_blocks = dev.multiprocessors / s.D;
  if (max_blocks < 1 || s.H < 1) {
    p.why = "the device has " + std::to_string(dev.multiprocessors) + " multiprocessors for " +
            std::to_string(s.D) + " directions";
    return p;
  }
  // As many blocks as multiprocessors allow: the smallest slice per block, so the least arithmetic per step.
  p.units_per_block = (s.H + max_blocks - 1) / max_blocks;
  p.blocks_per_direction = (s.H + p.units_per_block - 1) / p.units_per_block;
  const int64_t weight_bytes = p.weight_elements() * element_bytes;
  const int64_t room = dev.shared_bytes_per_block - weight_bytes;
  const auto chunk = [&](int64_t row_elements) {
    return std::min<int64_t>({std::max<int64_t>(s.B, 1), kMaxRowChunk, room / (row_elements * element_bytes)});
  };
  p.forward_row_chunk = chunk(s.H);
  p.backward_row_chunk = chunk(G * s.H);
  if (room <= 0 || p.forward_row_chunk < 1 || p.backward_row_chunk < 1) {
    p.why = "the recurrent weight's slice (" + std::to_string(G) + " x " + std::to_string(p.units_per_block) +
            " x " + std::to_string(s.H) + " elements of " + std::to_string(element_bytes) + " bytes per block, " +
            std::to_string(p.blocks_per_direction) + " blocks per direction) and one row of the state need more " +
            "than the " + std::to_string(dev.shared_bytes_per_block) + " bytes of shared memory a block can have";
    return p;
  }
  p.fits = true;
  return p;
}

// ---------------------------------------------------------------- the block programs (host and device)

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

// The block's place in the grid: its direction and the units [j0, j0 + units) it owns.
struct Slice {
  int64_t d, j0, units;
  template <typename Ctx>
  FASTRNN_HOST_DEVICE static Slice of(const Ctx& ctx, int64_t blocks_per_direction, int64_t U, int64_t H) {
    const int64_t d = ctx.block() / blocks_per_direction, j0 = (ctx.block() % blocks_per_direction) * U;
    return {d, j0, j0 < H ? (H - j0 < U ? H - j0 : U) : 0};
  }
};

template <typename scalar_t, typename Cell>
struct ForwardProgram {
  using Forward = typename Cell::template Forward<scalar_t>;
  static constexpr int64_t G = Cell::kGates;
  int64_t T, B, H, D, blocks_per_direction, U, row_chunk;
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
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t GH = G * H;
    const Slice sl = Slice::of(ctx, blocks_per_direction, U, H);
    scalar_t* w = ctx.template shared<scalar_t>();  // [H, G, U]: w[(p * G + q) * U + u] = W_hh[q*H + j0 + u, p]
    scalar_t* h_rows = w + H * G * U;                // [row_chunk, H]
    for (int64_t i = ctx.thread(); i < H * G * sl.units; i += ctx.threads()) {
      const int64_t u = i % sl.units, q = (i / sl.units) % G, p = i / (sl.units * G);
      w[(p * G + q) * U + u] = w_hh[(sl.d * GH + q * H + sl.j0 + u) * H + p];
    }
    ctx.sync_block();
    const engine::Steps& st = steps[sl.d];
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = st.time(k), n = rows.count(t);
      scalar_t* h_prev = h[k & 1] + sl.d * B * H;
      scalar_t* hg_d = hg + sl.d * B * GH;
      const Forward cell{engine::ForwardStep<scalar_t>{
          st, t, H, H, xp + rows.first(t) * D * GH + sl.d * GH, D * GH, hg_d,
          b_hh ? b_hh + sl.d * GH : nullptr, h_prev, h[(k + 1) & 1] + sl.d * B * H, c ? c + sl.d * B * H : nullptr,
          nullptr, y + t * B * D * H + sl.d * H, D * H,
          saved ? saved + (sl.d * T + t) * B * Cell::kSaved * H : nullptr}};
      for (int64_t b0 = 0; b0 < n; b0 += row_chunk) {
        const int64_t chunk = n - b0 < row_chunk ? n - b0 : row_chunk;
        for (int64_t i = ctx.thread(); i < chunk * H; i += ctx.threads()) h_rows[i] = h_prev[b0 * H + i];
        ctx.sync_block();
        for (int64_t i = ctx.thread(); i < chunk * sl.units; i += ctx.threads()) {
          const int64_t r = i / sl.units, u = i % sl.units, b = b0 + r, j = sl.j0 + u;
          if (st.active(t, b)) {
            acc_t acc[G] = {};
            for (int64_t p = 0; p < H; ++p) {
              const acc_t hp = static_cast<acc_t>(h_rows[r * H + p]);
              for (int64_t q = 0; q < G; ++q) acc[q] += static_cast<acc_t>(w[(p * G + q) * U + u]) * hp;
            }
            for (int64_t q = 0; q < G; ++q) hg_d[b * GH + q * H + j] = static_cast<scalar_t>(acc[q]);
          }
          cell(b * H + j);
        }
        ctx.sync_block();  // before the next chunk overwrites h_rows
      }
      // Rows past the step's running ones: their state carries into the other buffer, y is zero.
      for (int64_t i = ctx.thread(); i < (B - n) * sl.units; i += ctx.threads()) {
        cell((n + i / sl.units) * H + sl.j0 + i % sl.units);
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

  // dL/dh of the owned units of rows [0, n) += (gate gradients of the step processed before) @ W_hh.
  template <typename Ctx>
  FASTRNN_HOST_DEVICE void add_recurrent(const Ctx& ctx, const Slice& sl, const scalar_t* w, scalar_t* g_rows,
                                         const scalar_t* dg, int64_t n) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t GH = G * H;
    for (int64_t b0 = 0; b0 < n; b0 += row_chunk) {
      const int64_t chunk = n - b0 < row_chunk ? n - b0 : row_chunk;
      for (int64_t i = ctx.thread(); i < chunk * GH; i += ctx.threads()) g_rows[i] = dg[b0 * GH + i];
      ctx.sync_block();
      for (int64_t i = ctx.thread(); i < chunk * sl.units; i += ctx.threads()) {
        const int64_t r = i / sl.units, u = i % sl.units;
        acc_t acc = static_cast<acc_t>(dh[(sl.d * B + b0 + r) * H + sl.j0 + u]);
        for (int64_t col = 0; col < GH; ++col) {
          acc += static_cast<acc_t>(g_rows[r * GH + col]) * static_cast<acc_t>(w[col * U + u]);
        }
        dh[(sl.d * B + b0 + r) * H + sl.j0 + u] = static_cast<scalar_t>(acc);
      }
      ctx.sync_block();
    }
  }

  template <typename Ctx>
  FASTRNN_HOST_DEVICE void operator()(const Ctx& ctx) const {
    const int64_t GH = G * H;
    const Slice sl = Slice::of(ctx, blocks_per_direction, U, H);
    scalar_t* w = ctx.template shared<scalar_t>();  // [G*H, U]: w[col * U + u] = W_hh[col, j0 + u]
    scalar_t* g_rows = w + GH * U;                   // [row_chunk, G*H]
    for (int64_t i = ctx.thread(); i < GH * sl.units; i += ctx.threads()) {
      const int64_t u = i % sl.units, col = i / sl.units;
      w[col * U + u] = w_hh[(sl.d * GH + col) * H + sl.j0 + u];
    }
    ctx.sync_block();
    const engine::Steps& st = steps[sl.d];
    for (int64_t k = T - 1; k >= 0; --k) {
      const int64_t t = st.time(k), n = rows.count(t), parity = (T - 1 - k) & 1;
      if (k < T - 1) add_recurrent(ctx, sl, w, g_rows, dgh[parity ^ 1] + sl.d * B * GH, rows.count(st.time(k + 1)));
      const int64_t compact = rows.first(t) * D;  // (t, 0)'s compact row, in units of one direction's width
      const Backward cell{engine::BackwardStep<scalar_t>{
          st, t, B, H, H, saved ? saved + sl.d * T * B * Cell::kSaved * H : nullptr, y + sl.d * H, gy + sl.d * H,
          D * H, h0 + sl.d * B * H, c0 ? c0 + sl.d * B * H : nullptr, dh + sl.d * B * H, nullptr,
          dh + sl.d * B * H, dc ? dc + sl.d * B * H : nullptr, dgx + (compact + sl.d) * GH, D * GH, n,
          dgh[parity] + sl.d * B * GH, dgh_all ? dgh_all + (compact + sl.d) * GH : nullptr, nullptr, D * H}};
      // Every row: a row past the step's running ones writes zero gate gradients (the next step's product
      // then adds nothing for it) and keeps its dL/dh.
      for (int64_t i = ctx.thread(); i < B * sl.units; i += ctx.threads()) {
        cell((i / sl.units) * H + sl.j0 + i % sl.units);
      }
      ctx.sync_grid();
    }
    // dL/dh0 = what bypasses W_hh at the first step + its gate gradients @ W_hh.
    if (T > 0) add_recurrent(ctx, sl, w, g_rows, dgh[(T - 1) & 1] + sl.d * B * GH, rows.count(st.time(0)));
  }
};

}  // namespace persistent
}  // namespace fastrnn
