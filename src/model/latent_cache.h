#pragma once
// MLA's latent cache: per layer, fixed-size pages of page_size tokens, each token kv_lora_rank + qk_rope_head_dim
// values (the compressed latent and the shared rope key), never full keys and values.
// DeepSeek-V3.2 (config.indexer) adds a second per-layer cache on the same pages and slots: each token's index key
// (index_head_dim values) for the sparse-attention indexer, in F32 on every backend: the selection is a top-k over
// scores whose near-ties (relative gaps of 4e-4 in the V3.2 fixture) BF16 keys (2^-9 rounding) flip, and a flipped
// position changes the attention by far more than the logits' tolerance. (The published model keeps the keys in
// FP8 with per-128 scales, trading exactness of the selection for memory: not done.)
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
  // The index keys of layer i [pages, page_size, index_head_dim]; an empty view without an indexer.
  TensorView index_layer(int64_t i) const { return index_layers_.empty() ? TensorView{} : index_layers_[size_t(i)].view(); }
  bool has_index_keys() const { return !index_layers_.empty(); }
  int64_t bytes_per_token() const;  // over all layers, index keys included

 private:
  int64_t num_pages_, page_size_, width_, index_width_;
  DType dtype_;
  std::vector<Tensor> layers_, index_layers_;
};

}  // namespace moe
