// Scratch memory kept from one call to the next, and how to give it back.
//
// The big internal buffers (every step's input projection, the gate gradients: [T, B, G*H], tens
// of MB at T=100, B=64, H=512) otherwise come from fresh pages on every call, since glibc serves
// blocks over 32 MB by mmap and unmaps them on free, and the page faults of first touch measured
// ~35 ms per such buffer there (LSTM forward: ~15%). So each thread keeps its largest buffer per
// slot, as cuDNN keeps a workspace, up to a limit per buffer (FASTRNN_SCRATCH_LIMIT_MB, read once;
// default kDefaultScratchLimitMB): a larger buffer serves its call only and is freed when the call
// returns, so one long sequence does not leave the process large for good. empty_scratch_cache()
// (fastrnn.empty_cache()) frees what every thread keeps. Outputs never live here. With
// FASTRNN_DEBUG=1 scratch is NaN-filled.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastrnn {
namespace cpu {

enum ScratchSlot { kScratchProjection, kScratchGateGrads, kScratchRecurrentGateGrads, kScratchPrevStates,
                   kScratchSlots };

// Chosen by measurement (README, "Memory"): above the buffers of the benchmark grids' largest cases,
// so they keep their speed, and far below what a long sequence asks for.
constexpr int64_t kDefaultScratchLimitMB = 256;

// A tensor of `sizes` and like's dtype and device (CPU), its contents undefined: a view of this
// thread's buffer for `slot`, valid until this thread asks for that slot again.
at::Tensor scratch(ScratchSlot slot, const at::Tensor& like, at::IntArrayRef sizes);

// Frees the buffers every thread keeps; returns their bytes. A buffer in use by a call running
// now stays alive until that call returns (the call holds a view of it), then goes.
int64_t empty_scratch_cache();

// Bytes kept now, over all threads.
int64_t scratch_bytes_kept();

// The most bytes one kept buffer may have.
int64_t scratch_limit_bytes();

}  // namespace cpu
}  // namespace fastrnn
