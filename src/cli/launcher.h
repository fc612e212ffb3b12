#pragma once
// The one-command launcher (docs/distributed.md "Launching"): `moe logits/generate/serve --ep N` and
// `moe train/train-steps --dp N` started by hand, not under mpirun, start their own N ranks on this node and
// wait for them; the process that was started becomes the launcher and runs no model itself.
//   CPU ranks: the same command re-executed under Open MPI's `mpirun -np N` (--mpirun, or from PATH, next to
//     the MPI library, or the one CMake found), shared memory only, oversubscription allowed; the ranks are MPI ranks as if the
//     user had typed the mpirun line, and mpirun names a rank that dies and stops the others.
//   GPU ranks (`--device cuda`, inference): N processes of the same command, each with one GPU
//     (CUDA_VISIBLE_DEVICES narrowed to its own) and hidden --rank/--world/--rendezvous, which bootstrap NCCL
//     through the TCP rendezvous on 127.0.0.1 and a free port. The launcher watches them: one dying stops the
//     others with an error naming its rank.
// Either way SIGINT/SIGTERM/SIGHUP go to the ranks, only rank 0's stdout is kept, and the job's status is the
// command's exit code.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

namespace moe::cli {

struct LaunchArgs {
  // Set by an MPI launcher in every rank it starts (read through CLI11 from OMPI_COMM_WORLD_SIZE / PMI_SIZE):
  // then this process is a rank and launches nothing.
  int64_t ompi_world = 0, pmi_world = 0;
  // Open MPI's rank on this node (OMPI_COMM_WORLD_LOCAL_RANK; -1 when not set): which GPU an MPI rank takes.
  int64_t ompi_local_rank = -1;
  // A GPU rank started by this launcher (hidden flags): its rank, the number of ranks, host:port of rank 0.
  int32_t rank = -1, world = 0;
  std::string rendezvous;
  std::string visible_gpus;  // CUDA_VISIBLE_DEVICES (through CLI11), the GPUs the launcher hands out
  std::string mpirun;        // --mpirun: the mpirun to use (empty: found as above)
  bool is_rank() const { return ompi_world > 0 || pmi_world > 0 || rank >= 0; }
};
void add_launch_options(CLI::App* cmd, LaunchArgs& args);

// Thrown by a command whose process launched the job (it ends there): main() returns `code`.
struct JobDone {
  int code = 0;
};

// With ranks > 1 in a process that is not a rank yet: starts the job (GPU ranks when gpu, else mpirun) and
// throws JobDone when it has ended. Otherwise returns and the command runs as one rank. `what` names the flag
// ("--ep 2") in errors.
void launch_if_needed(const LaunchArgs& args, int ranks, bool gpu, const std::string& what);

// Parsers of outside input, exposed for tests: "host:port" of --rendezvous, and a CUDA_VISIBLE_DEVICES list
// ("0,1,3" or "GPU-uuid,..."). Both throw moe::Error naming what was wrong.
void parse_rendezvous(const std::string& text, std::string& host, int& port);
std::vector<std::string> parse_visible_gpus(const std::string& text);

}  // namespace moe::cli
