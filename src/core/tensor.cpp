#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"

namespace moe {

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

std::string Device::str() const { return is_host() ? "cpu" : "cuda:" + std::to_string(index); }

Device Device::parse(const std::string& text) {
  if (text == "cpu") return host();
  if (text == "cuda") return cuda(0);
  if (text.rfind("cuda:", 0) == 0 && text.size() > 5 && text.size() <= 8) {
    int32_t i = 0;
    for (size_t k = 5; k < text.size(); ++k) {
      if (text[k] < '0' || text[k] > '9') i = -1;
      if (i >= 0) i = i * 10 + (text[k] - '0');
    }
    if (i >= 0) return cuda(i);
  }
  fail("unknown device '{}' (expected cpu, cuda or cuda:N)", text);
}

Tensor Tensor::host(DType dtype, Shape shape) {
  TensorView v;
  v.dtype = dtype;
  v.shape = shape;
  v.device = Device::host();
  const size_t bytes = std::max<size_t>(v.nbytes(), 1);
  const size_t rounded = (bytes + 63) / 64 * 64;  // 64-byte aligned rows for the vector kernels
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, rounded);
  v.data = p;
  return Tensor(v, std::shared_ptr<void>(p, std::free));
}

}  // namespace moe
