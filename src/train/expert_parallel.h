#pragma once
// Expert parallelism for the trainer's MoE layers: the routed experts are sharded over the ranks (expert e lives
// on rank e / (E / N)); each rank routes its own tokens, sends each (token, expert) row to the expert's owner with
// all_to_all_v (dispatch), the owner runs the expert over the rows of every rank and sends the outputs back
// (combine). The backward does the same with the output gradients and returns the input gradients; the experts'
// weight gradients stay on their owner. Rows arrive at the owner in rank order, which (each rank holding a
// contiguous block of sequences) is the single process's token order, so the expert GEMMs see the same rows.
#include <cstdint>
#include <vector>

namespace moe::dist {
class Communicator;
}

namespace moe::train {

// What the exchanges moved on this rank (counted since construction or the last reset).
struct EpStats {
  int64_t rows_sent = 0;         // rows this rank sent to other ranks (dispatch and combine, forward and backward)
  int64_t bytes_sent = 0;        // the same in bytes
  int max_ranks_per_token = 0;   // the most ranks one token's experts were on (node-limited routing's M)
};

struct ExpertParallel {
  dist::Communicator* comm = nullptr;
  int64_t experts = 0;  // E, a multiple of the number of ranks
  mutable EpStats stats;
  int owner(int64_t e) const;
  bool owns(int64_t e) const;
};

// Per expert e, rows of width D as float: local[e] holds this rank's rows of e (counts[me][e] of them).
using RowsPerExpert = std::vector<std::vector<float>>;

// counts [N, E]: how many rows rank p has for expert e (all-gathered from every rank's local counts).
std::vector<int64_t> ep_all_counts(const ExpertParallel& ep, const std::vector<int64_t>& local_counts);
// Dispatch: every rank's local rows to the owners; returns, for each expert this rank owns, the rows of every
// rank in rank order (empty for the others).
RowsPerExpert ep_dispatch(const ExpertParallel& ep, const std::vector<int64_t>& counts, const RowsPerExpert& local,
                          int64_t D);
// Combine: the inverse: the owners' rows (as ep_dispatch returned them) back to the ranks they came from.
RowsPerExpert ep_combine(const ExpertParallel& ep, const std::vector<int64_t>& counts, const RowsPerExpert& owned,
                         int64_t D);

}  // namespace moe::train
