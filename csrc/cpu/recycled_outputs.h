// Large outputs of the CPU ops (weight gradients, workspaces, y) drawn from blocks that earlier outputs freed.
//
// Why: glibc serves a block over its mmap threshold (128 KiB at first, rising up to 32 MB) with fresh pages
// and gives the pages back when the top of its heap holds more than twice that free, so an output of a few MB
// that autograd frees right after use (a weight gradient, added into .grad) comes back as fresh pages on the
// next call, and every page is faulted in and zeroed again. A GRUCell training step at H = 512, B = 1 has two
// 3 MB weight gradients: the backward op alone took 2.7-4.7 ms with fresh pages, against 1.1 ms with glibc's
// trimming turned off (MALLOC_TRIM_THRESHOLD_/MALLOC_MMAP_THRESHOLD_, same machine) and 1.3-1.8 ms in a loop that
// kept earlier results alive (their pages not given back), while its arithmetic is a few microseconds. So the ops allocate such outputs through recycling_allocator(): when an
// output's storage dies, its block is kept (up to FASTRNN_SCRATCH_LIMIT_MB in all, the limit the scratch
// buffers have per buffer) and serves the next output of the same rounded size. An output's contents are
// undefined either way (at::empty); nothing else changes for its user: the storage is an ordinary CPU storage,
// resizable (resizing allocates through this allocator again). fastrnn.empty_cache() frees the kept blocks.
#pragma once

#include <c10/core/Allocator.h>

#include <cstdint>

namespace fastrnn {
namespace cpu {

// Outputs under this size come from torch's CPU allocator as usual (glibc keeps small blocks in its heap).
constexpr int64_t kMinRecycledBytes = int64_t{128} << 10;

// The allocator of the CPU ops' outputs.
c10::Allocator* recycling_allocator();

// Frees the blocks kept for reuse; returns their bytes. Blocks of live outputs are not affected.
int64_t empty_recycled_outputs();

// Bytes kept for reuse now.
int64_t recycled_output_bytes();

}  // namespace cpu
}  // namespace fastrnn
