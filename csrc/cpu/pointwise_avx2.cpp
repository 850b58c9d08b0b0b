// The AVX2+FMA build of the pointwise kernels (float and double), chosen at run time by
// row_kernels() only on CPUs that have both. The target pragma rather than a compiler flag
// keeps the rest of the extension portable; at::vec's capability namespace (AVX2) and ours
// keep these symbols apart from the portable ones.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma")
// The pragma enables the instructions but not the feature macros that sleef.h and at::vec
// test to declare their AVX2 entry points, so they are defined here by hand.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define FASTRNN_CAPABILITY_NS capability_avx2
#include "pointwise.h"

namespace fastrnn {
namespace cpu {
namespace capability_avx2 {
template RowKernels<float> make_row_kernels<float>();
template RowKernels<double> make_row_kernels<double>();
}  // namespace capability_avx2
}  // namespace cpu
}  // namespace fastrnn
#endif
