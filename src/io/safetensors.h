#pragma once
// safetensors files: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
// data_offsets: [begin, end]}, "__metadata__": {...}}, then the data. Files are memory-mapped; tensors are
// views into the map. Every inconsistency (truncation, offsets past the end or overlapping, sizes that
// disagree with dtype x shape) is an error naming the file and the tensor.
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace moe {

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the start of the data section
};

// Parses and validates a header (the JSON text) against a data section of `data_size` bytes.
// `source` names the file in error messages. Exposed separately for the fuzz target.
std::vector<SafetensorsEntry> parse_safetensors_header(std::string_view header_json, uint64_t data_size,
                                                       const std::string& source);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const SafetensorsEntry* find(const std::string& name) const;
  TensorView view(const SafetensorsEntry& e) const;

 private:
  std::unique_ptr<MappedFile> file_;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
};

// Writes F32/BF16/... tensors to a safetensors file (tensors given as host views).
struct NamedTensor {
  std::string name;
  TensorView view;
};
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace moe
