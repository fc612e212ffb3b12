#pragma once
// MLA's latent cache: per layer, fixed-size pages of page_size tokens, each token kv_lora_rank + qk_rope_head_dim
// values (the compressed latent and the shared rope key), never full keys and values.
// Storage only; which pages belong to which sequence is decided by the caller (engine/page_allocator.h).
#include <vector>

#include "backend/backend.h"
#include "io/model_config.h"

namespace moe {

class LatentCache {
 public:
  // `layers` is num_hidden_layers, plus one for the MTP module when it drafts.
  LatentCache(const ModelConfig& config, Backend& backend, int64_t num_pages, int64_t page_size, int64_t layers);

  int64_t num_pages() const { return num_pages_; }
  int64_t page_size() const { return page_size_; }
  int64_t num_layers() const { return int64_t(layers_.size()); }
  const TensorView& layer(int64_t i) const { return layers_[size_t(i)].view(); }  // [pages, page_size, width]
  int64_t bytes_per_token() const;  // over all layers

 private:
  int64_t num_pages_, page_size_, width_;
  DType dtype_;
  std::vector<Tensor> layers_;
};

}  // namespace moe
