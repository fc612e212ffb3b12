// Sandbox: programmatic dependent launch (PDL) on a chain of small dependent kernels (the launch-level switch
// MOE_CUDA_PDL=0 of the backend; production launch() in src/backend/cuda/cuda_common.cuh sets the attribute
// cudaLaunchAttributeProgrammaticStreamSerialization, and every kernel calls pdl_trigger() then pdl_wait()).
//
// A batch-1 decode step is ~490 dependent kernels of a few microseconds each; PDL lets kernel i+1's blocks
// launch (and run their prologue up to griddepcontrol.wait) while kernel i drains. This program launches N
// kernels, each `buf[i] += 1` over --blocks x 256 threads after pdl_wait(), with an optional independent
// prologue of --pre dependent FMAs before pdl_wait() (production: L2 prefetch of the GEMV weights) and --post FMAs
// after it (the kernel's own work), in four ways: eager stream launches and one CUDA graph of the chain, each
// without and with the PDL attribute.
// Check: after every way, each element equals N exactly (a missing wait would lose increments).
// Timing: cudaEvents around the whole chain (eager: the launches; graph: one cudaGraphLaunch), median of --reps,
// reported per kernel. The data is a few KB (L2-resident by design: this measures launch gaps, not memory).
//
// Sizes (defaults): --kernels 512 --blocks 16 --pre 0,2000 --post 0,2000 (every pair; 2000 FMAs ~ 4 us).
// Run: build-cuda/bench/gpu/sandbox/sandbox_pdl_chain [--kernels 512] [--blocks 16] [--pre 0] [--post 2000]
//
// Results so far (bench/RESULTS.md, "What moved batch-1 decode", H100, Moonlight BF16, batch-1 decode, whole
// model): commit 57b8330 ctx 512: graphs + PDL 249.4 / 251.0 tok/s, no graphs with PDL 236.6, neither 214.3; ctx
// 4096: 189.4 / 188.9, 173.0, 167.1. Run P (ecff7ba) ctx 512: 300.8 (graphs + PDL) vs 281.7 (no graphs, PDL);
// ctx 4096: 293.6 vs 271.8.
#include "common.cuh"

using namespace sbx;

namespace {

__global__ void step_kernel(float* buf, int64_t n, int pre, int post, float seed) {
  pdl_trigger();
  float acc = seed + float(threadIdx.x);
  for (int i = 0; i < pre; ++i) acc = fmaf(acc, 0.999f, 0.5f);  // independent prologue
  pdl_wait();
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int j = 0; j < post; ++j) acc = fmaf(acc, 0.999f, 0.5f);
  if (i < n) buf[i] += (acc == -1.2345f) ? 2.0f : 1.0f;  // acc never equals that; keeps the loops alive
}

}  // namespace

int main(int argc, char** argv) {
  const Args a{argc, argv};
  const int N = int(a.i64("kernels", 512));
  const int blocks = int(a.i64("blocks", 16));
  const auto pres = a.list("pre", {0, 2000});
  const auto posts = a.list("post", {0, 2000});
  const int reps = int(a.i64("reps", 20));
  const int64_t n = int64_t(blocks) * 256;
  print_device();
  cudaStream_t s;
  SBX_CHECK(cudaStreamCreate(&s));  // blocking: ordered after the setup copies on the default stream
  float* buf = dalloc<float>(size_t(n));
  cudaEvent_t e0, e1;
  SBX_CHECK(cudaEventCreate(&e0));
  SBX_CHECK(cudaEventCreate(&e1));

  std::printf("\n%d dependent kernels of %d blocks x 256 threads\n", N, blocks);
  std::printf("%6s %6s  %-7s %-4s %5s %12s %14s\n", "pre", "post", "mode", "pdl", "ok", "us/kernel", "vs no-PDL");
  bool all_ok = true;
  for (int64_t pre : pres)
    for (int64_t post : posts)
      for (int graph = 0; graph < 2; ++graph) {
        double base = 0.0;
        for (int pdl = 0; pdl < 2; ++pdl) {
          auto chain = [&] {
            for (int k = 0; k < N; ++k)
              launch(pdl != 0, step_kernel, unsigned(blocks), 256, 0, s, buf, n, int(pre), int(post), float(k));
          };
          cudaGraphExec_t exec = nullptr;
          if (graph) {
            cudaGraph_t g;
            SBX_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
            chain();
            SBX_CHECK(cudaStreamEndCapture(s, &g));
            SBX_CHECK(cudaGraphInstantiate(&exec, g, 0));
            SBX_CHECK(cudaGraphDestroy(g));
          }
          auto run = [&] {
            if (graph)
              SBX_CHECK(cudaGraphLaunch(exec, s));
            else
              chain();
          };
          // Check: one chain from zero.
          SBX_CHECK(cudaMemsetAsync(buf, 0, size_t(n) * 4, s));
          run();
          SBX_CHECK(cudaStreamSynchronize(s));
          const std::vector<float> got = ddownload(buf, size_t(n));
          bool ok = true;
          for (float v : got) ok = ok && v == float(N);
          all_ok = all_ok && ok;
          // Time.
          for (int w = 0; w < 3; ++w) run();
          std::vector<double> t;
          for (int r = 0; r < reps; ++r) {
            SBX_CHECK(cudaEventRecord(e0, s));
            run();
            SBX_CHECK(cudaEventRecord(e1, s));
            SBX_CHECK(cudaEventSynchronize(e1));
            float ms = 0.0f;
            SBX_CHECK(cudaEventElapsedTime(&ms, e0, e1));
            t.push_back(1e3 * double(ms) / N);
          }
          std::sort(t.begin(), t.end());
          const double us = t[t.size() / 2];
          if (!pdl) base = us;
          char rel[32] = "";
          if (pdl) std::snprintf(rel, sizeof rel, "%+.1f %%", 100.0 * (us - base) / base);
          std::printf("%6lld %6lld  %-7s %-4s %5s %12.3f %14s\n", (long long)pre, (long long)post,
                      graph ? "graph" : "eager", pdl ? "on" : "off", ok ? "yes" : "NO", us, rel);
          if (exec) SBX_CHECK(cudaGraphExecDestroy(exec));
        }
      }
  std::printf("\n%s\n", all_ok ? "ALL CHECKS PASS" : "SOME CHECKS FAILED");
  return all_ok ? 0 : 1;
}
