// Expert-parallel MoE: dispatch, the local experts, combine, all-gather (shapes in expert_parallel.h).
#include "model/expert_parallel.h"

#include <numeric>

#include "core/error.h"

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

// All-to-all of rows between backend tensors. A communicator on host memory (MPI) with a device backend goes
// through host copies of the whole buffers (correct, not fast: the GPU path proper keeps rows on the device for
// NCCL); otherwise the tensors' own memory is exchanged.
void exchange_rows(dist::Communicator& comm, Backend& backend, const Tensor& send, const std::vector<size_t>& sc,
                   const Tensor& recv, const std::vector<size_t>& rc) {
  const auto sd = displs(sc), rd = displs(rc);
  if (backend.device().is_host() || comm.name() == "nccl") {
    comm.all_to_all_v(send.data(), sc, sd, recv.data(), rc, rd);
    return;
  }
  backend.synchronize();
  std::vector<char> hs(send.view().nbytes()), hr(recv.view().nbytes());
  backend.copy_to_host(send, hs.data());
  comm.all_to_all_v(hs.data(), sc, sd, hr.data(), rc, rd);
  backend.copy_from_host(hr.data(), recv);
}

}  // namespace

ExpertParallel::ExpertParallel(dist::Communicator& comm, ExpertPlacement placement) : comm_(comm) {
  set_placement(std::move(placement));
}

void ExpertParallel::set_placement(ExpertPlacement p) {
  MOE_CHECK(p.ranks == comm_.size(), "expert placement for {} ranks on a communicator of {}", p.ranks, comm_.size());
  placement_ = std::move(p);
}

void ExpertParallel::moe(Backend& backend, int64_t layer, const ExpertWeights& local, const TensorView& x,
                         const TensorView& expert_ids, const TensorView& expert_weights, const TensorView& plus,
                         const TensorView& out) {
  const int64_t T = x.rows(), D = x.row_size(), K = expert_ids.row_size();
  const int R = comm_.size(), me = comm_.rank();
  MOE_CHECK(size_t(layer) < placement_.layers.size() && !placement_.layers[size_t(layer)].empty(),
            "expert parallelism: layer {} has no placement", layer);
  const LayerPlacement& P = placement_.layers[size_t(layer)];
  const int32_t S = placement_.slots_per_rank;
  MOE_CHECK(int64_t(local.experts.size()) == S, "expert parallelism: layer {} holds {} experts for {} slots", layer,
            local.experts.size(), S);
  const DType act = backend.activation_dtype();
  const size_t row_bytes = size_t(D) * dtype_size(act);

  std::vector<int32_t> ids(size_t(T * K));
  backend.copy_to_host(expert_ids, ids.data());
  const int64_t t0 = T * me / R, t1 = T * (me + 1) / R, n_own = t1 - t0;

  // Dispatch plan of my tokens: per destination the rows (token indices, each once) and per row K local slots
  // (-1 padded); per assignment (t, j) its destination and its index among the destination's assignments.
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(R)), slots(static_cast<size_t>(R));
  std::vector<int64_t> n_assign(static_cast<size_t>(R), 0);
  std::vector<int32_t> a_dest(size_t(n_own * K)), a_index(size_t(n_own * K));
  for (int64_t t = t0; t < t1; ++t) {
    std::vector<int32_t> fill(static_cast<size_t>(R), 0);
    for (int64_t j = 0; j < K; ++j) {
      const int32_t e = ids[size_t(t * K + j)];
      MOE_CHECK(e >= 0 && size_t(e) < P.replicas.size(), "expert parallelism: expert id {} out of range", e);
      const auto& reps = P.replicas[size_t(e)];
      const int32_t slot = reps[size_t(t) % reps.size()], dest = slot / S;
      auto& r = rows[size_t(dest)];
      auto& s = slots[size_t(dest)];
      if (r.empty() || r.back() != int32_t(t)) {
        r.push_back(int32_t(t));
        s.insert(s.end(), size_t(K), -1);
      }
      s[(r.size() - 1) * size_t(K) + size_t(fill[size_t(dest)]++)] = slot % S;
      const size_t a = size_t((t - t0) * K + j);
      a_dest[a] = dest;
      a_index[a] = int32_t(n_assign[size_t(dest)]++);
    }
  }

  // Exchange the plan: row counts, then the slots.
  std::vector<int64_t> send_rows(static_cast<size_t>(R));
  for (int p = 0; p < R; ++p) send_rows[size_t(p)] = int64_t(rows[size_t(p)].size());
  const std::vector<int64_t> recv_rows = exchange_counts(comm_, send_rows);
  std::vector<int32_t> send_slots, send_row_ids;
  for (int p = 0; p < R; ++p) {
    send_slots.insert(send_slots.end(), slots[size_t(p)].begin(), slots[size_t(p)].end());
    send_row_ids.insert(send_row_ids.end(), rows[size_t(p)].begin(), rows[size_t(p)].end());
  }
  const int64_t n_recv = std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t(0));
  std::vector<int32_t> recv_slots(size_t(n_recv * K));
  {
    const auto sc = scaled(send_rows, size_t(K) * sizeof(int32_t)), rc = scaled(recv_rows, size_t(K) * sizeof(int32_t));
    comm_.all_to_all_v(send_slots.data(), sc, displs(sc), recv_slots.data(), rc, displs(rc));
  }

  // Dispatch the rows.
  const int64_t n_send = int64_t(send_row_ids.size());
  Tensor xs = backend.alloc_uninitialized(act, {std::max<int64_t>(n_send, 1), D});
  if (n_send) backend.gather_rows(x, send_row_ids, xs.view().slice_rows(0, n_send));
  Tensor xr = backend.alloc_uninitialized(act, {std::max<int64_t>(n_recv, 1), D});
  {
    exchange_rows(comm_, backend, xs, scaled(send_rows, row_bytes), xr, scaled(recv_rows, row_bytes));
    bytes_sent_ += size_t(n_send) * row_bytes;
  }

  // The local experts over the received rows, one row per (row, slot), in arrival order.
  std::vector<int32_t> expand, local_slot;
  std::vector<int64_t> back_rows(static_cast<size_t>(R), 0);  // assignments computed for each source rank
  {
    int64_t row = 0;
    for (int p = 0; p < R; ++p)
      for (int64_t i = 0; i < recv_rows[size_t(p)]; ++i, ++row)
        for (int64_t j = 0; j < K; ++j) {
          const int32_t s = recv_slots[size_t(row * K + j)];
          if (s < 0) break;
          MOE_CHECK(s < S, "expert parallelism: rank {} sent slot {} (of {})", p, s, S);
          expand.push_back(int32_t(row));
          local_slot.push_back(s);
          ++back_rows[size_t(p)];
        }
  }
  const int64_t Ma = int64_t(expand.size());
  Tensor ya = backend.alloc_uninitialized(act, {std::max<int64_t>(Ma, 1), D});
  if (Ma) {
    Tensor xa = backend.alloc_uninitialized(act, {Ma, D});
    backend.gather_rows(xr.view().slice_rows(0, n_recv), expand, xa);
    Tensor sid = backend.alloc_uninitialized(DType::I32, {Ma, 1});
    backend.copy_from_host(local_slot.data(), sid);
    const MoeDispatch d = backend.moe_dispatch(xa, sid, S);
    Tensor y = backend.alloc_uninitialized(act, {Ma, D});
    backend.moe_grouped_mlp(d, local, y);
    // Back to arrival order, unweighted: 0 + 1 * y is exact.
    const std::vector<float> ones(size_t(Ma), 1.0f);
    Tensor w1 = backend.alloc_uninitialized(DType::F32, {Ma, 1});
    backend.copy_from_host(ones.data(), w1);
    backend.moe_combine(y, d, w1, {}, ya.view().slice_rows(0, Ma));
  }

  // Combine: the outputs return to their owners, in the order the owners sent them.
  Tensor ret = backend.alloc_uninitialized(act, {std::max<int64_t>(n_own * K, 1), D});
  {
    exchange_rows(comm_, backend, ya, scaled(back_rows, row_bytes), ret, scaled(n_assign, row_bytes));
    bytes_sent_ += size_t(Ma) * row_bytes;
  }
  Tensor mine = backend.alloc_uninitialized(act, {std::max<int64_t>(n_own, 1), D});
  if (n_own) {
    // The single-process combine over my tokens: their dispatch order, the returned rows put in it.
    const TensorView x_own = x.slice_rows(t0, n_own), ids_own = expert_ids.slice_rows(t0, n_own);
    const MoeDispatch d = backend.moe_dispatch(x_own, ids_own, placement_.num_experts);
    std::vector<int32_t> perm(size_t(n_own * K));
    backend.copy_to_host(d.perm, perm.data());
    const std::vector<size_t> base = displs(std::vector<size_t>(n_assign.begin(), n_assign.end()));
    std::vector<int32_t> pick(perm.size());
    for (size_t i = 0; i < perm.size(); ++i) {
      const size_t a = size_t(perm[i]);
      pick[i] = int32_t(base[size_t(a_dest[a])] + size_t(a_index[a]));
    }
    Tensor ys = backend.alloc_uninitialized(act, {n_own * K, D});
    backend.gather_rows(ret.view().slice_rows(0, n_own * K), pick, ys);
    backend.moe_combine(ys, d, expert_weights.slice_rows(t0, n_own),
                        plus.data ? plus.slice_rows(t0, n_own) : TensorView{}, mine.view().slice_rows(0, n_own));
  }

  // All-gather the owners' blocks into every rank's out: my block to every rank.
  std::vector<int64_t> own_rows(static_cast<size_t>(R));
  for (int p = 0; p < R; ++p) own_rows[size_t(p)] = T * (p + 1) / R - T * p / R;
  const size_t mine_bytes = size_t(n_own) * row_bytes;
  const std::vector<size_t> sd(static_cast<size_t>(R), 0), sc(static_cast<size_t>(R), mine_bytes);
  const auto rc = scaled(own_rows, row_bytes), rd = displs(rc);
  if (backend.device().is_host() || comm_.name() == "nccl") {
    comm_.all_to_all_v(mine.data(), sc, sd, out.data, rc, rd);
  } else {
    std::vector<char> hs(mine_bytes), hr(size_t(T) * row_bytes);
    if (n_own) backend.copy_to_host(mine.view().slice_rows(0, n_own), hs.data());
    comm_.all_to_all_v(hs.data(), sc, sd, hr.data(), rc, rd);
    backend.copy_from_host(hr.data(), out);
  }
}

}  // namespace moe
