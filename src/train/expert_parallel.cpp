#include "train/expert_parallel.h"

#include "core/error.h"
#include "dist/communicator.h"

namespace moe::train {

int ExpertParallel::owner(int64_t e) const { return int(e / (experts / comm->size())); }
bool ExpertParallel::owns(int64_t e) const { return owner(e) == comm->rank(); }

std::vector<int64_t> ep_all_counts(const ExpertParallel& ep, const std::vector<int64_t>& local_counts) {
  MOE_CHECK(int64_t(local_counts.size()) == ep.experts, "train: {} expert counts for {} experts", local_counts.size(),
            ep.experts);
  const std::vector<double> mine(local_counts.begin(), local_counts.end());  // exact below 2^53
  std::vector<double> all(mine.size() * size_t(ep.comm->size()));
  ep.comm->all_gather(std::span<const double>(mine), std::span<double>(all));
  return std::vector<int64_t>(all.begin(), all.end());
}

namespace {

// Bytes per peer for an exchange where rank p's block for rank q holds, for each expert e owned by q (ascending),
// counts[p][e] rows.
size_t block_bytes(const ExpertParallel& ep, const std::vector<int64_t>& counts, int from, int to, int64_t D) {
  size_t rows = 0;
  for (int64_t e = 0; e < ep.experts; ++e)
    if (ep.owner(e) == to) rows += size_t(counts[size_t(from) * size_t(ep.experts) + size_t(e)]);
  return rows * size_t(D) * sizeof(float);
}

struct Plan {
  std::vector<size_t> sc, sd, rc, rd;
  size_t send_total = 0, recv_total = 0;
};

// forward: I send to q my rows of q's experts, and receive from p p's rows of mine. backward: the reverse.
Plan plan(const ExpertParallel& ep, const std::vector<int64_t>& counts, int64_t D, bool to_owners) {
  const int N = ep.comm->size(), me = ep.comm->rank();
  Plan pl;
  pl.sc.resize(size_t(N)), pl.sd.resize(size_t(N)), pl.rc.resize(size_t(N)), pl.rd.resize(size_t(N));
  for (int p = 0; p < N; ++p) {
    pl.sc[size_t(p)] = to_owners ? block_bytes(ep, counts, me, p, D) : block_bytes(ep, counts, p, me, D);
    pl.rc[size_t(p)] = to_owners ? block_bytes(ep, counts, p, me, D) : block_bytes(ep, counts, me, p, D);
    pl.sd[size_t(p)] = pl.send_total, pl.send_total += pl.sc[size_t(p)];
    pl.rd[size_t(p)] = pl.recv_total, pl.recv_total += pl.rc[size_t(p)];
  }
  return pl;
}

void count_sent(const ExpertParallel& ep, const Plan& pl, int64_t D) {
  for (int p = 0; p < ep.comm->size(); ++p)
    if (p != ep.comm->rank()) {
      ep.stats.bytes_sent += int64_t(pl.sc[size_t(p)]);
      ep.stats.rows_sent += int64_t(pl.sc[size_t(p)] / (size_t(D) * sizeof(float)));
    }
}

}  // namespace

RowsPerExpert ep_dispatch(const ExpertParallel& ep, const std::vector<int64_t>& counts, const RowsPerExpert& local,
                          int64_t D) {
  const int N = ep.comm->size(), me = ep.comm->rank();
  const size_t E = size_t(ep.experts);
  const Plan pl = plan(ep, counts, D, true);
  std::vector<float> send(pl.send_total / sizeof(float)), recv(pl.recv_total / sizeof(float));
  size_t at = 0;
  for (int q = 0; q < N; ++q)
    for (size_t e = 0; e < E; ++e)
      if (ep.owner(int64_t(e)) == q) {
        MOE_CHECK(int64_t(local[e].size()) == counts[size_t(me) * E + e] * D, "train: expert {} rows do not match counts", e);
        std::copy(local[e].begin(), local[e].end(), send.begin() + ptrdiff_t(at)), at += local[e].size();
      }
  count_sent(ep, pl, D);
  ep.comm->all_to_all_v(send.data(), pl.sc, pl.sd, recv.data(), pl.rc, pl.rd);
  RowsPerExpert owned(E);
  for (size_t e = 0; e < E; ++e)
    if (ep.owns(int64_t(e))) {
      int64_t rows = 0;
      for (int p = 0; p < N; ++p) rows += counts[size_t(p) * E + e];
      owned[e].reserve(size_t(rows * D));
    }
  at = 0;
  for (int p = 0; p < N; ++p)  // p's block: my experts ascending, counts[p][e] rows each
    for (size_t e = 0; e < E; ++e)
      if (ep.owns(int64_t(e))) {
        const size_t n = size_t(counts[size_t(p) * E + e] * D);
        owned[e].insert(owned[e].end(), recv.begin() + ptrdiff_t(at), recv.begin() + ptrdiff_t(at + n)), at += n;
      }
  return owned;
}

RowsPerExpert ep_combine(const ExpertParallel& ep, const std::vector<int64_t>& counts, const RowsPerExpert& owned,
                         int64_t D) {
  const int N = ep.comm->size(), me = ep.comm->rank();
  const size_t E = size_t(ep.experts);
  const Plan pl = plan(ep, counts, D, false);
  std::vector<float> send(pl.send_total / sizeof(float)), recv(pl.recv_total / sizeof(float));
  std::vector<size_t> offset(E, 0);  // where rank p's rows start in owned[e]
  size_t at = 0;
  for (int p = 0; p < N; ++p)
    for (size_t e = 0; e < E; ++e)
      if (ep.owns(int64_t(e))) {
        const size_t n = size_t(counts[size_t(p) * E + e] * D);
        std::copy(owned[e].begin() + ptrdiff_t(offset[e]), owned[e].begin() + ptrdiff_t(offset[e] + n),
                  send.begin() + ptrdiff_t(at));
        offset[e] += n, at += n;
      }
  count_sent(ep, pl, D);
  ep.comm->all_to_all_v(send.data(), pl.sc, pl.sd, recv.data(), pl.rc, pl.rd);
  RowsPerExpert local(E);
  at = 0;
  for (int q = 0; q < N; ++q)
    for (size_t e = 0; e < E; ++e)
      if (ep.owner(int64_t(e)) == q) {
        const size_t n = size_t(counts[size_t(me) * E + e] * D);
        local[e].assign(recv.begin() + ptrdiff_t(at), recv.begin() + ptrdiff_t(at + n)), at += n;
      }
  return local;
}

}  // namespace moe::train
