#pragma once
// Tensor views: a pointer, a dtype and a row-major contiguous shape (up to 4 dims).
// Views never own memory; Tensor owns its buffer through a deleter supplied by whoever allocated it
// (host malloc, cudaMalloc, a memory map), so the same type carries host and device data.
#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>

#include "core/dtype.h"

namespace moe {

// Where a tensor lives: host memory, or the memory of CUDA device `index`.
struct Device {
  enum class Kind : uint8_t { Host, Cuda };
  Kind kind = Kind::Host;
  int32_t index = 0;

  static constexpr Device host() { return Device{}; }
  static constexpr Device cuda(int32_t i = 0) { return Device{Kind::Cuda, i}; }
  bool is_host() const { return kind == Kind::Host; }
  bool is_cuda() const { return kind == Kind::Cuda; }
  bool operator==(const Device&) const = default;
  std::string str() const;  // "cpu", "cuda:1"
  // "cpu", "cuda" (device 0) or "cuda:N"; throws moe::Error naming the text otherwise.
  static Device parse(const std::string& text);
};

struct Shape {
  std::array<int64_t, 4> dims{0, 0, 0, 0};
  int rank = 0;

  Shape() = default;
  Shape(std::initializer_list<int64_t> d) : rank(int(d.size())) {
    int i = 0;
    for (int64_t v : d) dims[i++] = v;
  }
  int64_t operator[](int i) const { return dims[i]; }
  int64_t& operator[](int i) { return dims[i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= dims[i];
    return n;
  }
  bool operator==(const Shape& o) const {
    if (rank != o.rank) return false;
    for (int i = 0; i < rank; ++i)
      if (dims[i] != o.dims[i]) return false;
    return true;
  }
  std::string str() const;  // "[2, 3]"
};

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  Shape shape;
  Device device;

  int64_t numel() const { return shape.numel(); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape[i]; }
  int64_t rows() const { return shape.rank ? shape[0] : 1; }
  int64_t row_size() const { return shape.rank ? numel() / shape[0] : 1; }  // elements per leading index
  bool empty() const { return data == nullptr; }

  template <typename T>
  T* as() const { return static_cast<T*>(data); }
  // Rows [begin, begin+count) of the leading dimension.
  TensorView slice_rows(int64_t begin, int64_t count) const {
    TensorView v = *this;
    v.data = static_cast<char*>(data) + size_t(begin) * size_t(row_size()) * dtype_size(dtype);
    v.shape[0] = count;
    return v;
  }
  TensorView reshaped(Shape s) const {
    TensorView v = *this;
    v.shape = s;
    return v;
  }
};

// An owning tensor. Copies share the buffer.
class Tensor {
 public:
  Tensor() = default;
  Tensor(TensorView view, std::shared_ptr<void> storage) : view_(view), storage_(std::move(storage)) {}

  static Tensor host(DType dtype, Shape shape);  // zero-initialised host memory

  const TensorView& view() const { return view_; }
  operator const TensorView&() const { return view_; }
  void* data() const { return view_.data; }
  template <typename T>
  T* as() const { return view_.as<T>(); }
  const Shape& shape() const { return view_.shape; }
  DType dtype() const { return view_.dtype; }
  int64_t numel() const { return view_.numel(); }
  int64_t dim(int i) const { return view_.shape[i]; }
  bool empty() const { return view_.data == nullptr; }

 private:
  TensorView view_;
  std::shared_ptr<void> storage_;
};

}  // namespace moe
