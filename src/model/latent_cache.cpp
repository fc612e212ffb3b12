#include "model/latent_cache.h"

namespace moe {

LatentCache::LatentCache(const ModelConfig& config, Backend& backend, int64_t num_pages, int64_t page_size,
                         int64_t layers)
    : num_pages_(num_pages),
      page_size_(page_size),
      width_(config.cache_width()),
      index_width_(config.indexer ? config.indexer->head_dim : 0),
      dtype_(backend.cache_dtype()) {
  for (int64_t i = 0; i < layers; ++i) layers_.push_back(backend.alloc(dtype_, Shape{num_pages, page_size, width_}));
  if (index_width_)
    for (int64_t i = 0; i < layers; ++i)
      index_layers_.push_back(backend.alloc(DType::F32, Shape{num_pages, page_size, index_width_}));
}

int64_t LatentCache::bytes_per_token() const {
  return int64_t(layers_.size()) * (width_ * int64_t(dtype_size(dtype_)) + index_width_ * int64_t(sizeof(float)));
}

}  // namespace moe
