// The CPU recurrence engine shared by every cell (LSTM, GRU, RNN-tanh, RNN-relu).
//
// One call runs one layer over the whole sequence for D = 1 or 2 directions. The input
// projection W_ih x + b_ih is computed here: one GEMM before the loop, or, for small steps,
// a block of steps at a time on a second thread while the steps run (PipelinePlan). Per step:
// one recurrent GEMM into a preallocated gates buffer, then one fused pointwise pass over
// the batch (bias, activations, state update, saving what backward needs). Backward runs
// the fused pointwise backward and one GEMM per step, and the weight gradients as single
// GEMMs over all steps after the loop. Nothing is allocated inside the time loop.
//
// A Cell trait (below) says what differs between cells: gate count, what the workspace holds,
// and which pointwise kernels (pointwise.h, built per CPU capability) run one batch row.
//
// Variable lengths: sequence b is active at step t iff t < lengths[b]. It stops updating
// its state after its length, its outputs there are zero, and the reverse direction starts
// it at its own last element t = lengths[b] - 1 from h0/c0. With lengths sorted
// decreasingly (PackedSequence order) only the first active_rows[t] rows enter the GEMMs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/accumulate.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <thread>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastrnn/cells.h"
#include "fastrnn/checks.h"
#include "fastrnn/layer_io.h"
#include "panel_gemm.h"
#include "recycled_outputs.h"
#include "scratch.h"
#include "rows.h"

namespace fastrnn {
namespace cpu {

// Rows per task for at::parallel_for: enough work per task to pay for the thread hand-off.
inline int64_t row_grain(int64_t work_per_row) {
  constexpr int64_t kMinWorkPerTask = 16384;
  return std::max<int64_t>(1, kMinWorkPerTask / std::max<int64_t>(1, work_per_row));
}

// The Fortran BLAS entries of the BLAS that torch links (MKL in the x86 wheels), declared
// weak: where torch does not export them, they are null and gemm() goes through at::mm.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

template <typename scalar_t>
inline bool blas_call(char ta, char tb, int m, int n, int k, const scalar_t* B, int ldb, const scalar_t* A, int lda,
                      scalar_t beta, scalar_t* C, int ldc) {
  const scalar_t one = 1;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (sgemm_ == nullptr) return false;
    sgemm_(&tb, &ta, &m, &n, &k, &one, B, &ldb, A, &lda, &beta, C, &ldc);
    return true;
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    if (dgemm_ == nullptr) return false;
    dgemm_(&tb, &ta, &m, &n, &k, &one, B, &ldb, A, &lda, &beta, C, &ldc);
    return true;
  }
  return false;
}

// C[M, N] = A[M, K] @ B[K, N] + beta * C, all row-major with the given row strides; with
// a_transposed, A is stored as [K, M], and with b_transposed, B as [N, K]. The per-step GEMMs
// are small, so float and double call BLAS directly (the dispatcher's per-call cost shows at
// small sizes, and a worker thread of at::parallel_for has none of the caller's autograd or
// grad-mode state, so it must not call at:: ops on tensors that may require grad); half and
// bfloat16, or a torch without exported BLAS symbols, go through at::mm on plain views.
template <typename scalar_t>
inline void gemm(int64_t M, int64_t N, int64_t K, const scalar_t* A, int64_t lda, bool a_transposed,
                 const scalar_t* B, int64_t ldb, bool b_transposed, at::opmath_type<scalar_t> beta, scalar_t* C,
                 int64_t ldc) {
  if (M == 0 || N == 0) return;
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (std::max({M, N, K, lda, ldb, ldc}) < kIntMax && K > 0) {
    // BLAS is column-major: C^T = op(B)^T op(A)^T, and a row-major [r, c] matrix is its
    // column-major transpose, so a stored-transposed operand is the one BLAS must transpose.
    if (blas_call<scalar_t>(a_transposed ? 'T' : 'N', b_transposed ? 'T' : 'N', static_cast<int>(N),
                            static_cast<int>(M), static_cast<int>(K), B, static_cast<int>(ldb), A,
                            static_cast<int>(lda), static_cast<scalar_t>(beta), C, static_cast<int>(ldc))) {
      return;
    }
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  const at::Tensor a = a_transposed ? at::from_blob(const_cast<scalar_t*>(A), {K, M}, {lda, 1}, opts).t()
                                    : at::from_blob(const_cast<scalar_t*>(A), {M, K}, {lda, 1}, opts);
  const at::Tensor b = b_transposed ? at::from_blob(const_cast<scalar_t*>(B), {N, K}, {ldb, 1}, opts).t()
                                    : at::from_blob(const_cast<scalar_t*>(B), {K, N}, {ldb, 1}, opts);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == 0) {
    at::mm_out(c, a, b);
  } else {
    c.mul_(beta).addmm_(a, b);
  }
}

// MKL's packed GEMM (float only), declared weak like the BLAS entries above.
extern "C" {
size_t sgemm_pack_get_size_(const char* identifier, const int* m, const int* n, const int* k) __attribute__((weak));
void sgemm_pack_(const char* identifier, const char* trans, const int* m, const int* n, const int* k,
                 const float* alpha, const float* src, const int* ld, float* dest) __attribute__((weak));
void sgemm_compute_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* a,
                    const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc)
    __attribute__((weak));
}

// A weight W that many products multiply: C[M, N] = A[M, K] @ W[K, N] (+ bias) + beta * C.
// W is read from w: element (k, n) at w[k * ldw + n], or with `transposed` W is stored as [N, K]:
// at w[n * ldw + k]. W is prepared once per call, before the loop:
// - in float, packed into panels for fastrnn's own kernel where it has one (panel_gemm.h: AVX2),
//   which then also runs the products over all steps (the input projection, x's gradient);
//   otherwise, in float with MKL, into MKL's internal layout for max_rows rows (what oneDNN's RNN
//   does), so no step re-packs it; MKL's packed GEMM is specified only for the sizes it was packed
//   for, so other row counts (a packed batch's shorter tail) multiply the unpacked W;
// - otherwise a transposed W is copied once into [K, N] so that every step reads it row by row;
//   max_rows 0 marks a weight of a few products over all steps, read where it is.
// But packing reads and writes all of W (measured ~0.5 ns per element on the AVX2 machine: 0.55 ms
// for an LSTM's W_hh at H = 512, a hundred times that step's arithmetic at B = 1), which pays only
// over many rows. A call whose products add up to fewer than kMinRowsToPack rows (total_rows: a
// T = 1 call, a cell step) multiplies W where it is, by BLAS (no copy, nothing to invalidate).
// The pointer w must stay valid while this object is used.
template <typename scalar_t>
class PackedWeight {
 public:
  // From this size on, a step's product outside a parallel region splits its panels across
  // the threads (2 cores, [64, 512] @ [512, 2048]: ~138 GFLOP/s against MKL's ~80-100).
  static constexpr int64_t kThreadedPanelMacs = int64_t{1} << 20;
  // Products of many rows (over all steps): rows per task, and the packed panels per pass.
  static constexpr int64_t kRowChunk = 64, kPanelGroupBytes = 384 * 1024;
  static constexpr int64_t kMinRowsToPack = 16;

  PackedWeight(const scalar_t* w, int64_t ldw, int64_t N, int64_t K, bool transposed, int64_t max_rows,
               int64_t total_rows, const at::TensorOptions& options)
      : N_(N), K_(K), packed_rows_(max_rows), w_(w), ldw_(ldw), transposed_(transposed) {
    if (total_rows < kMinRowsToPack) return;  // W where it is
    if constexpr (std::is_same_v<scalar_t, float>) {
      panel_kernel_ = panel_gemm_kernel();
      if (panel_kernel_) {
        storage_ = at::empty({packed_panels_size(K, N)}, options);
        pack_panels(K, N, w, transposed ? 1 : ldw, transposed ? ldw : 1, storage_.data_ptr<float>());
        return;
      }
      if (sgemm_pack_get_size_ && sgemm_pack_ && sgemm_compute_ && max_rows > 0 && K > 0 && N > 0 &&
          std::max({N, K, max_rows, ldw}) < std::numeric_limits<int>::max()) {
        // Column-major view: C^T[N, M] = op(W_cm)[N, K] @ A^T[K, M]; W is BLAS's "A" operand.
        const int m = static_cast<int>(N), n = static_cast<int>(max_rows), k = static_cast<int>(K);
        const int ld = static_cast<int>(ldw);
        const char id = 'A', trans = transposed ? 'T' : 'N';
        const float one = 1;
        const size_t bytes = sgemm_pack_get_size_(&id, &m, &n, &k);
        packed_ = at::empty({static_cast<int64_t>(bytes / sizeof(float)) + 1}, options);
        sgemm_pack_(&id, &trans, &m, &n, &k, &one, w, &ld, packed_.data_ptr<float>());
        return;
      }
    }
    if (max_rows == 0 || !transposed) return;  // a few products over all steps, or already [K, N]: W as it is
    storage_ = at::from_blob(const_cast<scalar_t*>(w), {N, K}, {ldw, 1}, options).t().contiguous();  // [K, N]
    w_ = storage_.data_ptr<scalar_t>();
    ldw_ = N;
    transposed_ = false;
  }

  // bias (optional, [N]) is added to every row of C.
  void multiply(int64_t M, const scalar_t* A, int64_t lda, at::opmath_type<scalar_t> beta, scalar_t* C, int64_t ldc,
                const scalar_t* bias = nullptr) const {
    if (M == 0 || N_ == 0) return;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (panel_kernel_) {
        const float* panels = storage_.data_ptr<float>();
        const int64_t num_panels = (N_ + kPanelWidth - 1) / kPanelWidth;
        if (M * N_ * K_ < kThreadedPanelMacs || at::in_parallel_region()) {
          panel_kernel_(M, N_, K_, A, lda, panels, bias, beta, C, ldc);
        } else if (M >= kRowChunk * at::get_num_threads()) {
          // Many rows (the products over all steps): each thread takes runs of kRowChunk rows
          // and multiplies them by a group of panels (about kPanelGroupBytes: it stays in L2)
          // at a time. Measured on 2 cores against MKL's sgemm, paired in one process: RNN
          // B=64, H=512 inference +11%, LSTM +5%, GRU +3%; without the panel groups, rows
          // against every panel in turn, no faster than MKL.
          const int64_t group = std::max<int64_t>(1, kPanelGroupBytes / (K_ * kPanelWidth * int64_t{sizeof(float)}));
          at::parallel_for(0, (M + kRowChunk - 1) / kRowChunk, 1, [&](int64_t c0, int64_t c1) {
            for (int64_t p0 = 0; p0 < num_panels; p0 += group) {
              const int64_t n0 = p0 * kPanelWidth, n1 = std::min(N_, (p0 + group) * kPanelWidth);
              for (int64_t c = c0; c < c1; ++c) {
                const int64_t m0 = c * kRowChunk, m1 = std::min(M, (c + 1) * kRowChunk);
                panel_kernel_(m1 - m0, n1 - n0, K_, A + m0 * lda, lda, panels + p0 * K_ * kPanelWidth,
                              bias ? bias + n0 : nullptr, beta, C + m0 * ldc + n0, ldc);
              }
            }
          });
        } else {
          // Each thread takes a run of whole panels: columns [p0, p1) * kPanelWidth of C.
          at::parallel_for(0, num_panels, 1, [&](int64_t p0, int64_t p1) {
            const int64_t n0 = p0 * kPanelWidth, n1 = std::min(N_, p1 * kPanelWidth);
            panel_kernel_(M, n1 - n0, K_, A, lda, panels + p0 * K_ * kPanelWidth, bias ? bias + n0 : nullptr, beta,
                          C + n0, ldc);
          });
        }
        return;
      }
    }
    if (bias) {
      // C = bias + beta * C, then accumulate the product into it.
      for (int64_t m = 0; m < M; ++m) {
        scalar_t* c = C + m * ldc;
        for (int64_t n = 0; n < N_; ++n) {
          c[n] = static_cast<scalar_t>(static_cast<at::opmath_type<scalar_t>>(bias[n]) +
                                       (beta == 0 ? 0 : beta * static_cast<at::opmath_type<scalar_t>>(c[n])));
        }
      }
      beta = 1;
    }
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (packed_.defined() && M == packed_rows_) {
        const int m = static_cast<int>(N_), n = static_cast<int>(M), k = static_cast<int>(K_);
        const int ld_a = static_cast<int>(lda), ld_c = static_cast<int>(ldc);
        const char packed = 'P', plain = 'N';
        const float beta_f = beta;
        sgemm_compute_(&packed, &plain, &m, &n, &k, packed_.data_ptr<float>(), &m, A, &ld_a, &beta_f, C, &ld_c);
        return;
      }
    }
    gemm<scalar_t>(M, N_, K_, A, lda, /*a_transposed=*/false, w_, ldw_, transposed_, beta, C, ldc);
  }

 private:
  int64_t N_, K_, packed_rows_;
  PanelGemm panel_kernel_ = nullptr;  // fastrnn's own kernel on storage_'s panels, or nullptr
  at::Tensor storage_;                // W packed for panel_kernel_, or W copied as [K, N], or undefined
  at::Tensor packed_;                 // MKL-packed W for packed_rows_ rows, or undefined
  const scalar_t* w_;                 // W, unpacked: where it is, or storage_ as [K, N]
  int64_t ldw_;
  bool transposed_;
};

struct LstmTraits {
  static constexpr int64_t kGates = 4;
  static constexpr int64_t kSaved = 5;  // i, f, g, o, c
  static constexpr int64_t kCellOffset = 4;
  static constexpr bool kHasCellState = true;
  static constexpr bool kHasDirectPath = false;
  static constexpr bool kSeparateRecurrentGrad = false;
  template <typename S>
  static typename RowKernels<S>::Forward forward(const RowKernels<S>& k) { return k.lstm_forward; }
  template <typename S>
  static typename RowKernels<S>::Backward backward(const RowKernels<S>& k) { return k.lstm_backward; }
};

struct GruTraits {
  static constexpr int64_t kGates = 3;
  static constexpr int64_t kSaved = 4;  // r, z, n, W_hn h + b_hn
  static constexpr int64_t kCellOffset = 0;
  static constexpr bool kHasCellState = false;
  static constexpr bool kHasDirectPath = true;          // h_prev reaches h through z, not only W_hh
  static constexpr bool kSeparateRecurrentGrad = true;  // b_hn sits inside r * (...)
  template <typename S>
  static typename RowKernels<S>::Forward forward(const RowKernels<S>& k) { return k.gru_forward; }
  template <typename S>
  static typename RowKernels<S>::Backward backward(const RowKernels<S>& k) { return k.gru_backward; }
};

template <bool kRelu>
struct RnnTraits {
  static constexpr int64_t kGates = 1;
  static constexpr int64_t kSaved = 0;  // backward needs only h, which y holds
  static constexpr int64_t kCellOffset = 0;
  static constexpr bool kHasCellState = false;
  static constexpr bool kHasDirectPath = false;
  static constexpr bool kSeparateRecurrentGrad = false;
  template <typename S>
  static typename RowKernels<S>::Forward forward(const RowKernels<S>& k) {
    return kRelu ? k.rnn_relu_forward : k.rnn_tanh_forward;
  }
  template <typename S>
  static typename RowKernels<S>::Backward backward(const RowKernels<S>& k) {
    return kRelu ? k.rnn_relu_backward : k.rnn_tanh_backward;
  }
};

struct StepIndex {
  int64_t T;
  bool reverse;
  const int64_t* lengths;  // nullptr: every sequence has length T
  int64_t length(int64_t b) const { return lengths ? lengths[b] : T; }
  bool active(int64_t t, int64_t b) const { return t < length(b); }
  // First step of sequence b in processing order: its state comes from h0/c0.
  bool first(int64_t t, int64_t b) const { return reverse ? t == length(b) - 1 : t == 0; }
  // The time index processed just before t (only meaningful when !first(t, b)).
  int64_t prev(int64_t t) const { return reverse ? t + 1 : t - 1; }
};

// How one step's work is split across threads: S slices of the hidden units, each run by one
// thread from its share of the recurrent GEMM through its pointwise pass. A step is then one
// parallel region (one fork/join, not one inside BLAS and one for the pointwise pass), and
// the pointwise pass reads gates its own thread has just written. Measured on 2 cores, this
// wins (~8% per op) only for mid-sized steps: small ones cannot pay for any hand-off, and for
// large ones BLAS's own threading of the whole GEMM is faster than single-threaded slices.
// Everything else, and proj_size layers (whose projection needs every unit), runs as one
// slice: the GEMMs threaded inside BLAS, the pointwise pass threaded over batch rows.
struct Slice {
  int64_t begin, size;  // hidden units [begin, begin + size)
};

inline std::vector<Slice> step_slices(const LayerSizes& s) {
  constexpr int64_t kAlign = 16;  // one AVX-512 vector of floats
  int64_t count = 1;
  constexpr int64_t kMinMacsPerStep = int64_t{1} << 18, kMaxMacsPerStep = int64_t{1} << 22;
  // A few steps cannot pay for copying each slice's rows of W_hh.
  constexpr int64_t kMinSteps = 16;
  const int64_t macs = s.B * s.G * s.H * s.P;  // of one step's recurrent GEMM
  if (!s.proj && !at::in_parallel_region() && macs >= kMinMacsPerStep && macs < kMaxMacsPerStep &&
      s.T >= kMinSteps) {
    count = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), s.H / kAlign));
  }
  std::vector<Slice> slices;
  int64_t begin = 0;
  for (int64_t i = 0; i < count; ++i) {
    // Boundaries on multiples of kAlign; every slice gets at least kAlign units.
    const int64_t end = i + 1 == count ? s.H : (s.H * (i + 1) / count) / kAlign * kAlign;
    slices.push_back({begin, end - begin});
    begin = end;
  }
  return slices;
}

// Runs step_fn(slice) for every slice, each slice on its own thread when there are several.
template <typename F>
inline void for_each_slice(int64_t num_slices, const F& step_fn) {
  at::parallel_for(0, num_slices, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) step_fn(i);
  });
}

// Whether the GEMMs over all steps overlap the time loop. Forward needs the input projection
// W_ih x + b_ih before the loop, backward has the weight gradients after it.
// Computing them at once as single GEMMs is best for large layers. For small ones (step GEMM
// under 2^20 MACs) they cost as much as the whole recurrence (measured at B=8, H=128: LSTM
// forward ~1.2 ms of ~4 ms), while the recurrence itself cannot use a second core (hidden-unit
// slices measured no faster there). So there a second thread works on blocks of steps (about
// kPipelineRows rows each) alongside the calling thread's time loop: forward, it projects the
// next block; backward, it forms W_ih's gradient from the block the loop has just finished.
struct PipelinePlan {
  bool pipelined;
  int64_t block_steps;  // steps per block
};

constexpr int64_t kRing = 2;  // forward's block buffers while pipelined: one being read, one being written

inline PipelinePlan pipeline_plan(const LayerSizes& s) {
  constexpr int64_t kMaxStepMacs = int64_t{1} << 20, kPipelineRows = 128;
  const int64_t block_steps = std::max<int64_t>(1, (kPipelineRows + s.B - 1) / std::max<int64_t>(1, s.B));
  const bool pipelined = at::get_num_threads() >= 2 && !at::in_parallel_region() &&
                         s.B * s.G * s.H * s.P < kMaxStepMacs && s.T > block_steps;
  return pipelined ? PipelinePlan{true, block_steps} : PipelinePlan{false, std::max<int64_t>(1, s.T)};
}

// Runs produce(b) then consume(b) for blocks b = 0 .. num_blocks - 1 on two threads, one
// running every produce in order and the other every consume, so that consume(b) overlaps
// produce(b + 1). produce runs at most max_ahead blocks ahead of consume (forward: the ring of
// kRing projection buffers). The time loop stays on the calling thread: it is the producer if
// caller_produces (backward), else the consumer (forward). Handshake by two counters
// (release/acquire). If either side throws, `failed` releases the other, and at::parallel_for
// rethrows the exception. With a single thread available both roles run in order on it.
template <typename Produce, typename Consume>
void run_pipelined(int64_t num_blocks, int64_t max_ahead, bool caller_produces, const Produce& produce,
                   const Consume& consume) {
  std::atomic<int64_t> produced{0}, consumed{0};
  std::atomic<bool> failed{false};
  const auto wait_until = [&](const auto& ready) {
    while (!ready() && !failed.load(std::memory_order_acquire)) std::this_thread::yield();
    return !failed.load(std::memory_order_acquire);
  };
  at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
    if (end - begin == 2) {  // one thread holds both roles
      for (int64_t b = 0; b < num_blocks; ++b) {
        produce(b);
        consume(b);
      }
      return;
    }
    try {
      if ((begin == 0) == caller_produces) {
        for (int64_t b = 0; b < num_blocks; ++b) {
          if (!wait_until([&] { return b - consumed.load(std::memory_order_acquire) < max_ahead; })) return;
          produce(b);
          produced.store(b + 1, std::memory_order_release);
        }
      } else {
        for (int64_t b = 0; b < num_blocks; ++b) {
          if (!wait_until([&] { return produced.load(std::memory_order_acquire) > b; })) return;
          consume(b);
          consumed.store(b + 1, std::memory_order_release);
        }
      }
    } catch (...) {
      failed.store(true, std::memory_order_release);
      throw;
    }
  });
}

// Where a packed batch (variable lengths) leaves rows of the padded [T, B] layout that no step uses:
// step t can use only its first active_rows[t] rows (lengths sorted decreasingly, as PackedSequence
// gives them, make that exactly the rows still running). The products over all steps (the input
// projection; in backward the weight gradients and x's gradient) then multiply only those rows, so a
// packed batch costs about its real tokens (at ~50% real tokens the padded rows were ~half the work).
// Unless almost every row is real: there one product over all rows is faster than one per step.
struct PaddedRows {
  const std::vector<int64_t>& active_rows;
  int64_t B;
  bool variable_lengths;

  int64_t real_rows(int64_t t_begin, int64_t t_end) const {
    int64_t rows = 0;
    for (int64_t t = t_begin; t < t_end; ++t) rows += active_rows[t];
    return rows;
  }
  // offsets[t]: the rows of the steps before t; offsets[T] all of them.
  std::vector<int64_t> offsets(int64_t T) const {
    std::vector<int64_t> out(T + 1, 0);
    for (int64_t t = 0; t < T; ++t) out[t + 1] = out[t] + active_rows[t];
    return out;
  }
  bool worth_skipping(int64_t t_begin, int64_t t_end) const {
    constexpr double kMaxRealFraction = 0.9;
    return variable_lengths && real_rows(t_begin, t_end) < kMaxRealFraction * (t_end - t_begin) * B;
  }
  // Copies the rows of steps [0, T) that can be active, step after step, from src ([T, B, X], rows of X) into
  // dst ([real_rows(0, T), X]).
  template <typename scalar_t>
  void gather(int64_t T, int64_t X, const scalar_t* src, scalar_t* dst) const {
    for (int64_t t = 0; t < T; ++t) {
      std::copy_n(src + t * B * X, active_rows[t] * X, dst);
      dst += active_rows[t] * X;
    }
  }
};

// Whether the two directions of a bidirectional layer run at once, one per thread (each then multiplies its
// steps on its own core: no fork and join per step). Measured on 2 threads (AVX2 machine), an LSTM of two
// bidirectional layers at T=50, B=16, H=256: inference 43.2 -> 31.2 ms, training 144.9 -> 96.6 ms (torch.nn's
// oneDNN LSTM: 36 and 153 ms), where each step had been split across both threads; a bidirectional GRU at
// B=64, H=512 unchanged within the noise. With more threads, only where a step is too small to split
// (PackedWeight::kThreadedPanelMacs): a direction per thread would leave the others idle.
inline bool directions_concurrently(const LayerSizes& s) {
  const int64_t threads = at::get_num_threads();
  const int64_t step_macs = s.B * s.G * s.H * s.P;
  return s.D == 2 && threads >= 2 && !at::in_parallel_region() && (threads == 2 || step_macs < (int64_t{1} << 20));
}

template <typename Cell, typename scalar_t>
struct Engine {
  using opmath_t = at::opmath_type<scalar_t>;

  // Outputs of forward: y [T, B, D*P], hn [D, B, P], cn [D, B, H] (LSTM), saved [D, T, B, kSaved*H].
  // x [T, B, I], w_ih [D, G*H, I] and b_ih [D, G*H] (optional) are contiguous.
  static void forward(const LayerSizes& s, const at::Tensor& x, const at::Tensor& w_ih,
                      const c10::optional<at::Tensor>& b_ih, const at::Tensor& h0, const at::Tensor& c0,
                      const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
                      const c10::optional<at::Tensor>& w_hr, const at::Tensor& lengths_c,
                      const std::vector<int64_t>& active_rows, bool save, at::Tensor& y, at::Tensor& hn,
                      at::Tensor& cn, at::Tensor& saved) {
    if (directions_concurrently(s)) {
      at::parallel_for(0, 2, 1, [&](int64_t d_begin, int64_t d_end) {
        forward_directions(s, x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths_c, active_rows, save, y, hn, cn, saved,
                           d_begin, d_end);
      });
      return;
    }
    forward_directions(s, x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths_c, active_rows, save, y, hn, cn, saved, 0,
                       s.D);
  }

  // forward for the directions [d_begin, d_end): each writes only its own parts of the outputs.
  static void forward_directions(const LayerSizes& s, const at::Tensor& x, const at::Tensor& w_ih,
                                 const c10::optional<at::Tensor>& b_ih, const at::Tensor& h0, const at::Tensor& c0,
                                 const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
                                 const c10::optional<at::Tensor>& w_hr, const at::Tensor& lengths_c,
                                 const std::vector<int64_t>& active_rows, bool save, at::Tensor& y, at::Tensor& hn,
                                 at::Tensor& cn, at::Tensor& saved, int64_t d_begin, int64_t d_end) {
    const int64_t T = s.T, B = s.B, H = s.H, P = s.P, D = s.D, G = s.G, GH = G * H;
    const int64_t W = Cell::kSaved * H;
    const auto opts = x.options();
    // The input projection W_ih x + b_ih, computed a block of steps at a time (PipelinePlan).
    const PipelinePlan plan = pipeline_plan(s);
    const std::vector<Slice> slices = plan.pipelined ? std::vector<Slice>{{0, H}} : step_slices(s);
    const int64_t S = static_cast<int64_t>(slices.size());
    const int64_t I = x.size(2);
    const int64_t num_blocks = (T + plan.block_steps - 1) / plan.block_steps;
    // One block buffer, or a ring of kRing while a second thread computes blocks ahead.
    const int64_t ring = plan.pipelined ? kRing : 1;
    at::Tensor x_blocks = scratch(kScratchProjection, x, {ring, plan.block_steps * B * GH});
    scalar_t* x_blocks_p = x_blocks.data_ptr<scalar_t>();
    const scalar_t* x_p = x.data_ptr<scalar_t>();
    // One allocation for the step buffers (a small call pays for each at:: call it makes):
    // each slice's gates, [B, G * size], one after the other (slice i starts at B * G * begin);
    // without projection the second state buffer (the state is double-buffered: a slice's
    // pointwise pass writes the new h while other slices' GEMMs still read the old one); with
    // projection (one slice) r and the projection's output (the pointwise pass writes r and the
    // projection GEMM then updates h in place).
    at::Tensor step_buffers = at::empty({B * GH + (s.proj ? B * H + B * P : B * P)}, opts);
    scalar_t* gates_p = step_buffers.data_ptr<scalar_t>();
    scalar_t* h_second_p = s.proj ? nullptr : gates_p + B * GH;
    scalar_t* rb = s.proj ? gates_p + B * GH : nullptr;
    scalar_t* proj_p = s.proj ? rb + B * H : nullptr;
    scalar_t* y_ptr = y.data_ptr<scalar_t>();
    const auto row_kernel = Cell::template forward<scalar_t>(row_kernels<scalar_t>());
    // Rows that W_hh and W_ih multiply over the call (PackedWeight: whether packing them pays).
    const int64_t total_rows = T * B;
    const PaddedRows padded_rows{active_rows, B, lengths_c.defined()};
    // Not pipelined (one block of all T steps) and few real rows: the projection is of the real rows only,
    // gathered (one product, not one per step: a fork and join per step cost ~5% at 2 threads).
    const bool compact = !plan.pipelined && padded_rows.worth_skipping(0, T);
    std::vector<int64_t> row_offset;
    at::Tensor x_real;
    scalar_t* x_real_p = nullptr;
    if (compact) {
      row_offset = padded_rows.offsets(T);
      x_real = at::empty({row_offset[T] * I}, opts);
      x_real_p = x_real.data_ptr<scalar_t>();
      padded_rows.gather(T, I, x_p, x_real_p);
    }
    for (int64_t d = d_begin; d < d_end; ++d) {
      const StepIndex idx{T, d == 1, lengths_c.defined() ? lengths_c.data_ptr<int64_t>() : nullptr};
      // The state lives in hn[d] (it ends as h_T) and cn[d]; pointers, not at:: calls (see above).
      scalar_t* h_state_p = hn.data_ptr<scalar_t>() + d * B * P;
      std::copy_n(h0.data_ptr<scalar_t>() + d * B * P, B * P, h_state_p);
      scalar_t* cs = nullptr;
      if (Cell::kHasCellState) {
        cs = cn.data_ptr<scalar_t>() + d * B * H;
        std::copy_n(c0.data_ptr<scalar_t>() + d * B * H, B * H, cs);
      }
      const scalar_t* w_hh_d = w_hh.data_ptr<scalar_t>() + d * GH * P;  // [G*H, P]
      // Slice i multiplies the W_hh rows of its units, gate by gate: [G * size, P] (one slice: all
      // of W_hh, where it is; several: a copy of each slice's rows).
      std::vector<at::Tensor> slice_copies;
      std::vector<PackedWeight<scalar_t>> w_slices;
      w_slices.reserve(S);
      for (const Slice& sl : slices) {
        const scalar_t* w = w_hh_d;
        if (S > 1) {
          slice_copies.push_back(w_hh[d].view({G, H, P}).narrow(1, sl.begin, sl.size).reshape({G * sl.size, P})
                                     .contiguous());
          w = slice_copies.back().data_ptr<scalar_t>();
        }
        w_slices.emplace_back(w, P, G * sl.size, P, /*transposed=*/true, B, total_rows, opts);
      }
      c10::optional<PackedWeight<scalar_t>> w_hr_step;  // h = r @ W_hr^T
      if (s.proj) w_hr_step.emplace(w_hr->data_ptr<scalar_t>() + d * P * H, H, P, H, /*transposed=*/true, B,
                                    total_rows, opts);
      const PackedWeight<scalar_t> w_ih_packed(w_ih.data_ptr<scalar_t>() + d * GH * I, I, GH, I, /*transposed=*/true,
                                               /*max_rows=*/0, total_rows, opts);
      const scalar_t* b_ih_d = b_ih.has_value() ? b_ih->data_ptr<scalar_t>() + d * GH : nullptr;
      // Block b holds the steps k in [b * block_steps, (b + 1) * block_steps) in processing order;
      // its buffer rows are in time order from its earliest step, first_step_of(b).
      const auto first_step_of = [&](int64_t b) {
        return idx.reverse ? std::max<int64_t>(0, T - (b + 1) * plan.block_steps) : b * plan.block_steps;
      };
      const auto block_buffer = [&](int64_t b) { return x_blocks_p + (b % ring) * plan.block_steps * B * GH; };
      const auto project = [&](int64_t b) {
        const int64_t first = first_step_of(b);
        const int64_t steps = std::min<int64_t>(T, (b + 1) * plan.block_steps) - b * plan.block_steps;
        if (compact) {
          // The real rows of x (gathered once, below), one product ([R, I] @ W_ih^T): the buffer holds step
          // t's rows from row_offset[t] (one block: the plan is not pipelined).
          w_ih_packed.multiply(padded_rows.real_rows(0, T), x_real_p, I, 0, x_blocks_p, GH, b_ih_d);
          return;
        }
        if (padded_rows.worth_skipping(first, first + steps)) {
          // Only the rows that can be active (PaddedRows), step by step; the others are never read.
          for (int64_t t = first; t < first + steps; ++t) {
            w_ih_packed.multiply(active_rows[t], x_p + t * B * I, I, 0, block_buffer(b) + (t - first) * B * GH, GH,
                                 b_ih_d);
          }
          return;
        }
        w_ih_packed.multiply(steps * B, x_p + first * B * I, I, 0, block_buffer(b), GH, b_ih_d);
      };
      const scalar_t* bias = b_hh.has_value() ? b_hh->data_ptr<scalar_t>() + d * GH : nullptr;
      scalar_t* sv = (save && W > 0) ? saved.data_ptr<scalar_t>() + d * T * B * W : nullptr;
      scalar_t* h_read = h_state_p;
      scalar_t* h_write = s.proj ? h_read : h_second_p;

      // Step k (processing order) of this direction; its projected input is in block k / block_steps.
      const auto run_step = [&](int64_t k) {
        const int64_t t = idx.reverse ? T - 1 - k : k;
        const int64_t n = active_rows[t];
        const int64_t b_of_k = k / plan.block_steps;
        const scalar_t* xp = compact ? x_blocks_p + row_offset[t] * GH  // [B (the first n), G*H] of step t
                                     : block_buffer(b_of_k) + (t - first_step_of(b_of_k)) * B * GH;
        const auto gemm = [&](int64_t i) {
          const Slice& sl = slices[i];
          w_slices[i].multiply(n, h_read, P, 0, gates_p + B * G * sl.begin, G * sl.size);
        };
        const auto pointwise = [&](int64_t i, int64_t row_begin, int64_t row_end) {
          const int64_t j0 = slices[i].begin, count = slices[i].size;
          for (int64_t b = row_begin; b < row_end; ++b) {
            scalar_t* y_row = y_ptr + (t * B + b) * D * P + d * P;
            scalar_t* sv_row = sv ? sv + (t * B + b) * W : nullptr;
            if (b >= n || !idx.active(t, b)) {
              // Past its end a sequence outputs zeros and carries its state over unchanged.
              if (s.proj) {
                std::fill(y_row, y_row + P, scalar_t(0));
              } else {
                std::fill(y_row + j0, y_row + j0 + count, scalar_t(0));
                std::copy(h_read + b * P + j0, h_read + b * P + j0 + count, h_write + b * P + j0);
              }
              for (int64_t q = 0; sv_row && q < Cell::kSaved; ++q) {
                std::fill(sv_row + q * H + j0, sv_row + q * H + j0 + count, scalar_t(0));
              }
              continue;
            }
            FwdRow<scalar_t> row;
            row.x = xp + b * GH + j0;
            row.hg = gates_p + B * G * j0 + b * G * count;
            row.hg_stride = count;
            row.bias = bias ? bias + j0 : nullptr;
            row.h_prev = h_read + b * P + j0;
            row.c = cs ? cs + b * H + j0 : nullptr;
            row.h_out = s.proj ? rb + b * H + j0 : h_write + b * P + j0;
            row.y_out = s.proj ? nullptr : y_row + j0;
            row.saved = sv_row ? sv_row + j0 : nullptr;
            row_kernel(row, H, count);
          }
        };
        if (S == 1) {
          gemm(0);
          at::parallel_for(0, B, row_grain(GH), [&](int64_t b0, int64_t b1) { pointwise(0, b0, b1); });
        } else {
          for_each_slice(S, [&](int64_t i) {
            gemm(i);
            pointwise(i, 0, B);
          });
        }
        if (s.proj && n > 0) {
          // h = W_hr r for the active rows; inactive rows keep their state.
          w_hr_step->multiply(n, rb, H, 0, proj_p, P);
          const scalar_t* pb = proj_p;
          for (int64_t b = 0; b < n; ++b) {
            if (!idx.active(t, b)) continue;
            std::copy(pb + b * P, pb + (b + 1) * P, h_write + b * P);
            std::copy(pb + b * P, pb + (b + 1) * P, y_ptr + (t * B + b) * D * P + d * P);
          }
        }
        std::swap(h_read, h_write);
      };
      const auto run_block = [&](int64_t b) {
        for (int64_t k = b * plan.block_steps; k < std::min<int64_t>(T, (b + 1) * plan.block_steps); ++k) run_step(k);
      };
      if (plan.pipelined) {
        run_pipelined(num_blocks, kRing, /*caller_produces=*/false, project, run_block);
      } else {
        for (int64_t b = 0; b < num_blocks; ++b) {
          project(b);
          run_block(b);
        }
      }
      if (h_read != h_state_p) {
        std::copy(h_read, h_read + B * P, h_state_p);
      }
    }
  }

  // prev[t, b] = the state sequence b entered step t with: init[b] at its first step,
  // seq[prev(t), b] otherwise, zero where b is inactive. seq is [T, B, X] with row stride
  // seq_row_stride (y holds both directions side by side); init is [B, X] contiguous.
  static at::Tensor states_entering_each_step(const StepIndex& idx, int64_t B, int64_t X, const scalar_t* seq,
                                              int64_t seq_row_stride, const scalar_t* init,
                                              const at::TensorOptions& options) {
    at::Tensor prev = scratch(kScratchPrevStates, at::empty({0}, options), {idx.T, B, X});
    scalar_t* out = prev.data_ptr<scalar_t>();
    at::parallel_for(0, idx.T * B, row_grain(X), [&](int64_t begin, int64_t end) {
      for (int64_t tb = begin; tb < end; ++tb) {
        const int64_t t = tb / B, b = tb % B;
        scalar_t* dst = out + tb * X;
        if (!idx.active(t, b)) {
          std::fill(dst, dst + X, scalar_t(0));
        } else {
          const scalar_t* src = idx.first(t, b) ? init + b * X : seq + (idx.prev(t) * B + b) * seq_row_stride;
          std::copy(src, src + X, dst);
        }
      }
    });
    return prev;
  }

  // Gradients of one layer. The gate gradients of each direction go to dgx (dL/d(W_ih x + b_ih),
  // [T, B, G*H]) and, for GRU, dgh (dL/d(W_hh h + b_hh)); from them come the gradients of x,
  // W_ih, b_ih, W_hh and b_hh, as single GEMMs after the loop, or, when pipelined, W_ih's
  // block by block on a second thread while the loop goes on (PipelinePlan).
  // grad_x is undefined unless need_grad_x; grad_b_ih and grad_b_hh are undefined without biases.
  static void backward(const LayerSizes& s, const at::Tensor& grad_y, const at::Tensor& grad_hn,
                       const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& h0,
                       const at::Tensor& c0, const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr,
                       const at::Tensor& lengths_c, const std::vector<int64_t>& active_rows, const at::Tensor& y,
                       const at::Tensor& saved, at::Tensor& grad_x, at::Tensor& grad_w_ih, at::Tensor& grad_b_ih,
                       at::Tensor& grad_h0, at::Tensor& grad_c0, at::Tensor& grad_w_hh, at::Tensor& grad_b_hh,
                       at::Tensor& grad_w_hr) {
    if (directions_concurrently(s)) {
      // Both directions add into x's gradient: the second writes its own, added after both have run.
      at::Tensor grad_x_second = grad_x.defined() ? at::empty_like(grad_x) : at::Tensor();
      at::parallel_for(0, 2, 1, [&](int64_t d_begin, int64_t d_end) {
        backward_directions(s, grad_y, grad_hn, grad_cn, x, w_ih, h0, c0, w_hh, w_hr, lengths_c, active_rows, y,
                            saved, d_begin == 0 ? grad_x : grad_x_second, grad_w_ih, grad_b_ih, grad_h0, grad_c0,
                            grad_w_hh, grad_b_hh, grad_w_hr, d_begin, d_end);
      });
      if (grad_x.defined()) grad_x.add_(grad_x_second);
      return;
    }
    backward_directions(s, grad_y, grad_hn, grad_cn, x, w_ih, h0, c0, w_hh, w_hr, lengths_c, active_rows, y, saved,
                        grad_x, grad_w_ih, grad_b_ih, grad_h0, grad_c0, grad_w_hh, grad_b_hh, grad_w_hr, 0, s.D);
  }

  // backward for the directions [d_begin, d_end): each writes only its own parts of the gradients but x's, which
  // the first of them writes and the others add to.
  static void backward_directions(const LayerSizes& s, const at::Tensor& grad_y, const at::Tensor& grad_hn,
                                  const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& w_ih,
                                  const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
                                  const c10::optional<at::Tensor>& w_hr, const at::Tensor& lengths_c,
                                  const std::vector<int64_t>& active_rows, const at::Tensor& y, const at::Tensor& saved,
                                  at::Tensor& grad_x, at::Tensor& grad_w_ih, at::Tensor& grad_b_ih,
                                  at::Tensor& grad_h0, at::Tensor& grad_c0, at::Tensor& grad_w_hh,
                                  at::Tensor& grad_b_hh, at::Tensor& grad_w_hr, int64_t d_begin, int64_t d_end) {
    const int64_t T = s.T, B = s.B, H = s.H, P = s.P, D = s.D, G = s.G, GH = G * H;
    const int64_t I = x.size(2);
    const int64_t W = Cell::kSaved * H;
    const auto opts = grad_y.options();
    const PaddedRows padded_rows{active_rows, B, lengths_c.defined()};
    const PipelinePlan plan = pipeline_plan(s);
    const std::vector<Slice> slices = plan.pipelined ? std::vector<Slice>{{0, H}} : step_slices(s);
    const int64_t S = static_cast<int64_t>(slices.size());
    const int64_t num_blocks = (T + plan.block_steps - 1) / plan.block_steps;
    // Gate gradients of the direction at hand (every step is written before it is read).
    at::Tensor dgx = scratch(kScratchGateGrads, grad_y, {T, B, GH});
    // GRU's recurrent gate gradients differ from the input ones in the n gate; the others alias.
    at::Tensor dgh = Cell::kSeparateRecurrentGrad ? scratch(kScratchRecurrentGateGrads, grad_y, {T, B, GH}) : dgx;
    at::Tensor dh_next = at::empty({B, P}, opts);
    at::Tensor dh_all, r_all, dr_buf;
    if (s.proj) {
      dh_all = at::empty({T, B, P}, opts);
      r_all = at::empty({T, B, H}, opts);
      dr_buf = at::empty({B, H}, opts);
    }
    const scalar_t* gy = grad_y.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* x_p = x.data_ptr<scalar_t>();
    scalar_t* dgx_p = dgx.data_ptr<scalar_t>();
    scalar_t* dgh_p = dgh.data_ptr<scalar_t>();
    const auto row_kernel = Cell::template backward<scalar_t>(row_kernels<scalar_t>());
    for (int64_t d = d_begin; d < d_end; ++d) {
      const StepIndex idx{T, d == 1, lengths_c.defined() ? lengths_c.data_ptr<int64_t>() : nullptr};
      // The running dL/dh ping-pongs between grad_h0[d] and dh_next, one step each.
      scalar_t* dh_state_p = grad_h0.data_ptr<scalar_t>() + d * B * P;
      std::copy_n(grad_hn.data_ptr<scalar_t>() + d * B * P, B * P, dh_state_p);
      scalar_t* dh_cur = dh_state_p;
      scalar_t* dh_nxt = dh_next.data_ptr<scalar_t>();
      scalar_t* dcs = nullptr;
      if (Cell::kHasCellState) {
        dcs = grad_c0.data_ptr<scalar_t>() + d * B * H;
        std::copy_n(grad_cn.data_ptr<scalar_t>() + d * B * H, B * H, dcs);
      }
      // Slice i computes dh[:, its units] += dgates @ W_hh[:, its units] ([G*H, size]); with a
      // projection (one slice) dh is P-wide and the slice takes all of W_hh.
      std::vector<PackedWeight<scalar_t>> w_slices;
      w_slices.reserve(S);
      for (const Slice& sl : slices) {
        const int64_t cols = s.proj ? P : sl.size;
        // Columns [begin, begin + cols) of W_hh[d] ([G*H, P], row stride P), where they are.
        w_slices.emplace_back(w_hh.data_ptr<scalar_t>() + d * GH * P + (s.proj ? 0 : sl.begin), P, cols, GH,
                              /*transposed=*/false, B, T * B, opts);
      }
      c10::optional<PackedWeight<scalar_t>> w_hr_step;  // dr = dh @ W_hr
      if (s.proj) w_hr_step.emplace(w_hr->data_ptr<scalar_t>() + d * P * H, H, H, P, /*transposed=*/false, B, T * B,
                                    opts);
      const scalar_t* sv = W > 0 ? saved.data_ptr<scalar_t>() + d * T * B * W : nullptr;
      const scalar_t* h0p = h0.data_ptr<scalar_t>() + d * B * P;
      const scalar_t* c0p = Cell::kHasCellState ? c0.data_ptr<scalar_t>() + d * B * H : nullptr;
      scalar_t* dha_all = s.proj ? dh_all.data_ptr<scalar_t>() : nullptr;
      scalar_t* r_all_p = s.proj ? r_all.data_ptr<scalar_t>() : nullptr;
      const scalar_t* drb = s.proj ? dr_buf.data_ptr<scalar_t>() : nullptr;
      // The state each step started from, the right operand of W_hh's gradient.
      const at::Tensor h_prev_all = states_entering_each_step(idx, B, P, yp + d * P, D * P, h0p, opts);
      const scalar_t* h_prev_p = h_prev_all.data_ptr<scalar_t>();

      // Step t's pointwise backward for slice i: from the complete dL/dh_t (dhs) to the gate
      // gradients of step t and the part of dL/dh_{t-1} that bypasses W_hh (into dhn).
      const auto pointwise = [&](int64_t t, int64_t i, int64_t row_begin, int64_t row_end, const scalar_t* dhs,
                                 scalar_t* dhn) {
        const int64_t j0 = slices[i].begin, count = slices[i].size;
        const int64_t dh_begin = s.proj ? 0 : j0, dh_count = s.proj ? P : count;  // dh is P-wide
        for (int64_t b = row_begin; b < row_end; ++b) {
          const int64_t tb = t * B + b;
          scalar_t* dgx_row = dgx_p + tb * GH;
          scalar_t* dgh_row = dgh_p + tb * GH;
          if (!idx.active(t, b)) {
            // The state passes through untouched, and so does its gradient.
            for (int64_t q = 0; q < G; ++q) {
              std::fill(dgx_row + q * H + j0, dgx_row + q * H + j0 + count, scalar_t(0));
              if (dgh_row != dgx_row) std::fill(dgh_row + q * H + j0, dgh_row + q * H + j0 + count, scalar_t(0));
            }
            std::copy(dhs + b * P + dh_begin, dhs + b * P + dh_begin + dh_count, dhn + b * P + dh_begin);
            if (r_all_p) std::fill(r_all_p + tb * H + j0, r_all_p + tb * H + j0 + count, scalar_t(0));
            continue;
          }
          const bool first = idx.first(t, b);
          BwdRow<scalar_t> row;
          row.saved = sv ? sv + tb * W + j0 : nullptr;
          row.h = yp + tb * D * P + d * P + j0;
          row.h_prev = (first ? h0p + b * P : yp + (idx.prev(t) * B + b) * D * P + d * P) + j0;
          row.c_prev = !Cell::kHasCellState ? nullptr
                       : (first ? c0p + b * H : sv + (idx.prev(t) * B + b) * W + Cell::kCellOffset * H) + j0;
          row.dh_a = s.proj ? drb + b * H + j0 : dhs + b * P + j0;
          row.dh_b = s.proj ? nullptr : gy + tb * D * P + d * P + j0;
          row.dc = dcs ? dcs + b * H + j0 : nullptr;
          row.dgx = dgx_row + j0;
          row.dgh = dgh_row + j0;
          row.dh_direct = dhn + b * P + j0;
          row.r_out = r_all_p ? r_all_p + tb * H + j0 : nullptr;
          row_kernel(row, H, count);
          if (!Cell::kHasDirectPath) {
            std::fill(dhn + b * P + dh_begin, dhn + b * P + dh_begin + dh_count, scalar_t(0));
          }
        }
      };
      // Completes dL/dh_{t-1} for slice i: dhn[:, slice] += dgates_t @ W_hh[:, slice]. Rows
      // among the first n that are inactive have zero gate gradients, so their pass-through
      // value is unaffected.
      const auto gemm_dh = [&](int64_t t, int64_t i, scalar_t* dhn) {
        const int64_t col_begin = s.proj ? 0 : slices[i].begin;
        w_slices[i].multiply(active_rows[t], dgh_p + t * B * GH, GH, 1, dhn + col_begin, P);
      };
      // Step k of the reverse-time loop: k = 0 is the direction's last step in processing order.
      const auto time_of = [&](int64_t k) { return idx.reverse ? k : T - 1 - k; };
      const auto run_step = [&](int64_t k) {
        const int64_t t = time_of(k);
        if (s.proj) {
          // dL/dh_t (P-space) for all rows, then back through the projection in one GEMM.
          for (int64_t b = 0; b < B; ++b) {
            scalar_t* dst = dha_all + (t * B + b) * P;
            const scalar_t* gy_row = gy + (t * B + b) * D * P + d * P;
            if (!idx.active(t, b)) {
              std::fill(dst, dst + P, scalar_t(0));
              continue;
            }
            for (int64_t j = 0; j < P; ++j) {
              dst[j] = static_cast<scalar_t>(static_cast<opmath_t>(dh_cur[b * P + j]) +
                                             static_cast<opmath_t>(gy_row[j]));
            }
          }
          w_hr_step->multiply(active_rows[t], dha_all + t * B * P, P, 0, dr_buf.data_ptr<scalar_t>(), H);
        }
        if (plan.pipelined) {  // the other thread is busy with the weight gradients
          pointwise(t, 0, 0, B, dh_cur, dh_nxt);
        } else {
          at::parallel_for(0, B, row_grain(GH),
                           [&](int64_t b0, int64_t b1) { pointwise(t, 0, b0, b1, dh_cur, dh_nxt); });
        }
        gemm_dh(t, 0, dh_nxt);
        std::swap(dh_cur, dh_nxt);
      };
      // The steps of block b of the loop span the times [t_begin, t_end).
      const auto block_times = [&](int64_t b) {
        const int64_t k0 = b * plan.block_steps, k1 = std::min<int64_t>(T, k0 + plan.block_steps);
        return idx.reverse ? std::make_pair(k0, k1) : std::make_pair(T - k1, T - k0);
      };
      const auto run_block = [&](int64_t b) {
        for (int64_t k = b * plan.block_steps; k < std::min<int64_t>(T, (b + 1) * plan.block_steps); ++k) run_step(k);
      };
      // grad_w_ih[d] and grad_w_hh[d] (+)= gate gradients^T @ (x, h_prev) over the times
      // [t_begin, t_end); the first block writes, the later ones accumulate.
      scalar_t* gw_ih = grad_w_ih.data_ptr<scalar_t>() + d * GH * I;
      scalar_t* gw_hh = grad_w_hh.data_ptr<scalar_t>() + d * GH * P;
      const auto grad_w_ih_rows = [&](int64_t t_begin, int64_t t_end, bool accumulate) {
        gemm<scalar_t>(GH, I, (t_end - t_begin) * B, dgx_p + t_begin * B * GH, GH, /*a_transposed=*/true,
                       x_p + t_begin * B * I, I, /*b_transposed=*/false, accumulate ? 1 : 0, gw_ih, I);
      };
      const auto grad_w_hh_rows = [&](int64_t t_begin, int64_t t_end, bool accumulate) {
        gemm<scalar_t>(GH, P, (t_end - t_begin) * B, dgh_p + t_begin * B * GH, GH, /*a_transposed=*/true,
                       h_prev_p + t_begin * B * P, P, /*b_transposed=*/false, accumulate ? 1 : 0, gw_hh, P);
      };
      at::Tensor real;  // the real rows of dgx, x, h_prev (and dgh), gathered for the products over all steps
      scalar_t* dgx_real = nullptr;
      const int64_t R = padded_rows.real_rows(0, T);
      const auto weight_grads = [&](int64_t t_begin, int64_t t_end, bool accumulate) {
        if (padded_rows.worth_skipping(t_begin, t_end)) {
          // Over the rows that can be active only (PaddedRows), gathered: the others hold zero gradients.
          TORCH_INTERNAL_ASSERT(t_begin == 0 && t_end == T && !accumulate);
          real = at::empty({R * (GH + I + P + (Cell::kSeparateRecurrentGrad ? GH : 0))}, opts);
          dgx_real = real.data_ptr<scalar_t>();
          scalar_t* x_real = dgx_real + R * GH;
          scalar_t* h_real = x_real + R * I;
          scalar_t* dgh_real = Cell::kSeparateRecurrentGrad ? h_real + R * P : dgx_real;
          padded_rows.gather(T, GH, dgx_p, dgx_real);
          padded_rows.gather(T, I, x_p, x_real);
          padded_rows.gather(T, P, h_prev_p, h_real);
          if (Cell::kSeparateRecurrentGrad) padded_rows.gather(T, GH, dgh_p, dgh_real);
          gemm<scalar_t>(GH, I, R, dgx_real, GH, /*a_transposed=*/true, x_real, I, /*b_transposed=*/false, 0, gw_ih, I);
          gemm<scalar_t>(GH, P, R, dgh_real, GH, /*a_transposed=*/true, h_real, P, /*b_transposed=*/false, 0, gw_hh, P);
          return;
        }
        grad_w_ih_rows(t_begin, t_end, accumulate);
        grad_w_hh_rows(t_begin, t_end, accumulate);
      };

      if (plan.pipelined) {
        // The second thread forms W_ih's gradient block by block; W_hh's, which took about as
        // long again, runs after the loop on both threads. With both on the second thread it
        // outlasted the loop once the panel kernel made the steps faster (LSTM B=8, H=128:
        // backward 5.4-6.3 ms -> 4.4-5.5 ms, noisy A/B on the AVX2 machine).
        run_pipelined(num_blocks, num_blocks, /*caller_produces=*/true, run_block, [&](int64_t b) {
          const auto [t_begin, t_end] = block_times(b);
          grad_w_ih_rows(t_begin, t_end, b > 0);
        });
        grad_w_hh_rows(0, T, false);
      } else if (S == 1) {
        for (int64_t k = 0; k < T; ++k) run_step(k);
        weight_grads(0, T, false);
      } else {
        // One parallel region per step: slice i finishes dL/dh_t for its units (the GEMM of
        // the step before), then runs step t's pointwise pass on them.
        int64_t t_pending = -1;  // the step whose GEMM is still owed
        for (int64_t k = 0; k < T; ++k) {
          const int64_t t = time_of(k);
          for_each_slice(S, [&](int64_t i) {
            if (t_pending >= 0) gemm_dh(t_pending, i, dh_cur);
            pointwise(t, i, 0, B, dh_cur, dh_nxt);
          });
          std::swap(dh_cur, dh_nxt);
          t_pending = t;
        }
        if (t_pending >= 0) for_each_slice(S, [&](int64_t i) { gemm_dh(t_pending, i, dh_cur); });
        weight_grads(0, T, false);
      }
      if (dh_cur != dh_state_p) {
        std::copy(dh_cur, dh_cur + B * P, dh_state_p);
      }
      // What needs every step at once: x's gradient (summed over directions), the biases'.
      const at::Tensor dgx_2d = dgx.view({T * B, GH});
      if (grad_x.defined()) {
        const PackedWeight<scalar_t> w_ih_packed(w_ih.data_ptr<scalar_t>() + d * GH * I, I, I, GH,
                                                 /*transposed=*/false, /*max_rows=*/0, T * B, opts);
        scalar_t* gx = grad_x.data_ptr<scalar_t>();
        if (dgx_real != nullptr) {
          // One product over the real rows gathered for the weight gradients, then each step's rows into place
          // (added for the second direction); the padded rows' gradient is zero.
          at::Tensor gx_real = at::empty({R * I}, opts);
          scalar_t* g = gx_real.data_ptr<scalar_t>();
          w_ih_packed.multiply(R, dgx_real, GH, 0, g, I);
          for (int64_t t = 0; t < T; ++t) {
            const int64_t n = active_rows[t];
            scalar_t* dst = gx + t * B * I;
            if (d == d_begin) {
              std::copy_n(g, n * I, dst);
              std::fill(dst + n * I, dst + B * I, scalar_t(0));
            } else {
              for (int64_t e = 0; e < n * I; ++e) {
                dst[e] = static_cast<scalar_t>(static_cast<opmath_t>(dst[e]) + static_cast<opmath_t>(g[e]));
              }
            }
            g += n * I;
          }
        } else if (padded_rows.worth_skipping(0, T)) {
          // (pipelined: the weight gradients were formed block by block) Step by step over the rows that can be
          // active; the others' gradient is zero.
          for (int64_t t = 0; t < T; ++t) {
            const int64_t n = active_rows[t];
            w_ih_packed.multiply(n, dgx_p + t * B * GH, GH, d == d_begin ? 0 : 1, gx + t * B * I, I);
            if (d == d_begin) std::fill(gx + (t * B + n) * I, gx + (t + 1) * B * I, scalar_t(0));
          }
        } else {
          w_ih_packed.multiply(T * B, dgx_p, GH, d == d_begin ? 0 : 1, gx, I);
        }
      }
      if (grad_b_ih.defined()) {
        at::Tensor grad_b_ih_d = grad_b_ih[d];
        at::sum_out(grad_b_ih_d, dgx_2d, at::IntArrayRef{0});
      }
      if (grad_b_hh.defined()) {
        at::Tensor grad_b_hh_d = grad_b_hh[d];
        if (Cell::kSeparateRecurrentGrad) {
          at::sum_out(grad_b_hh_d, dgh.view({T * B, GH}), at::IntArrayRef{0});
        } else if (grad_b_ih.defined()) {
          grad_b_hh_d.copy_(grad_b_ih[d]);  // dgh is dgx
        } else {
          at::sum_out(grad_b_hh_d, dgx_2d, at::IntArrayRef{0});
        }
      }
      if (s.proj) {
        at::Tensor grad_w_hr_d = grad_w_hr[d];
        at::mm_out(grad_w_hr_d, dh_all.view({T * B, P}).t(), r_all.view({T * B, H}));
      }
    }
  }
};


// ---------------------------------------------------------------- op entry points

// Forward of one layer. Returns y [T, B, D*P], hn [D, B, P], cn [D, B, H] (undefined
// unless the cell has a cell state) and the workspace [D, T, B, kSaved*H] (empty [0] when
// save_for_backward is false).
template <typename Cell>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_forward(
    const char* op, const at::Tensor& x_in, const at::Tensor& w_ih_in, const c10::optional<at::Tensor>& b_ih_in,
    const at::Tensor& h0_in, const at::Tensor* c0_in, const at::Tensor& w_hh_in,
    const c10::optional<at::Tensor>& b_hh_in, const c10::optional<at::Tensor>& w_hr_in,
    const c10::optional<at::Tensor>& lengths, bool save) {
  const ProjectionShape x_proj_shape = check_input_args(op, Cell::kGates, x_in, w_ih_in, b_ih_in);
  const LayerSizes s =
      check_layer_args(op, Cell::kGates, x_proj_shape, h0_in, c0_in, w_hh_in, b_hh_in, w_hr_in, lengths);
  TORCH_CHECK(x_in.device().is_cpu(), op, ": the CPU kernel got x on ", x_in.device());
  const std::vector<int64_t> active_rows = active_rows_per_step(op, lengths, s.T, s.B);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w_ih = w_ih_in.contiguous();
  const c10::optional<at::Tensor> b_ih = b_ih_in ? c10::optional<at::Tensor>(b_ih_in->contiguous()) : c10::nullopt;
  const at::Tensor h0 = h0_in.contiguous();
  const at::Tensor c0 = c0_in ? c0_in->contiguous() : at::Tensor();
  const at::Tensor w_hh = w_hh_in.contiguous();
  const c10::optional<at::Tensor> b_hh = b_hh_in ? c10::optional<at::Tensor>(b_hh_in->contiguous()) : c10::nullopt;
  const c10::optional<at::Tensor> w_hr = w_hr_in ? c10::optional<at::Tensor>(w_hr_in->contiguous()) : c10::nullopt;
  const at::Tensor lengths_c = lengths ? lengths->contiguous() : at::Tensor();

  LayerOutputs out = new_layer_outputs(x, s, Cell::kHasCellState, Cell::kSaved, save, recycling_allocator());
  if (no_hidden_units(s)) {
    return out.tuple();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastrnn_layer_forward", [&] {
    Engine<Cell, scalar_t>::forward(s, x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths_c, active_rows, save, out.y,
                                    out.hn, out.cn, out.workspace);
  });
  return out.tuple();
}

// Backward of one layer. Returns grad_x (empty [0] unless need_grad_x), grad_w_ih, grad_b_ih
// (empty [0] without b_ih), grad_h0, grad_c0 (undefined without a cell state), grad_w_hh,
// grad_b_hh (empty [0] without b_hh) and grad_w_hr (empty [0] without w_hr).
template <typename Cell>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
layer_backward(const char* op, const at::Tensor& grad_y_in, const at::Tensor& grad_hn_in, const at::Tensor* grad_cn_in,
               const at::Tensor& x_in, const at::Tensor& w_ih_in, const c10::optional<at::Tensor>& b_ih_in,
               const at::Tensor& h0_in, const at::Tensor* c0_in, const at::Tensor& w_hh_in,
               const c10::optional<at::Tensor>& b_hh_in, const c10::optional<at::Tensor>& w_hr_in,
               const c10::optional<at::Tensor>& lengths, const at::Tensor& y_in, const at::Tensor& saved_in,
               bool need_grad_x) {
  const ProjectionShape x_proj_shape = check_input_args(op, Cell::kGates, x_in, w_ih_in, b_ih_in);
  const LayerSizes s =
      check_layer_args(op, Cell::kGates, x_proj_shape, h0_in, c0_in, w_hh_in, b_hh_in, w_hr_in, lengths);
  TORCH_CHECK(x_in.device().is_cpu(), op, ": the CPU kernel got x on ", x_in.device());
  check_backward_args(op, s, Cell::kSaved, grad_y_in, grad_hn_in, grad_cn_in, x_in, y_in, saved_in);
  const std::vector<int64_t> active_rows = active_rows_per_step(op, lengths, s.T, s.B);

  const at::Tensor grad_y = grad_y_in.contiguous();
  const at::Tensor grad_hn = grad_hn_in.contiguous();
  const at::Tensor grad_cn = grad_cn_in ? grad_cn_in->contiguous() : at::Tensor();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w_ih = w_ih_in.contiguous();
  const at::Tensor h0 = h0_in.contiguous();
  const at::Tensor c0 = c0_in ? c0_in->contiguous() : at::Tensor();
  const at::Tensor w_hh = w_hh_in.contiguous();
  const c10::optional<at::Tensor> w_hr = w_hr_in ? c10::optional<at::Tensor>(w_hr_in->contiguous()) : c10::nullopt;
  const at::Tensor lengths_c = lengths ? lengths->contiguous() : at::Tensor();
  const at::Tensor y = y_in.contiguous();
  const at::Tensor saved = saved_in.contiguous();

  LayerGrads g = new_layer_grads(x, s, b_ih_in.has_value(), b_hh_in.has_value(), Cell::kHasCellState, need_grad_x,
                                 recycling_allocator());
  if (no_hidden_units(s)) {
    return zero_input_grads(g).tuple(x.options());
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastrnn_layer_backward", [&] {
    Engine<Cell, scalar_t>::backward(s, grad_y, grad_hn, grad_cn, x, w_ih, h0, c0, w_hh, w_hr, lengths_c,
                                     active_rows, y, saved, g.grad_x, g.grad_w_ih, g.grad_b_ih, g.grad_h0,
                                     g.grad_c0, g.grad_w_hh, g.grad_b_hh, g.grad_w_hr);
  });
  return g.tuple(x.options());
}

}  // namespace cpu
}  // namespace fastrnn
