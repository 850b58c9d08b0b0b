// The AVX-512 build of the pointwise kernels (float and double), chosen at run time by
// row_kernels() where torch itself runs its AVX-512 kernels. Built like pointwise_avx2.cpp:
// a target pragma instead of a compiler flag, and the feature macros sleef.h and at::vec
// test defined by hand.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define FASTRNN_CAPABILITY_NS capability_avx512
#include "pointwise.h"

namespace fastrnn {
namespace cpu {
namespace capability_avx512 {
template RowKernels<float> make_row_kernels<float>();
template RowKernels<double> make_row_kernels<double>();
}  // namespace capability_avx512
}  // namespace cpu
}  // namespace fastrnn
#endif
