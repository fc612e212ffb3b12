#pragma once
// The device sampler's launch (sample.cu): one block per row of logits, every row of a batch in one launch.
// Plain structs shared by the host side (cuda_backend_sample.cpp), which packs them into one upload.
#include <cuda_runtime.h>

#include <cstdint>

namespace moe::cuda {

// One row to sample (see SampleRow in backend/sampling.h).
struct SampleDesc {
  int64_t row = 0;  // row of the logits
  double u = 0.0;   // the draw, in [0, 1)
  float temperature = 0.0f, top_p = 1.0f, min_p = 0.0f;
  float repetition = 1.0f, frequency = 0.0f, presence = 0.0f;
  int32_t top_k = 0, vocab_limit = 0;
  int32_t edit_begin = 0, edit_end = 0;  // its edits: edits[edit_begin, edit_end), distinct ids
  int32_t mask_word = -1;                // its allowed-token words start at masks[mask_word]; -1: all allowed
  int32_t top_n = -1;                    // logprobs wanted: -1 none, else the chosen one's and top_n more
};

// The edits of one token of a row, in the host Sampler's order: bias added, repetition penalty (flag 2),
// frequency and presence penalties for `count` > 0 occurrences in the output.
struct SampleEdit {
  int32_t id = 0, count = 0;
  float bias = 0.0f;
  int32_t flags = 0;  // 1: bias, 2: repetition penalty
};

struct SampleOut {
  int32_t token = 0;
  float logprob = 0.0f;
};

// logits F32 [*, V] (rows edited in place); edit_raw [edits] scratch; top_ids / top_lp [R, top_stride], -1 ids
// past the end of a row's list.
void sample_rows(float* logits, int64_t V, const SampleDesc* descs, int64_t R, const SampleEdit* edits,
                 float* edit_raw, const uint32_t* masks, int32_t top_stride, SampleOut* out, int32_t* top_ids,
                 float* top_lp, cudaStream_t stream);

// ids[r] = the first largest non-NaN of logits[r, 0 .. n) (0 if all NaN), r < R; capturable (no host sync).
void argmax_rows(const float* logits, int64_t V, int64_t R, int64_t n, int32_t* ids, cudaStream_t stream);

}  // namespace moe::cuda
