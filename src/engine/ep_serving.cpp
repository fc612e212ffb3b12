// Expert-parallel serving: the step broadcast, rank 0's hook and the followers' loop (see ep_serving.h).
#include "engine/ep_serving.h"

#include <cstring>
#include <span>

#include "core/error.h"
#include "engine/step_executor.h"

namespace moe {

namespace {

constexpr char kMagic[4] = {'M', 'O', 'E', 's'};
constexpr int32_t kVersion = 1, kStep = 1, kStop = 2, kSumLoads = 3;

void put(std::string& out, int32_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }

class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}
  int32_t i32(const char* what) {
    MOE_CHECK(pos_ + 4 <= s_.size(), "step message: truncated at {} (byte {} of {})", what, pos_, s_.size());
    int32_t v;
    std::memcpy(&v, s_.data() + pos_, 4);
    pos_ += 4;
    return v;
  }
  // A count of int32 values still to come: at most what the message has left.
  int32_t count(const char* what) {
    const int32_t n = i32(what);
    MOE_CHECK(n >= 0 && size_t(n) <= (s_.size() - pos_) / 4, "step message: {} {} is negative or past the end", what,
              n);
    return n;
  }
  std::string bytes(size_t n, const char* what) {
    MOE_CHECK(n <= s_.size() - pos_, "step message: {} of {} bytes past the end", what, n);
    std::string out = s_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  bool done() const { return pos_ == s_.size(); }

 private:
  const std::string& s_;
  size_t pos_ = 0;
};

void broadcast_message(dist::Communicator& comm, std::string& bytes) {
  int64_t n = int64_t(bytes.size());
  comm.broadcast(&n, sizeof n, 0);
  MOE_CHECK(n >= 0 && n < (int64_t(1) << 34), "step message of {} bytes", n);
  bytes.resize(size_t(n));
  if (n) comm.broadcast(bytes.data(), size_t(n), 0);
}

}  // namespace

std::string encode_step(const StepMessage& m) {
  std::string out(kMagic, 4);
  put(out, kVersion);
  put(out, m.stop ? kStop : m.sum_loads ? kSumLoads : kStep);
  if (m.stop || m.sum_loads) return out;
  put(out, int32_t(m.chunks.size()));
  for (const auto& c : m.chunks) {
    put(out, c.start_pos);
    put(out, c.all_logits ? 1 : 0);
    put(out, int32_t(c.tokens.size()));
    for (int32_t t : c.tokens) put(out, t);
    put(out, int32_t(c.pages.size()));
    for (int32_t p : c.pages) put(out, p);
  }
  const std::string json = m.placement ? m.placement->to_json() : std::string();
  put(out, int32_t(json.size()));
  out += json;
  return out;
}

StepMessage decode_step(const std::string& bytes) {
  MOE_CHECK(bytes.size() >= 4 && std::memcmp(bytes.data(), kMagic, 4) == 0, "step message: bad magic");
  const std::string body = bytes.substr(4);
  Reader r(body);
  const int32_t version = r.i32("version");
  MOE_CHECK(version == kVersion, "step message: version {} (expected {})", version, kVersion);
  const int32_t kind = r.i32("kind");
  MOE_CHECK(kind == kStep || kind == kStop || kind == kSumLoads, "step message: unknown kind {}", kind);
  StepMessage m;
  m.stop = kind == kStop;
  m.sum_loads = kind == kSumLoads;
  if (m.stop || m.sum_loads) {
    MOE_CHECK(r.done(), "step message: bytes after a {}", m.stop ? "stop" : "sum-loads message");
    return m;
  }
  const int32_t n = r.count("chunk count");
  for (int32_t i = 0; i < n; ++i) {
    SequenceChunk c;
    c.start_pos = r.i32("start_pos");
    MOE_CHECK(c.start_pos >= 0, "step message: chunk {} starts at {}", i, c.start_pos);
    const int32_t all = r.i32("all_logits");
    MOE_CHECK(all == 0 || all == 1, "step message: chunk {} all_logits {}", i, all);
    c.all_logits = all == 1;
    const int32_t nt = r.count("token count");
    for (int32_t k = 0; k < nt; ++k) c.tokens.push_back(r.i32("token"));
    const int32_t np = r.count("page count");
    for (int32_t k = 0; k < np; ++k) c.pages.push_back(r.i32("page"));
    m.chunks.push_back(std::move(c));
  }
  const int32_t json = r.i32("placement length");  // bytes; r.bytes checks them against the rest
  MOE_CHECK(json >= 0, "step message: placement length {}", json);
  if (json > 0) m.placement = ExpertPlacement::from_json(r.bytes(size_t(json), "placement"));
  MOE_CHECK(r.done(), "step message: bytes after the placement");
  return m;
}

Rebalance rebalance(const ExpertPlacement& current, const std::vector<std::vector<int64_t>>& window) {
  Rebalance out{current, 0, 0};
  int64_t layers = 0;
  for (size_t l = 0; l < current.layers.size() && l < window.size(); ++l) {
    if (current.layers[l].empty()) continue;
    int64_t tokens = 0;
    for (int64_t v : window[l]) tokens += v;
    if (tokens == 0) continue;  // a layer that saw nothing (the MTP layer without speculation) keeps its place
    out.imbalance_before += imbalance(rank_loads(current.layers[l], window[l], current.slots_per_rank));
    out.placement.layers[l] = eplb_layer(window[l], current.ranks, current.slots_per_rank);
    out.imbalance_after += imbalance(rank_loads(out.placement.layers[l], window[l], current.slots_per_rank));
    ++layers;
  }
  if (layers) {
    out.imbalance_before /= double(layers);
    out.imbalance_after /= double(layers);
  } else {
    out.imbalance_before = out.imbalance_after = 1;
  }
  return out;
}

EpLeader::EpLeader(DeepseekV3& model, EplbOptions eplb, EngineMetrics* metrics)
    : model_(model), eplb_(eplb), metrics_(metrics) {
  MOE_CHECK(model.expert_parallel(), "EpLeader: the model runs without expert parallelism");
  MOE_CHECK(model.expert_parallel()->rank() == 0, "EpLeader: this is rank {}, not 0", model.expert_parallel()->rank());
  MOE_CHECK(eplb.interval_steps == 0 || model.expert_load(), "EPLB needs the model's expert load counter");
}

void EpLeader::on_step(const std::vector<SequenceChunk>& chunks) {
  StepMessage m;
  m.chunks = chunks;
  ++steps_;
  if (eplb_.interval_steps > 0 && steps_ % eplb_.interval_steps == 0) {
    ExpertParallel& ep = *model_.expert_parallel();
    std::vector<std::vector<int64_t>> window;
    if (ep.data_parallel()) {  // each rank counted its own tokens
      std::string sum = encode_step(StepMessage{.sum_loads = true});
      broadcast_message(ep.comm(), sum);
      window = summed_load_window(*model_.expert_load(), ep.comm());
    } else {
      window = model_.expert_load()->take_window();
    }
    const Rebalance r = rebalance(ep.placement(), window);
    m.placement = r.placement;
    if (metrics_) {
      metrics_->eplb_rebalances++;
      metrics_->eplb_imbalance_before = r.imbalance_before;
      metrics_->eplb_imbalance_after = r.imbalance_after;
    }
  }
  std::string bytes = encode_step(m);
  broadcast_message(model_.expert_parallel()->comm(), bytes);
  if (m.placement) model_.set_placement(*m.placement);
}

void EpLeader::stop() {
  if (stopped_) return;
  stopped_ = true;
  std::string bytes = encode_step(StepMessage{.stop = true});
  broadcast_message(model_.expert_parallel()->comm(), bytes);
}

DpStepRunner::DpStepRunner(DeepseekV3& model, const SchedulerOptions& options)
    : layout_{options.cache_partitions, pages_for(options.cache_tokens, options.page_size) / options.cache_partitions},
      cache_(model.config(), model.backend(), layout_.pages_per_rank, options.page_size, model.cache_layers()),
      executor_(model) {
  MOE_CHECK(model.expert_parallel() && model.expert_parallel()->data_parallel(),
            "DpStepRunner: the model runs without data-parallel attention");
  MOE_CHECK(options.cache_partitions == model.expert_parallel()->ranks() &&
                pages_for(options.cache_tokens, options.page_size) % options.cache_partitions == 0,
            "DpStepRunner: {} cache parts of {} pages for {} ranks", options.cache_partitions,
            pages_for(options.cache_tokens, options.page_size), model.expert_parallel()->ranks());
}

ForwardOutput DpStepRunner::step(const std::vector<SequenceChunk>& chunks) {
  return dp_forward(executor_, layout_, chunks, cache_);
}

std::vector<std::vector<int64_t>> summed_load_window(ExpertLoadCounter& load, dist::Communicator& comm) {
  std::vector<std::vector<int64_t>> window = load.take_window();
  std::vector<double> flat;  // counts are exact in double up to 2^53
  for (const auto& l : window) flat.insert(flat.end(), l.begin(), l.end());
  comm.all_reduce_sum(std::span<double>(flat));
  size_t i = 0;
  for (auto& l : window)
    for (int64_t& v : l) v = int64_t(flat[i++]);
  return window;
}

void run_ep_follower(DeepseekV3& model, const SchedulerOptions& options) {
  ExpertParallel* ep = model.expert_parallel();
  MOE_CHECK(ep && ep->rank() != 0, "run_ep_follower: not a follower rank");
  std::optional<DpStepRunner> dp;
  std::optional<LatentCache> cache;  // replicated: laid out like rank 0's
  if (ep->data_parallel())
    dp.emplace(model, options);
  else
    cache.emplace(model.config(), model.backend(), pages_for(options.cache_tokens, options.page_size),
                  options.page_size, model.cache_layers());
  StepExecutor executor(model);
  for (;;) {
    std::string bytes;
    broadcast_message(ep->comm(), bytes);
    const StepMessage m = decode_step(bytes);
    if (m.stop) return;
    if (m.sum_loads) {
      MOE_CHECK(model.expert_load(), "rank {}: asked to sum expert loads without a counter", ep->rank());
      summed_load_window(*model.expert_load(), ep->comm());
      continue;
    }
    if (m.placement) model.set_placement(*m.placement);
    try {
      if (dp)
        dp->step(m.chunks);
      else
        executor.forward(m.chunks, *cache);
    } catch (const std::exception&) {
      // Rank 0 fails the same step the same way (same inputs) and reports it to the requests.
    }
  }
}

}  // namespace moe
