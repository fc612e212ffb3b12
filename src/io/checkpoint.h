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

// Where the model's weights come from, by their checkpoint names: a checkpoint directory, or random tensors made
// on demand (model/random_checkpoint.h, `--random-weights`). Tensors live as long as the source.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual const std::string& dir() const = 0;  // for error messages
  virtual bool has(const std::string& name) const = 0;
  // The tensor, checked against the expected shape; errors name the file and tensor.
  virtual TensorView get(const std::string& name, const Shape& expected_shape) const = 0;
  virtual std::optional<TensorView> find(const std::string& name) const = 0;
  virtual std::string file_of(const std::string& name) const = 0;  // for error messages
  virtual std::vector<std::string> names() const = 0;
};

class Checkpoint final : public TensorSource {
 public:
  explicit Checkpoint(const std::string& dir);

  const std::string& dir() const override { return dir_; }
  bool has(const std::string& name) const override { return locate_.count(name) != 0; }
  // The tensor, checked against the expected dtype set and shape; errors name the file and tensor.
  TensorView get(const std::string& name) const;
  TensorView get(const std::string& name, const Shape& expected_shape) const override;
  std::optional<TensorView> find(const std::string& name) const override;
  std::string file_of(const std::string& name) const override;  // for error messages
  std::vector<std::string> names() const override;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const SafetensorsEntry*>> locate_;
};

}  // namespace moe
