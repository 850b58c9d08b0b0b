// The CUDA side of the build. The CUDA kernels come with the CUDA issue; until then this
// file proves the toolchain works in CI and reports the archs whose device code is embedded.
#include <string>

namespace fastrnn {
namespace cuda {

// nvcc defines __CUDA_ARCH_LIST__ (e.g. 750,900) in every pass, host included.
std::string compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
#define FASTRNN_STR2(x) #x
#define FASTRNN_STR(x) FASTRNN_STR2(x)
  return FASTRNN_STR(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

}  // namespace cuda
}  // namespace fastrnn
