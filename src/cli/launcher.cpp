// The one-command launcher (launcher.h). Shapes: the job's command line is this process's own (read from
// /proc/self/cmdline, so nothing has to keep argv), re-run as `mpirun [options] -np N EXE ARGS...` or as N
// processes `EXE ARGS... --rank R --world N --rendezvous 127.0.0.1:PORT`.
#include "cli/launcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"

extern char** environ;

namespace moe::cli {

namespace fs = std::filesystem;

void add_launch_options(CLI::App* cmd, LaunchArgs& a) {
  cmd->add_option("--mpi-world-size", a.ompi_world, "set by Open MPI's mpirun")->envname("OMPI_COMM_WORLD_SIZE")
      ->group("");
  cmd->add_option("--pmi-world-size", a.pmi_world, "set by PMI launchers")->envname("PMI_SIZE")->group("");
  cmd->add_option("--mpi-local-rank", a.ompi_local_rank, "set by Open MPI's mpirun")
      ->envname("OMPI_COMM_WORLD_LOCAL_RANK")->group("");
  cmd->add_option("--rank", a.rank, "a GPU rank started by the launcher: its rank")->group("");
  cmd->add_option("--world", a.world, "a GPU rank started by the launcher: the number of ranks")->group("");
  cmd->add_option("--rendezvous", a.rendezvous, "a GPU rank started by the launcher: host:port of rank 0")->group("");
  cmd->add_option("--mpirun", a.mpirun,
                  "Started by hand with N > 1 ranks on CPUs: the Open MPI mpirun that starts them (default: mpirun on "
                  "PATH, else next to the MPI library)");
  cmd->add_option("--visible-gpus", a.visible_gpus, "the GPUs the launcher hands out")
      ->envname("CUDA_VISIBLE_DEVICES")->group("");
}

void parse_rendezvous(const std::string& text, std::string& host, int& port) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    fail("--rendezvous '{}': expected host:port", text);
  const std::string p = text.substr(colon + 1);
  if (p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos)
    fail("--rendezvous '{}': the port '{}' is not a number", text, p);
  port = std::stoi(p);
  if (port < 1 || port > 65535) fail("--rendezvous '{}': the port {} is outside 1..65535", text, port);
  host = text.substr(0, colon);
}

std::vector<std::string> parse_visible_gpus(const std::string& text) {
  std::vector<std::string> out;
  for (size_t i = 0; i <= text.size();) {
    const size_t j = std::min(text.find(',', i), text.size());
    std::string id = text.substr(i, j - i);
    if (id.empty() || id.find_first_of(" \t\n=") != std::string::npos)
      fail("CUDA_VISIBLE_DEVICES '{}': entry {} is '{}', not a GPU index or UUID", text, out.size() + 1, id);
    out.push_back(std::move(id));
    i = j + 1;
  }
  return out;
}

namespace {

// This process's executable and arguments (argv[1..]).
std::pair<std::string, std::vector<std::string>> own_command() {
  std::error_code ec;
  const std::string exe = fs::read_symlink("/proc/self/exe", ec).string();
  if (ec) fail("launcher: cannot read /proc/self/exe: {}", ec.message());
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (size_t i = 0; i < all.size();) {
    const size_t j = all.find('\0', i);
    args.push_back(all.substr(i, j == std::string::npos ? std::string::npos : j - i));
    if (j == std::string::npos) break;
    i = j + 1;
  }
  if (args.empty()) fail("launcher: /proc/self/cmdline is empty");
  args.erase(args.begin());
  return {exe, args};
}

bool executable(const std::string& path) { return !path.empty() && access(path.c_str(), X_OK) == 0; }

// SIGINT, SIGTERM, SIGHUP (forwarded to the ranks) and SIGCHLD, blocked in the launcher and waited for.
sigset_t watched_signals() {
  sigset_t s;
  sigemptyset(&s);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGCHLD}) sigaddset(&s, sig);
  return s;
}

// Starts `argv` (argv[0] searched on PATH when `search`) in a process group of its own, signals at their
// defaults and unblocked, stdout to /dev/null when `quiet`, environment `env`. Returns the pid, or -1 with errno when it could not start.
pid_t spawn(const std::vector<std::string>& argv, bool search, bool quiet, char** env) {
  std::vector<char*> av;
  for (const auto& a : argv) av.push_back(const_cast<char*>(a.c_str()));
  av.push_back(nullptr);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults = watched_signals();
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  // Its own process group: a terminal's Ctrl-C reaches the launcher alone, which passes it on (supervise).
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  if (quiet) posix_spawn_file_actions_addopen(&files, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  const int rc = search ? posix_spawnp(&pid, av[0], &files, &attr, av.data(), env)
                        : posix_spawn(&pid, av[0], &files, &attr, av.data(), env);
  posix_spawn_file_actions_destroy(&files);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    errno = rc;
    return -1;
  }
  return pid;
}

std::string describe(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return "stopped";
}

// Rank 0's process under mpirun: mpirun's child whose environment says OMPI_COMM_WORLD_RANK=0 (-1 if none yet).
pid_t mpi_rank0(pid_t mpirun) {
  const std::string want = std::string("OMPI_COMM_WORLD_RANK=0") + '\0';
  pid_t found = -1;
  for (const auto& e : fs::directory_iterator("/proc", fs::directory_options::skip_permission_denied)) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    const size_t close = text.rfind(')');  // "pid (comm) state ppid ...", comm may hold spaces
    if (close == std::string::npos) continue;
    int ppid = 0;
    char state = 0;
    if (std::sscanf(text.c_str() + close + 1, " %c %d", &state, &ppid) != 2 || ppid != mpirun) continue;
    std::ifstream env(e.path() / "environ", std::ios::binary);
    const std::string vars((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
    if (vars.rfind(want, 0) == 0 || vars.find('\0' + want) != std::string::npos) found = std::stoi(name);
  }
  return found;
}

// Waits for the children (pids[r] is rank r's process, or mpirun alone, each the leader of its own process
// group), passing signals on. A stop signal (SIGINT, SIGTERM, SIGHUP) goes to rank 0 alone: `moe serve` then
// stops cleanly and tells the other ranks to stop, a batch command dies of it and the job ends as failed. A child
// that fails while the others run stops them. Ranks still running `grace` after either get SIGTERM (under mpirun:
// mpirun, which tears the job down), and SIGKILL (their process groups) 5 s later. Returns the exit code: mpirun's
// own, or 0 when every rank exited 0 and 1 otherwise.
int supervise(const std::vector<pid_t>& pids, bool mpirun, const sigset_t& sigs) {
  using clock = std::chrono::steady_clock;
  constexpr auto grace = std::chrono::seconds(10);
  std::vector<std::optional<int>> status(pids.size());
  const clock::time_point never = clock::time_point::max();
  clock::time_point term_at = never, kill_at = never;  // when to escalate (never: not due)
  bool failed = false;
  size_t live = pids.size();
  auto signal_live = [&](int sig, bool groups) {
    for (size_t r = 0; r < pids.size(); ++r)
      if (!status[r]) kill(groups ? -pids[r] : pids[r], sig);
  };
  while (live > 0) {
    timespec tick{0, 200'000'000};
    siginfo_t info;
    const int sig = sigtimedwait(&sigs, &info, &tick);
    if ((sig == SIGINT || sig == SIGTERM || sig == SIGHUP) && !status[0]) {
      const pid_t rank0 = mpirun ? mpi_rank0(pids[0]) : pids[0];
      kill(rank0 > 0 ? rank0 : pids[0], sig);
      if (term_at == never) term_at = clock::now() + grace;
    }
    for (size_t r = 0; r < pids.size(); ++r) {
      if (status[r]) continue;
      int st = 0;
      if (waitpid(pids[r], &st, WNOHANG) != pids[r]) continue;
      status[r] = st, --live;
      const bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
      if (ok || failed) continue;
      failed = true;
      if (mpirun)
        std::fprintf(stderr, "moe: error: the job stopped: mpirun %s (its messages above name the rank)\n",
                     describe(st).c_str());
      else
        std::fprintf(stderr, "moe: error: rank %zu (pid %d) %s; stopping the other ranks\n", r, int(pids[r]),
                     describe(st).c_str());
      if (live > 0) signal_live(SIGTERM, false), term_at = clock::now() + grace;
    }
    const auto now = clock::now();
    if (live > 0 && now > term_at) {
      std::fprintf(stderr, "moe: error: ranks still running %d s after being told to stop: terminating them\n",
                   int(grace.count()));
      signal_live(SIGTERM, false);
      term_at = never, kill_at = now + std::chrono::seconds(5), failed = true;
    }
    if (live > 0 && now > kill_at) {
      signal_live(SIGKILL, true);
      kill_at = never;
    }
  }
  if (mpirun && WIFEXITED(*status[0])) return WEXITSTATUS(*status[0]);
  return failed ? 1 : 0;
}

// Open MPI's mpirun: on PATH, next to the MPI library (PREFIX/lib/libmpi.so -> PREFIX/bin/mpirun), or where CMake
// found it when this binary was built. Empty when none exists.
std::string find_mpirun(bool& on_path) {
  // posix_spawnp searches PATH (this file reads no environment itself): `mpirun --version` succeeding is the probe.
  on_path = false;
  if (const pid_t pid = spawn({"mpirun", "--version"}, true, true, environ); pid > 0) {
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
      on_path = true;
      return "mpirun";
    }
  }
  const std::string lib = dist::mpi_library_path();
  if (!lib.empty()) {
    const std::string candidate = (fs::path(lib).parent_path().parent_path() / "bin" / "mpirun").string();
    if (executable(candidate)) return candidate;
  }
#ifdef MOE_MPIEXEC
  if (executable(MOE_MPIEXEC)) return MOE_MPIEXEC;
#endif
  return {};
}

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  MOE_CHECK(fd >= 0, "launcher: socket(): {}", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET, a.sin_port = 0, a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  close(fd);
  MOE_CHECK(ok, "launcher: no free port on 127.0.0.1 for the rendezvous: {}", std::strerror(errno));
  return ntohs(a.sin_port);
}

int launch_mpi(const LaunchArgs& a, int ranks, const std::string& what) {
  if (!dist::have_mpi())
    fail("{} runs MPI ranks, and this build has none (install libopenmpi-dev and openmpi-bin, then rebuild)", what);
  if (!a.mpirun.empty() && !executable(a.mpirun))
    fail("{}: --mpirun {} is not an executable file (Open MPI's mpirun comes with the Debian package openmpi-bin)",
         what, a.mpirun);
  bool on_path = false;
  const std::string mpirun = a.mpirun.empty() ? find_mpirun(on_path) : a.mpirun;
  if (mpirun.empty())
    fail("{} starts {} MPI ranks with Open MPI's mpirun, which was not found on PATH or next to the MPI library "
         "(install the Debian package openmpi-bin)", what, ranks);
  auto [exe, args] = own_command();
  // One node: shared memory between the ranks (no network needed), more ranks than cores allowed (waiting ranks
  // yield), no binding (the ranks share the cores), no remote shell.
  // Its stdin is not the terminal's (mpirun runs in a process group of its own, and no command reads stdin).
  std::vector<std::string> argv = {mpirun, "-np", std::to_string(ranks), "--oversubscribe", "--bind-to", "none",
                                   "--stdin", "none",
                                   "--mca", "btl", "self,vader", "--mca", "btl_vader_single_copy_mechanism", "none",
                                   "--mca", "mpi_yield_when_idle", "1", "--mca", "plm_rsh_agent", "false"};
  if (geteuid() == 0) argv.push_back("--allow-run-as-root");
  argv.push_back(exe);
  argv.insert(argv.end(), args.begin(), args.end());
  const sigset_t sigs = watched_signals();
  sigset_t old;
  pthread_sigmask(SIG_BLOCK, &sigs, &old);
  const pid_t pid = spawn(argv, on_path, false, environ);
  if (pid < 0) {
    const int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    fail("{}: cannot start {}: {}", what, mpirun, std::strerror(err));
  }
  const int code = supervise({pid}, true, sigs);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return code;
}

int launch_gpus(const LaunchArgs& a, int ranks, const std::string& what) {
  if (!dist::have_nccl())
    fail("{} with --device cuda runs one NCCL rank per GPU, and this build has no NCCL (a CUDA build with libnccl)",
         what);
  std::vector<std::string> gpus;
  if (!a.visible_gpus.empty()) gpus = parse_visible_gpus(a.visible_gpus);
  else
    for (int r = 0; r < ranks; ++r) gpus.push_back(std::to_string(r));
  if (int(gpus.size()) < ranks)
    fail("{} with --device cuda needs {} GPUs, and CUDA_VISIBLE_DEVICES names {}", what, ranks, gpus.size());
  auto [exe, args] = own_command();
  const std::string rendezvous = "127.0.0.1:" + std::to_string(free_port());
  // Each rank's environment: ours with CUDA_VISIBLE_DEVICES narrowed to its GPU (it then uses cuda:0).
  std::vector<std::string> base;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "CUDA_VISIBLE_DEVICES=", 21) != 0) base.emplace_back(*e);
  const sigset_t sigs = watched_signals();
  sigset_t old;
  pthread_sigmask(SIG_BLOCK, &sigs, &old);
  std::vector<pid_t> pids;
  for (int r = 0; r < ranks; ++r) {
    std::vector<std::string> env = base;
    env.push_back("CUDA_VISIBLE_DEVICES=" + gpus[size_t(r)]);
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::vector<std::string> argv = {exe};
    argv.insert(argv.end(), args.begin(), args.end());
    for (const std::string& s : std::vector<std::string>{"--rank", std::to_string(r), "--world", std::to_string(ranks),
                                                          "--rendezvous", rendezvous})
      argv.push_back(s);
    const pid_t pid = spawn(argv, false, r != 0, envp.data());
    if (pid < 0) {
      const int err = errno;
      for (pid_t p : pids) kill(p, SIGTERM);
      for (pid_t p : pids) waitpid(p, nullptr, 0);
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
      fail("{}: cannot start rank {} ({}): {}", what, r, exe, std::strerror(err));
    }
    pids.push_back(pid);
  }
  const int code = supervise(pids, false, sigs);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return code;
}

}  // namespace

void launch_if_needed(const LaunchArgs& a, int ranks, bool gpu, const std::string& what) {
  if (ranks <= 1 || a.is_rank()) return;
  throw JobDone{gpu ? launch_gpus(a, ranks, what) : launch_mpi(a, ranks, what)};
}

}  // namespace moe::cli
