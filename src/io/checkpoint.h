#pragma once
// A checkpoint directory as published on the Hugging Face hub: config.json plus model.safetensors, or shards
// listed in model.safetensors.index.json. All shards are memory-mapped; nothing is converted.
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace moe {

class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool has(const std::string& name) const { return locate_.count(name) != 0; }
  // The tensor, checked against the expected dtype set and shape; errors name the file and tensor.
  TensorView get(const std::string& name) const;
  TensorView get(const std::string& name, const Shape& expected_shape) const;
  std::optional<TensorView> find(const std::string& name) const;
  std::string file_of(const std::string& name) const;  // for error messages
  std::vector<std::string> names() const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const SafetensorsEntry*>> locate_;
};

}  // namespace moe
