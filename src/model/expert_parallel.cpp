// Expert-parallel MoE: dispatch, the local experts, combine, all-gather (shapes in expert_parallel.h).
#include "model/expert_parallel.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <span>

#include "core/error.h"
#include "model/fp8_rows.h"

namespace moe {

namespace {

// Exclusive prefix sums of `counts` scaled by `unit` bytes.
std::vector<size_t> displs(const std::vector<size_t>& counts) {
  std::vector<size_t> d(counts.size(), 0);
  for (size_t i = 1; i < counts.size(); ++i) d[i] = d[i - 1] + counts[i - 1];
  return d;
}

std::vector<size_t> scaled(const std::vector<int64_t>& n, size_t unit) {
  std::vector<size_t> out(n.size());
  for (size_t i = 0; i < n.size(); ++i) out[i] = size_t(n[i]) * unit;
  return out;
}

// Exchanges one int64 per peer: what this rank sends to p -> what p receives from it.
std::vector<int64_t> exchange_counts(dist::Communicator& comm, const std::vector<int64_t>& send) {
  const size_t R = size_t(comm.size());
  std::vector<int64_t> recv(R, 0);
  const std::vector<size_t> c(R, sizeof(int64_t));
  std::vector<size_t> d(R);
  for (size_t i = 0; i < R; ++i) d[i] = i * sizeof(int64_t);
  comm.all_to_all_v(send.data(), c, d, recv.data(), c, d);
  return recv;
}

// Whether `comm` can exchange `backend`'s tensors in their own memory: host tensors, or device ones over NCCL. A
// host communicator (MPI) with a device backend goes through host copies instead.
bool in_place(const dist::Communicator& comm, const Backend& backend) {
  return backend.device().is_host() || comm.name() == "nccl";
}

// All-to-all of rows between backend tensors. A communicator on host memory (MPI) with a device backend goes
// through host copies of the whole buffers (correct, not fast: the GPU path proper keeps rows on the device for
// NCCL); otherwise the tensors' own memory is exchanged.
// Started without waiting where the tensors' memory is exchanged (the handle to wait on); the staged copy is
// blocking (null handle).
std::unique_ptr<dist::PendingExchange> start_rows(dist::Communicator& comm, Backend& backend, const Tensor& send,
                                                  const std::vector<size_t>& sc, const Tensor& recv,
                                                  const std::vector<size_t>& rc) {
  const auto sd = displs(sc), rd = displs(rc);
  if (in_place(comm, backend)) return comm.all_to_all_v_start(send.data(), sc, sd, recv.data(), rc, rd);
  backend.synchronize();
  std::vector<char> hs(send.view().nbytes()), hr(recv.view().nbytes());
  backend.copy_to_host(send, hs.data());
  comm.all_to_all_v(hs.data(), sc, sd, hr.data(), rc, rd);
  backend.copy_from_host(hr.data(), recv);
  return nullptr;
}

void finish(std::unique_ptr<dist::PendingExchange>& x) {
  if (x) x->wait();
  x.reset();
}

// Wall time of a scope after synchronising `backend` at both ends, added to *sum (nothing when sum is null).
class SyncedTimer {
 public:
  SyncedTimer(Backend& backend, double* sum) : backend_(backend), sum_(sum) {
    if (sum_) backend_.synchronize(), t0_ = std::chrono::steady_clock::now();
  }
  ~SyncedTimer() {
    if (!sum_) return;
    backend_.synchronize();
    *sum_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }
  SyncedTimer(const SyncedTimer&) = delete;
  SyncedTimer& operator=(const SyncedTimer&) = delete;

 private:
  Backend& backend_;
  double* sum_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace

ExpertParallel::ExpertParallel(dist::Communicator& comm, ExpertPlacement placement, Mode mode)
    : comm_(comm), mode_(mode) {
  set_placement(std::move(placement));
}

void ExpertParallel::set_placement(ExpertPlacement p) {
  MOE_CHECK(p.ranks == comm_.size(), "expert placement for {} ranks on a communicator of {}", p.ranks, comm_.size());
  placement_ = std::move(p);
  slot_tables_.clear();  // made again from the new placement on first use
}

void ExpertParallel::set_all_reduce(bool on) {
  MOE_CHECK(!on || (!two_micro_batch_ && !fp8_dispatch_),
            "expert parallelism: the all-reduce mode works without two-micro-batch overlap or FP8 dispatch");
  all_reduce_ = on;
}

const Tensor& ExpertParallel::slot_table(Backend& backend, int64_t layer) {
  if (tables_backend_ != &backend) slot_tables_.clear(), padding_.clear(), tables_backend_ = &backend;
  if (slot_tables_.size() < placement_.layers.size()) slot_tables_.resize(placement_.layers.size());
  Tensor& table = slot_tables_[size_t(layer)];
  if (!table.empty()) return table;
  const LayerPlacement& P = placement_.layers[size_t(layer)];
  const int32_t S = placement_.slots_per_rank, E = int32_t(P.replicas.size()), me = comm_.rank();
  int64_t L = 1;
  for (const auto& reps : P.replicas) L = std::lcm(L, int64_t(reps.size()));
  MOE_CHECK(L <= 4096, "expert parallelism: layer {}'s copy counts have a least common multiple of {}", layer, L);
  std::vector<int32_t> host(size_t(E * L));
  for (int32_t e = 0; e < E; ++e)
    for (int64_t c = 0; c < L; ++c) {
      const int32_t slot = P.replicas[size_t(e)][size_t(c) % P.replicas[size_t(e)].size()];
      host[size_t(e * L + c)] = slot / S == me ? slot % S : -1;
    }
  table = backend.alloc_uninitialized(DType::I32, {E, L});
  backend.copy_from_host(host.data(), table);
  return table;
}

void ExpertParallel::set_shared_as_routed(bool on) {
  MOE_CHECK(!on || !data_parallel(),
            "expert parallelism: the shared expert as a routed one needs the replicated mode (not --dp-attention)");
  shared_as_routed_ = on;
}

// A GPU communicator (NCCL) enqueues on the backend's stream, so its exchanges of the backend's tensors come after
// the kernels that wrote them and before those that read the results.
void ExpertParallel::bind_stream(Backend& backend) {
  void* s = backend.native_stream();
  if (s && comm_.stream() != s) comm_.set_stream(s);
}

void ExpertParallel::moe(Backend& backend, int64_t layer, const ExpertWeights& local, const TensorView& x,
                         const TensorView& expert_ids, const TensorView& expert_weights, const TensorView& plus,
                         const TensorView& out) {
  bind_stream(backend);
  const int64_t T = x.rows(), K = expert_ids.row_size();
  MOE_CHECK(T > 0, "expert parallelism: moe over no tokens (moe_idle is the data-parallel rank without tokens)");
  if (all_reduce_)
    return run_all_reduce(backend, layer, local, T, x.row_size(), K, x, expert_ids, expert_weights, plus,
                          out);
  std::vector<int32_t> ids(size_t(T * K));
  backend.copy_to_host(expert_ids, ids.data());
  run(backend, layer, local, T, x.row_size(), K, ids, x, expert_ids, expert_weights, plus, out);
}

void ExpertParallel::moe_idle(Backend& backend, int64_t layer, const ExpertWeights& local, int64_t D, int64_t K) {
  bind_stream(backend);
  MOE_CHECK(data_parallel(), "expert parallelism: only a data-parallel rank runs a layer without tokens");
  if (all_reduce_) return run_all_reduce(backend, layer, local, 0, D, K, {}, {}, {}, {}, {});
  run(backend, layer, local, 0, D, K, {}, {}, {}, {}, {}, {});
}

TensorView ExpertParallel::padding_ids(Backend& backend, int64_t rows, int64_t K) {
  if (padding_.empty() || padding_.back().dim(0) < rows || padding_.back().dim(1) != K) {
    const int64_t n = std::max<int64_t>({rows, padding_.empty() ? 0 : 2 * padding_.back().dim(0), 64});
    const std::vector<int32_t> host(size_t(n * K), -1);
    padding_.push_back(backend.alloc_uninitialized(DType::I32, {n, K}));
    backend.copy_from_host(host.data(), padding_.back());
  }
  return padding_.back().view().slice_rows(0, rows);
}

// The data-parallel all-reduce exchange: my rows and choices padded to M = step_rows() (padding ids -1),
// every rank's gathered [R * M], the local experts' share of each row's sum, and the reduce-scatter of those
// shares: the sums of my M rows into `mine`.
void ExpertParallel::all_reduce_data_parallel(Backend& backend, const ExpertWeights& local,
                                              const Tensor& slots, int64_t T, int64_t D, int64_t K,
                                              const TensorView& x, const TensorView& expert_ids,
                                              const TensorView& expert_weights, const Tensor& mine) {
  const int R = comm_.size();
  const int64_t M = step_rows_;
  MOE_CHECK(
      M >= std::max<int64_t>(T, 1),
      "expert parallelism: {} tokens on rank {} in a data-parallel step of at most {} a rank (set_step_rows)",
      T, comm_.rank(), M);
  // This rank's rows padded to M: x, ids and weights as given when T == M (a full rank copies nothing), else
  // copied into M-row buffers whose padding rows have ids -1 (no expert: weight 0 whatever ws holds there;
  // their x rows are never read).
  const bool padded = T < M;
  Tensor xs, is, ws;
  if (padded) {
    xs = backend.alloc_uninitialized(DType::F32, {M, D});
    is = backend.alloc_uninitialized(DType::I32, {M, K});
    ws = backend.alloc_uninitialized(DType::F32, {M, K});
    if (T) {
      backend.copy(x, xs.view().slice_rows(0, T));
      backend.copy(expert_ids, is.view().slice_rows(0, T));
      backend.copy(expert_weights, ws.view().slice_rows(0, T));
    }
    backend.copy(padding_ids(backend, M - T, K), is.view().slice_rows(T, M - T));
  }
  Tensor xg = backend.alloc_uninitialized(DType::F32, {R * M, D}),
         ig = backend.alloc_uninitialized(DType::I32, {R * M, K});
  Tensor wg = backend.alloc_uninitialized(DType::F32, {R * M, K});
  const bool direct = in_place(comm_, backend);
  // Rank r's rows at r * M: one all-gather collective each. The I32 ids travel as 4-byte words through the
  // F32 all-gather, which copies bytes (NCCL, MPI and the thread ranks alike never compute on them).
  auto gather = [&](const TensorView& send, const Tensor& recv) {
    const size_t n = send.nbytes() / 4;
    if (direct)
      return comm_.all_gather(std::span<const float>(static_cast<const float*>(send.data), n),
                              std::span<float>(static_cast<float*>(recv.data()), n * size_t(R)));
    std::vector<float> hs(n), hr(n * size_t(R));
    backend.copy_to_host(send, hs.data());
    comm_.all_gather(std::span<const float>(hs), std::span<float>(hr));
    backend.copy_from_host(hr.data(), recv);
  };
  gather(padded ? xs.view() : x, xg);
  gather(padded ? is.view() : expert_ids, ig);
  gather(padded ? ws.view() : expert_weights, wg);
  Tensor lid = backend.alloc_uninitialized(DType::I32, {R * M, K}),
         lw = backend.alloc_uninitialized(DType::F32, {R * M, K});
  backend.moe_local_choices(ig, wg, slots, lid, lw);
  Tensor yg = backend.alloc_uninitialized(DType::F32, {R * M, D});
  {
    const SyncedTimer experts_timer(backend, timing_on_ ? &timing_.experts_s : nullptr);
    backend.moe_experts(xg, local, lid, lw, {}, yg);
  }
  const size_t n = size_t(M * D);
  if (direct) {
    comm_.reduce_scatter_sum(std::span<const float>(yg.as<const float>(), n * size_t(R)),
                             std::span<float>(mine.as<float>(), n));
  } else {
    std::vector<float> hs(n * size_t(R)), hr(n);
    backend.copy_to_host(yg, hs.data());
    comm_.reduce_scatter_sum(std::span<const float>(hs), std::span<float>(hr));
    backend.copy_from_host(hr.data(), mine);
  }
  // Each rank sends its padded rows and choices to R - 1 ranks, and R - 1 of its R blocks of sums.
  bytes_sent_ += uint64_t(R - 1) * uint64_t(M) * uint64_t(2 * D * 4 + K * 8);
}

// The all-reduce mode: my experts' share of every token's sum, with the shared experts' output on the rank
// that computes them (computes_shared), then the sum over the ranks (no host round trip: capturable).
// Data-parallel: over every rank's rows (all_reduce_data_parallel), my rows' sums back, my shared output
// added.
void ExpertParallel::run_all_reduce(Backend& backend, int64_t layer, const ExpertWeights& local, int64_t T,
                                    int64_t D, int64_t K, const TensorView& x, const TensorView& expert_ids,
                                    const TensorView& expert_weights, const TensorView& plus,
                                    const TensorView& out) {
  MOE_CHECK(size_t(layer) < placement_.layers.size() && !placement_.layers[size_t(layer)].empty(),
            "expert parallelism: layer {} has no placement", layer);
  MOE_CHECK(int64_t(local.experts.size()) == placement_.slots_per_rank,
            "expert parallelism: layer {} holds {} experts for {} slots", layer, local.experts.size(),
            placement_.slots_per_rank);
  MOE_CHECK(backend.activation_dtype() == DType::F32 && (T == 0 || out.dtype == DType::F32),
            "expert parallelism: the all-reduce mode sums F32 outputs (not {})",
            dtype_name(T ? out.dtype : backend.activation_dtype()));
  const SyncedTimer timer(backend, timing_on_ ? &timing_.moe_s : nullptr);
  const Tensor& slots = slot_table(backend, layer);
  MOE_CHECK(!plus.data || computes_shared(layer),
            "expert parallelism: rank {} was given layer {}'s shared output", comm_.rank(), layer);
  if (data_parallel()) {
    Tensor mine = backend.alloc_uninitialized(DType::F32, {std::max<int64_t>(step_rows_, 1), D});
    all_reduce_data_parallel(backend, local, slots, T, D, K, x, expert_ids, expert_weights, mine);
    if (T == 0) return;
    if (plus.data)
      backend.add(mine.view().slice_rows(0, T), plus, out);
    else
      backend.copy(mine.view().slice_rows(0, T), out);
    return;
  }
  const int64_t n = out.numel();
  Tensor ids = backend.alloc_uninitialized(DType::I32, {T, K}), w = backend.alloc_uninitialized(DType::F32, {T, K});
  backend.moe_local_choices(expert_ids, expert_weights, slots, ids, w);
  {
    const SyncedTimer experts_timer(backend, timing_on_ ? &timing_.experts_s : nullptr);
    backend.moe_experts(x, local, ids, w, plus, out);
  }
  if (in_place(comm_, backend)) {
    comm_.all_reduce_sum(std::span<float>(out.as<float>(), size_t(n)));
  } else {  // a host communicator (MPI) with a device backend: through host memory
    std::vector<float> host(static_cast<size_t>(n));
    backend.copy_to_host(out, host.data());
    comm_.all_reduce_sum(std::span<float>(host));
    backend.copy_from_host(host.data(), out);
  }
  // A ring all-reduce sends 2 (R - 1) / R of the buffer from each rank.
  const int R = comm_.size();
  bytes_sent_ += uint64_t(n) * sizeof(float) * 2 * uint64_t(R - 1) / uint64_t(R);
}

// One micro-batch of my tokens [t0, t0 + n) through the layer's MoE, in three phases that the two-micro-batch
// overlap interleaves (dispatch A, dispatch B, experts A, experts B, combine A, combine B): every exchange is
// started in that order on every rank and waited for in the next phase, so one micro-batch's rows travel while the
// other's experts (or combine) compute.
struct ExpertParallel::MicroBatch {
  int64_t t0 = 0, n = 0;
  // Dispatch plan: per destination the rows (token indices, each once) and per row K local slots (-1 padded); per
  // assignment (t, j) its destination and its index among the destination's assignments.
  std::vector<std::vector<int32_t>> rows, slots;
  std::vector<int64_t> n_assign, send_rows, recv_rows, back_rows;
  std::vector<int32_t> a_dest, a_index, send_slots, send_row_ids, recv_slots;
  std::vector<size_t> slot_sc, slot_rc, slot_sd, slot_rd;  // read by a pending exchange
  int64_t n_recv = 0, Ma = 0;
  Tensor xs, xr, ya, ret;
  // FP8 dispatch: the rows as E4M3 and their tile scales, sent and received (host memory), with their spans.
  std::vector<uint8_t> q_send, q_recv;
  std::vector<float> s_send, s_recv;
  std::vector<size_t> q_sc, q_rc, q_sd, q_rd, s_sc, s_rc, s_sd, s_rd;
  std::unique_ptr<dist::PendingExchange> slots_x, rows_x, scales_x, back_x;
};

void ExpertParallel::dispatch(Backend& backend, const LayerPlacement& P, int64_t D, int64_t K,
                              const std::vector<int32_t>& ids, const TensorView& x, MicroBatch& mb) {
  const int R = comm_.size();
  const int32_t S = placement_.slots_per_rank;
  const DType act = backend.activation_dtype();
  const size_t row_bytes = size_t(D) * dtype_size(act);
  mb.rows.assign(size_t(R), {});
  mb.slots.assign(size_t(R), {});
  mb.n_assign.assign(size_t(R), 0);
  mb.a_dest.resize(size_t(mb.n * K));
  mb.a_index.resize(size_t(mb.n * K));
  for (int64_t t = mb.t0; t < mb.t0 + mb.n; ++t) {
    std::vector<int32_t> fill(static_cast<size_t>(R), 0);
    for (int64_t j = 0; j < K; ++j) {
      const int32_t e = ids[size_t(t * K + j)];
      MOE_CHECK(e >= 0 && size_t(e) < P.replicas.size(), "expert parallelism: expert id {} out of range", e);
      const auto& reps = P.replicas[size_t(e)];
      const int32_t slot = reps[size_t(t) % reps.size()], dest = slot / S;
      auto& r = mb.rows[size_t(dest)];
      auto& sl = mb.slots[size_t(dest)];
      if (r.empty() || r.back() != int32_t(t)) {
        r.push_back(int32_t(t));
        sl.insert(sl.end(), size_t(K), -1);
      }
      sl[(r.size() - 1) * size_t(K) + size_t(fill[size_t(dest)]++)] = slot % S;
      const size_t a = size_t((t - mb.t0) * K + j);
      mb.a_dest[a] = dest;
      mb.a_index[a] = int32_t(mb.n_assign[size_t(dest)]++);
    }
  }

  // Exchange the plan: row counts (blocking: they size what follows), then the slots and the rows (started).
  mb.send_rows.resize(size_t(R));
  for (int p = 0; p < R; ++p) mb.send_rows[size_t(p)] = int64_t(mb.rows[size_t(p)].size());
  mb.recv_rows = exchange_counts(comm_, mb.send_rows);
  for (int p = 0; p < R; ++p) {
    mb.send_slots.insert(mb.send_slots.end(), mb.slots[size_t(p)].begin(), mb.slots[size_t(p)].end());
    mb.send_row_ids.insert(mb.send_row_ids.end(), mb.rows[size_t(p)].begin(), mb.rows[size_t(p)].end());
  }
  mb.n_recv = std::accumulate(mb.recv_rows.begin(), mb.recv_rows.end(), int64_t(0));
  mb.recv_slots.resize(size_t(mb.n_recv * K));
  mb.slot_sc = scaled(mb.send_rows, size_t(K) * sizeof(int32_t));
  mb.slot_rc = scaled(mb.recv_rows, size_t(K) * sizeof(int32_t));
  mb.slot_sd = displs(mb.slot_sc);
  mb.slot_rd = displs(mb.slot_rc);
  mb.slots_x = comm_.all_to_all_v_start(mb.send_slots.data(), mb.slot_sc, mb.slot_sd, mb.recv_slots.data(), mb.slot_rc,
                                        mb.slot_rd);
  const int64_t n_send = int64_t(mb.send_row_ids.size());
  mb.xs = backend.alloc_uninitialized(act, {std::max<int64_t>(n_send, 1), D});
  if (n_send) backend.gather_rows(x, mb.send_row_ids, mb.xs.view().slice_rows(0, n_send));
  mb.xr = backend.alloc_uninitialized(act, {std::max<int64_t>(mb.n_recv, 1), D});
  if (fp8_dispatch_) {
    dispatch_fp8(backend, D, n_send, mb);
    return;
  }
  mb.rows_x = start_rows(comm_, backend, mb.xs, scaled(mb.send_rows, row_bytes), mb.xr, scaled(mb.recv_rows, row_bytes));
  bytes_sent_ += size_t(n_send) * row_bytes;
}

// The gathered rows xs [n_send, D] (F32) quantised on the host and sent as E4M3 values and tile scales; experts()
// dequantises what arrives into xr.
void ExpertParallel::dispatch_fp8(Backend& backend, int64_t D, int64_t n_send, MicroBatch& mb) {
  const int64_t tiles = fp8_row_tiles(D);
  std::vector<float> host(size_t(n_send * D));
  if (n_send) backend.copy_to_host(mb.xs.view().slice_rows(0, n_send), host.data());
  mb.q_send.resize(size_t(std::max<int64_t>(n_send * D, 1)));
  mb.s_send.resize(size_t(std::max<int64_t>(n_send * tiles, 1)));
  quantize_rows_e4m3(host.data(), n_send, D, mb.q_send.data(), mb.s_send.data());
  mb.q_recv.resize(size_t(std::max<int64_t>(mb.n_recv * D, 1)));
  mb.s_recv.resize(size_t(std::max<int64_t>(mb.n_recv * tiles, 1)));
  mb.q_sc = scaled(mb.send_rows, size_t(D));
  mb.q_rc = scaled(mb.recv_rows, size_t(D));
  mb.q_sd = displs(mb.q_sc);
  mb.q_rd = displs(mb.q_rc);
  mb.s_sc = scaled(mb.send_rows, size_t(tiles) * sizeof(float));
  mb.s_rc = scaled(mb.recv_rows, size_t(tiles) * sizeof(float));
  mb.s_sd = displs(mb.s_sc);
  mb.s_rd = displs(mb.s_rc);
  mb.rows_x = comm_.all_to_all_v_start(mb.q_send.data(), mb.q_sc, mb.q_sd, mb.q_recv.data(), mb.q_rc, mb.q_rd);
  mb.scales_x = comm_.all_to_all_v_start(mb.s_send.data(), mb.s_sc, mb.s_sd, mb.s_recv.data(), mb.s_rc, mb.s_rd);
  bytes_sent_ += size_t(n_send * fp8_row_bytes(D));
}

void ExpertParallel::experts(Backend& backend, const ExpertWeights& local, int64_t D, int64_t K, MicroBatch& mb) {
  const int R = comm_.size();
  const int32_t S = placement_.slots_per_rank;
  const DType act = backend.activation_dtype();
  const size_t row_bytes = size_t(D) * dtype_size(act);
  finish(mb.slots_x);
  finish(mb.rows_x);
  finish(mb.scales_x);
  if (fp8_dispatch_ && mb.n_recv) {
    std::vector<float> host(size_t(mb.n_recv * D));
    dequantize_rows_e4m3(mb.q_recv.data(), mb.s_recv.data(), mb.n_recv, D, host.data());
    backend.copy_from_host(host.data(), mb.xr.view().slice_rows(0, mb.n_recv));
  }
  // The local experts over the received rows, one row per (row, slot), in arrival order.
  std::vector<int32_t> expand, local_slot;
  mb.back_rows.assign(size_t(R), 0);  // assignments computed for each source rank
  {
    int64_t row = 0;
    for (int p = 0; p < R; ++p)
      for (int64_t i = 0; i < mb.recv_rows[size_t(p)]; ++i, ++row)
        for (int64_t j = 0; j < K; ++j) {
          const int32_t sl = mb.recv_slots[size_t(row * K + j)];
          if (sl < 0) break;
          MOE_CHECK(sl < S, "expert parallelism: rank {} sent slot {} (of {})", p, sl, S);
          expand.push_back(int32_t(row));
          local_slot.push_back(sl);
          ++mb.back_rows[size_t(p)];
        }
  }
  mb.Ma = int64_t(expand.size());
  mb.ya = backend.alloc_uninitialized(act, {std::max<int64_t>(mb.Ma, 1), D});
  if (mb.Ma) {
    const SyncedTimer timer(backend, timing_on_ ? &timing_.experts_s : nullptr);
    Tensor xa = backend.alloc_uninitialized(act, {mb.Ma, D});
    backend.gather_rows(mb.xr.view().slice_rows(0, mb.n_recv), expand, xa);
    Tensor sid = backend.alloc_uninitialized(DType::I32, {mb.Ma, 1});
    backend.copy_from_host(local_slot.data(), sid);
    const MoeDispatch d = backend.moe_dispatch(xa, sid, S);
    Tensor y = backend.alloc_uninitialized(act, {mb.Ma, D});
    backend.moe_grouped_mlp(d, local, y);
    // Back to arrival order, unweighted: 0 + 1 * y is exact.
    const std::vector<float> ones(size_t(mb.Ma), 1.0f);
    Tensor w1 = backend.alloc_uninitialized(DType::F32, {mb.Ma, 1});
    backend.copy_from_host(ones.data(), w1);
    backend.moe_combine(y, d, w1, {}, mb.ya.view().slice_rows(0, mb.Ma));
  }
  // Combine: the outputs return to their owners, in the order the owners sent them (started).
  mb.ret = backend.alloc_uninitialized(act, {std::max<int64_t>(mb.n * K, 1), D});
  mb.back_x = start_rows(comm_, backend, mb.ya, scaled(mb.back_rows, row_bytes), mb.ret, scaled(mb.n_assign, row_bytes));
  bytes_sent_ += size_t(mb.Ma) * row_bytes;
}

void ExpertParallel::combine(Backend& backend, int64_t D, int64_t K, const TensorView& x, const TensorView& expert_ids,
                             const TensorView& expert_weights, const TensorView& plus, const TensorView& dst,
                             MicroBatch& mb) {
  finish(mb.back_x);
  if (!mb.n) return;
  const DType act = backend.activation_dtype();
  // The single-process combine over my tokens: their dispatch order, the returned rows put in it.
  const TensorView x_own = x.slice_rows(mb.t0, mb.n), ids_own = expert_ids.slice_rows(mb.t0, mb.n);
  const MoeDispatch d = backend.moe_dispatch(x_own, ids_own, placement_.num_experts);
  std::vector<int32_t> perm(size_t(mb.n * K));
  backend.copy_to_host(d.perm, perm.data());
  const std::vector<size_t> base = displs(std::vector<size_t>(mb.n_assign.begin(), mb.n_assign.end()));
  std::vector<int32_t> pick(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) {
    const size_t a = size_t(perm[i]);
    pick[i] = int32_t(base[size_t(mb.a_dest[a])] + size_t(mb.a_index[a]));
  }
  Tensor ys = backend.alloc_uninitialized(act, {mb.n * K, D});
  backend.gather_rows(mb.ret.view().slice_rows(0, mb.n * K), pick, ys);
  backend.moe_combine(ys, d, expert_weights.slice_rows(mb.t0, mb.n),
                      plus.data ? plus.slice_rows(mb.t0, mb.n) : TensorView{}, dst);
}

void ExpertParallel::run(Backend& backend, int64_t layer, const ExpertWeights& local, int64_t T, int64_t D, int64_t K,
                         const std::vector<int32_t>& ids, const TensorView& x, const TensorView& expert_ids,
                         const TensorView& expert_weights, const TensorView& plus, const TensorView& out) {
  const int R = comm_.size(), me = comm_.rank();
  MOE_CHECK(size_t(layer) < placement_.layers.size() && !placement_.layers[size_t(layer)].empty(),
            "expert parallelism: layer {} has no placement", layer);
  const SyncedTimer timer(backend, timing_on_ ? &timing_.moe_s : nullptr);
  const LayerPlacement& P = placement_.layers[size_t(layer)];
  MOE_CHECK(int64_t(local.experts.size()) == placement_.slots_per_rank,
            "expert parallelism: layer {} holds {} experts for {} slots", layer, local.experts.size(),
            placement_.slots_per_rank);
  const DType act = backend.activation_dtype();
  const size_t row_bytes = size_t(D) * dtype_size(act);
  MOE_CHECK(!fp8_dispatch_ || (act == DType::F32 && !local.experts.empty() && local.experts[0].gate.is_fp8()),
            "expert parallelism: FP8 dispatch is for FP8 experts (layer {}'s are {}) on F32 activations",
            layer, local.experts.empty() ? "absent" : dtype_name(local.experts[0].gate.w.dtype));
  // Replicated: my block of the shared batch; data-parallel: all of my tokens.
  const bool dp = data_parallel();
  const int64_t t0 = dp ? 0 : T * me / R, n_own = (dp ? T : T * (me + 1) / R) - t0;

  // Data-parallel: my tokens' outputs go straight to out (no all-gather); replicated: to my block, gathered below.
  Tensor mine;
  if (!dp) mine = backend.alloc_uninitialized(act, {std::max<int64_t>(n_own, 1), D});
  auto dst = [&](const MicroBatch& mb) {
    return dp ? out.slice_rows(mb.t0, mb.n) : mine.view().slice_rows(mb.t0 - t0, mb.n);
  };
  if (two_micro_batch_) {
    // Halves of my tokens (either may be empty: it still takes part in every exchange, with zero counts).
    MicroBatch a, b;
    a.t0 = t0, a.n = n_own / 2, b.t0 = t0 + a.n, b.n = n_own - a.n;
    dispatch(backend, P, D, K, ids, x, a);
    dispatch(backend, P, D, K, ids, x, b);  // A's rows travel while B's are planned and gathered
    experts(backend, local, D, K, a);       // B's rows travel while A's experts compute
    experts(backend, local, D, K, b);       // A's outputs travel back while B's experts compute
    combine(backend, D, K, x, expert_ids, expert_weights, plus, a.n ? dst(a) : TensorView{}, a);
    combine(backend, D, K, x, expert_ids, expert_weights, plus, b.n ? dst(b) : TensorView{}, b);
  } else {
    MicroBatch mb;
    mb.t0 = t0, mb.n = n_own;
    dispatch(backend, P, D, K, ids, x, mb);
    experts(backend, local, D, K, mb);
    combine(backend, D, K, x, expert_ids, expert_weights, plus, mb.n ? dst(mb) : TensorView{}, mb);
  }
  if (dp) return;


  // All-gather the owners' blocks into every rank's out: my block to every rank.
  std::vector<int64_t> own_rows(static_cast<size_t>(R));
  for (int p = 0; p < R; ++p) own_rows[size_t(p)] = T * (p + 1) / R - T * p / R;
  const size_t mine_bytes = size_t(n_own) * row_bytes;
  const std::vector<size_t> sd(static_cast<size_t>(R), 0), sc(static_cast<size_t>(R), mine_bytes);
  const auto rc = scaled(own_rows, row_bytes), rd = displs(rc);
  if (in_place(comm_, backend)) {
    comm_.all_to_all_v(mine.data(), sc, sd, out.data, rc, rd);
  } else {
    std::vector<char> hs(mine_bytes), hr(size_t(T) * row_bytes);
    if (n_own) backend.copy_to_host(mine.view().slice_rows(0, n_own), hs.data());
    comm_.all_to_all_v(hs.data(), sc, sd, hr.data(), rc, rd);
    backend.copy_from_host(hr.data(), out);
  }
}

}  // namespace moe
