#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace moe {

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

Tensor Tensor::host(DType dtype, Shape shape) {
  TensorView v;
  v.dtype = dtype;
  v.shape = shape;
  v.device = Device::Host;
  const size_t bytes = std::max<size_t>(v.nbytes(), 1);
  const size_t rounded = (bytes + 63) / 64 * 64;  // 64-byte aligned rows for the vector kernels
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, rounded);
  v.data = p;
  return Tensor(v, std::shared_ptr<void>(p, std::free));
}

}  // namespace moe
