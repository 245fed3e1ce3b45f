// What the CUDA part of this binary was compiled for, read from nvcc's own macros.
#include <cuda_runtime_api.h>

#include <string>

#define FASTCONV_STRINGIFY_(...) #__VA_ARGS__
#define FASTCONV_STRINGIFY(...) FASTCONV_STRINGIFY_(__VA_ARGS__)

namespace fastconv {

std::string cuda_build_info() {
  std::string info = "\"cuda_runtime\": " + std::to_string(CUDART_VERSION) + ", \"cuda_archs\": [";
#ifdef __CUDA_ARCH_LIST__
  // nvcc defines __CUDA_ARCH_LIST__ (e.g. 900) as the comma-separated list of -gencode targets.
  info += std::string(FASTCONV_STRINGIFY(__CUDA_ARCH_LIST__));
#endif
  return info + "]";
}

}  // namespace fastconv
