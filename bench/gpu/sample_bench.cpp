// Backend::sample on the GPU against the old path (all logits rows copied to the host, then the host sampler),
// at batch 1, 64 and 256 x vocabulary V (default 129280, DeepSeek-V3's), random logits (normal, scale 3).
// Per setting (greedy; temperature 0.8 + top-p 0.95; temperature 0.8 + top-k 50; with 5 top logprobs):
//   device op: host clock around CudaBackend::sample (upload of the settings, one launch, download of the ids,
//              synchronised), median of reps; each call first restores the rows (the op edits them in place)
//              with a device copy, whose time, measured alone, is subtracted;
//   ceiling:   the bytes of logits read once (R * V * 4) at the device-to-device copy rate measured in the run
//              (read + written bytes per second, so a read-only pass could go up to twice as fast);
//   old path:  copy of the rows to the host (median), and the host sampler over the rows on one thread.
// Usage: bench_sample [vocab=129280] [reps=20]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/ceilings.h"

using namespace moe;

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t V = argc > 1 ? std::atoll(argv[1]) : 129280;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 20;
  auto gpu = make_cuda_backend(0);
  const double copy_bw = cuda::measure_copy_bandwidth(0, size_t(1) << 30);
  fmt::print("device: {}, copy {:.0f} GB/s (read + written), vocabulary {}\n", gpu->name(), copy_bw / 1e9, V);
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);

  struct Setting {
    const char* name;
    SamplingParams p;
    int32_t top_logprobs;
  };
  std::vector<Setting> settings(4);
  settings[0] = {"greedy", {}, -1};
  settings[1] = {"T0.8 top-p0.95", {}, -1};
  settings[1].p.temperature = 0.8f;
  settings[1].p.top_p = 0.95f;
  settings[2] = {"T0.8 top-k50", {}, -1};
  settings[2].p.temperature = 0.8f;
  settings[2].p.top_k = 50;
  settings[3] = {"T0.8 top-p0.95 logprobs5", settings[1].p, 5};

  for (int64_t R : {int64_t(1), int64_t(64), int64_t(256)}) {
    std::vector<float> host(size_t(R * V));
    for (auto& v : host) v = normal(rng);
    Tensor pristine = gpu->alloc(DType::F32, {R, V}), work = gpu->alloc(DType::F32, {R, V});
    gpu->copy_from_host(host.data(), pristine);
    const double bytes = double(R * V * 4);
    // The restoring copy alone.
    std::vector<double> copy_t;
    for (int i = 0; i < reps + 2; ++i) {
      const auto t0 = Clock::now();
      gpu->copy(pristine, work);
      gpu->synchronize();
      copy_t.push_back(since(t0));
    }
    const double restore = median(copy_t);
    // The old path's download.
    std::vector<float> down(size_t(R * V));
    std::vector<double> d2h;
    for (int i = 0; i < std::max(3, reps / 4); ++i) {
      const auto t0 = Clock::now();
      gpu->copy_to_host(pristine, down.data());
      d2h.push_back(since(t0));
    }
    const double d2h_s = median(d2h);
    for (const Setting& s : settings) {
      std::vector<SampleRow> rows(static_cast<size_t>(R));
      std::uniform_real_distribution<double> unit(0.0, 1.0);
      for (int64_t r = 0; r < R; ++r) {
        rows[size_t(r)] = sample_row(r, &s.p);
        rows[size_t(r)].top_logprobs = s.top_logprobs;
      }
      std::vector<SampleResult> out;
      std::vector<double> t;
      for (int i = 0; i < reps + 2; ++i) {
        for (auto& row : rows) row.u = unit(rng);
        const auto t0 = Clock::now();
        gpu->copy(pristine, work);
        gpu->sample(work, rows, out);
        t.push_back(since(t0));
      }
      const double op = std::max(1e-7, median(t) - restore);
      // The host sampler over the downloaded rows, one thread.
      const auto t0 = Clock::now();
      for (int64_t r = 0; r < R; ++r) {
        std::vector<float> row(host.begin() + r * V, host.begin() + (r + 1) * V);
        sample_row_host(row, rows[size_t(r)]);
      }
      const double host_s = since(t0);
      const double ceiling = bytes / copy_bw;
      fmt::print("batch {:3d} {:26s}: device op {:8.1f} us (ceiling {:6.1f} us = {:5.1f}%) | old path: copy {:8.1f} us + "
                 "host sampling {:9.1f} us (1 thread) = {:5.1f}x the device op\n",
                 R, s.name, op * 1e6, ceiling * 1e6, 100.0 * ceiling / op, d2h_s * 1e6, host_s * 1e6,
                 (d2h_s + host_s) / op);
    }
  }
  return 0;
}
