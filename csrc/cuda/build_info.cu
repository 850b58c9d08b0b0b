// The archs whose device code the build embeds, for fastrnn.backend_info().
#include <string>

namespace fastrnn {
namespace cuda {

// nvcc defines __CUDA_ARCH_LIST__ (e.g. 750,900) in every pass, host included.
std::string compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
// Variadic: with several archs the list expands to several macro arguments (800,900).
#define FASTRNN_STR2(...) #__VA_ARGS__
#define FASTRNN_STR(...) FASTRNN_STR2(__VA_ARGS__)
  return FASTRNN_STR(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

}  // namespace cuda
}  // namespace fastrnn
