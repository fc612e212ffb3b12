// CudaBackend::sample: the rows' settings, their edits (logit_bias and penalties merged per token id, in the
// host Sampler's order) and their allowed-token words packed into one upload; cuda::sample_rows; the ids and
// logprobs back in one download.
#include <algorithm>
#include <cstring>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/sample.h"
#include "core/error.h"

namespace moe {

namespace {

// The edits of one row, merged per id (ids outside [0, V) are ignored, as on the host).
void row_edits(const SampleRow& r, int64_t V, std::vector<cuda::SampleEdit>& edits) {
  const SamplingParams& p = *r.params;
  const size_t first = edits.size();
  const auto in_row = [&](int32_t t) { return t >= 0 && int64_t(t) < V; };
  for (auto [id, bias] : p.logit_bias)
    if (in_row(id)) edits.push_back({id, 0, bias, 1});
  if (p.repetition_penalty != 1.0f)
    for (auto tokens : {r.prompt, r.output})
      for (int32_t t : tokens)
        if (in_row(t)) edits.push_back({t, 0, 0.0f, 2});
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f)
    for (int32_t t : r.output)
      if (in_row(t)) edits.push_back({t, 1, 0.0f, 0});
  // Stable: several biases of one id add up in the order given (the host adds them one by one; the device
  // adds their sum, which differs only for an id listed twice).
  std::stable_sort(edits.begin() + std::ptrdiff_t(first), edits.end(),
                   [](const cuda::SampleEdit& a, const cuda::SampleEdit& b) { return a.id < b.id; });
  size_t out = first;
  for (size_t i = first; i < edits.size(); ++i) {
    if (out > first && edits[out - 1].id == edits[i].id) {
      cuda::SampleEdit& m = edits[out - 1];
      if (edits[i].flags & 1) m.bias = (m.flags & 1) ? m.bias + edits[i].bias : edits[i].bias;
      m.flags |= edits[i].flags;
      m.count += edits[i].count;
    } else {
      edits[out++] = edits[i];
    }
  }
  edits.resize(out);
}

template <class T>
void append_bytes(std::vector<uint8_t>& buf, const std::vector<T>& v) {
  const size_t at = buf.size();
  buf.resize(at + v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(buf.data() + at, v.data(), v.size() * sizeof(T));
}

}  // namespace

void CudaBackend::sample(const TensorView& logits, std::span<const SampleRow> rows, std::vector<SampleResult>& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  MOE_CHECK(logits.dtype == DType::F32 && logits.shape.rank == 2, "sample: logits must be F32 [rows, vocab]");
  const int64_t R = int64_t(rows.size()), V = logits.shape[1];
  MOE_CHECK(V > 0 && V < (int64_t(1) << 30), "sample: vocabulary of {} ids", V);
  out.assign(rows.size(), {});
  if (R == 0) return;
  std::vector<cuda::SampleDesc> descs(rows.size());
  std::vector<cuda::SampleEdit> edits;
  std::vector<uint32_t> masks;
  int32_t top_stride = 1;
  const size_t words = size_t((V + 31) / 32);
  for (size_t i = 0; i < rows.size(); ++i) {
    const SampleRow& r = rows[i];
    MOE_CHECK(r.row >= 0 && r.row < logits.shape[0] && r.params, "sample: bad row {}", i);
    MOE_CHECK(r.top_logprobs <= 64, "sample: at most 64 top logprobs ({} asked)", r.top_logprobs);
    const SamplingParams& p = *r.params;
    cuda::SampleDesc& d = descs[i];
    d.row = r.row;
    d.u = r.u;
    d.temperature = p.temperature;
    d.top_p = p.top_p;
    d.min_p = p.min_p;
    d.repetition = p.repetition_penalty;
    d.frequency = p.frequency_penalty;
    d.presence = p.presence_penalty;
    d.top_k = p.top_k;
    d.vocab_limit = int32_t(std::clamp<int64_t>(r.vocab_limit, 0, V));
    d.edit_begin = int32_t(edits.size());
    row_edits(r, V, edits);
    d.edit_end = int32_t(edits.size());
    if (!r.allowed.empty()) {
      MOE_CHECK(r.allowed.size() == words, "sample: row {} has {} mask words for {} ids", i, r.allowed.size(), V);
      d.mask_word = int32_t(masks.size());
      masks.insert(masks.end(), r.allowed.begin(), r.allowed.end());
    }
    d.top_n = r.top_logprobs;
    top_stride = std::max(top_stride, r.top_logprobs);
  }
  // One upload: descs (8-byte aligned), edits, masks.
  std::vector<uint8_t> buf;
  append_bytes(buf, descs);
  const size_t edits_at = buf.size();
  append_bytes(buf, edits);
  const size_t masks_at = buf.size();
  append_bytes(buf, masks);
  buf.resize((buf.size() + 7) / 8 * 8);
  Tensor in = scratch(DType::U8, {int64_t(buf.size())});
  copy_from_host(buf.data(), in);
  Tensor raw = scratch(DType::F32, {std::max<int64_t>(1, int64_t(edits.size()))});
  // One download: SampleOut [R], top ids I32 [R, stride], top logprobs F32 [R, stride].
  const size_t out_bytes = size_t(R) * (sizeof(cuda::SampleOut) + size_t(top_stride) * 8);
  Tensor res = scratch(DType::U8, {int64_t(out_bytes)});
  auto* base = in.as<uint8_t>();
  auto* rbase = res.as<uint8_t>();
  auto* res_out = reinterpret_cast<cuda::SampleOut*>(rbase);
  auto* res_ids = reinterpret_cast<int32_t*>(rbase + size_t(R) * sizeof(cuda::SampleOut));
  auto* res_lp = reinterpret_cast<float*>(res_ids + R * top_stride);
  cuda::sample_rows(logits.as<float>(), V, reinterpret_cast<const cuda::SampleDesc*>(base), R,
                    reinterpret_cast<const cuda::SampleEdit*>(base + edits_at), raw.as<float>(),
                    reinterpret_cast<const uint32_t*>(base + masks_at), top_stride, res_out, res_ids, res_lp, stream_);
  std::vector<uint8_t> host(out_bytes);
  copy_to_host(res, host.data());  // synchronises
  const auto* h_out = reinterpret_cast<const cuda::SampleOut*>(host.data());
  const auto* h_ids = reinterpret_cast<const int32_t*>(host.data() + size_t(R) * sizeof(cuda::SampleOut));
  const auto* h_lp = reinterpret_cast<const float*>(h_ids + R * top_stride);
  for (size_t i = 0; i < rows.size(); ++i) {
    out[i].token = h_out[i].token;
    out[i].logprob = h_out[i].logprob;
    for (int32_t j = 0; j < rows[i].top_logprobs; ++j) {
      const int32_t id = h_ids[int64_t(i) * top_stride + j];
      if (id < 0) break;
      out[i].top.emplace_back(id, h_lp[int64_t(i) * top_stride + j]);
    }
  }
}

void CudaBackend::argmax_rows(const TensorView& logits, int64_t limit, const TensorView& ids) {
  const cuda::DeviceGuard guard(ctx_.device());
  MOE_CHECK(logits.dtype == DType::F32 && logits.shape.rank == 2, "argmax_rows: logits must be F32 [rows, vocab]");
  MOE_CHECK(ids.dtype == DType::I32 && ids.numel() == logits.shape[0], "argmax_rows: ids must be I32 with {} elements",
            logits.shape[0]);
  const int64_t R = logits.shape[0], V = logits.shape[1], n = limit > 0 && limit < V ? limit : V;
  cuda::argmax_rows(logits.as<const float>(), V, R, n, ids.as<int32_t>(), stream_);
}

void CudaBackend::kept_rows(const TensorView& tokens, const TensorView& verified, const TensorView& rows) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t S = check_kept_rows(tokens, verified, rows);
  cuda::kept_rows(tokens.as<const int32_t>(), verified.as<const int32_t>(), S, int32_t(tokens.numel() / S),
                  rows.as<int32_t>(), stream_);
}

void CudaBackend::chain_batch(const DeviceBatch& from, const TensorView& rows, int32_t advance,
                              const DeviceBatch& to) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t S = check_chain_batch(from, rows, advance, to);
  cuda::chain_batch(from.positions.as<const int32_t>(), from.block_table.as<const int32_t>(),
                    rows.as<const int32_t>(), S, from.plan->max_pages, from.plan->page_size, advance,
                    to.positions.as<int32_t>(), to.slots.as<int32_t>(), to.seq_lens.as<int32_t>(), stream_);
}

// The row ids are on the device (the caller's: kept_rows), so they are not range-checked here.
void CudaBackend::index_rows(const TensorView& x, const TensorView& rows, const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  check_index_rows(x, rows, out);
  cuda::gather_rows(x.as<const float>(), rows.as<const int32_t>(), rows.numel(), x.row_size(),
                    out.as<float>(), stream_);
}

}  // namespace moe
