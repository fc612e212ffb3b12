// CPU matmul throughput against the memory ceiling measured in the same run.
//   decode (1 token): weight bytes streamed per second vs a plain multi-threaded read of the same bytes;
//   prefill (64 tokens): GFLOP/s.
// Weights are random (never zeros) and 256 MB per matrix, far larger than the caches.
#include <benchmark/benchmark.h>

#include <random>

#include "backend/backend.h"
#include "core/thread_pool.h"

namespace {

using namespace moe;

struct Fixture {
  Tensor w, scale, x, y;
  Weight weight;
};

Fixture make(DType dtype, int64_t N, int64_t K, int64_t T) {
  Fixture f;
  f.w = Tensor::host(dtype, {N, K});
  std::mt19937 rng(1);
  auto* bytes = static_cast<uint8_t*>(f.w.data());
  for (size_t i = 0; i < f.w.view().nbytes(); ++i) bytes[i] = uint8_t(rng() & 0x3f);  // small finite values
  f.weight.w = f.w.view();
  if (dtype == DType::F8_E4M3) {
    f.scale = Tensor::host(DType::F32, {(N + 127) / 128, (K + 127) / 128});
    for (int64_t i = 0; i < f.scale.numel(); ++i) f.scale.as<float>()[i] = 0.01f;
    f.weight.scale_inv = f.scale.view();
  }
  f.x = Tensor::host(DType::F32, {T, K});
  for (int64_t i = 0; i < f.x.numel(); ++i) f.x.as<float>()[i] = float(int(rng() % 200) - 100) * 0.01f;
  f.y = Tensor::host(DType::F32, {T, N});
  return f;
}

// The ceiling: every thread sums its share of a 256 MB buffer.
void BM_ReadBandwidth(benchmark::State& state) {
  Tensor buf = Tensor::host(DType::F32, {int64_t(64) << 20});
  for (int64_t i = 0; i < buf.numel(); ++i) buf.as<float>()[i] = float(i & 255);
  std::vector<double> partial(64);
  for (auto _ : state) {
    ThreadPool::global().parallel_for(buf.numel(), [&](int64_t b, int64_t e, int tid) {
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      const float* p = buf.as<float>();
      for (int64_t i = b; i + 4 <= e; i += 4) s0 += p[i], s1 += p[i + 1], s2 += p[i + 2], s3 += p[i + 3];
      partial[size_t(tid)] += s0 + s1 + s2 + s3;
    }, 1 << 20);
    benchmark::DoNotOptimize(partial.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(buf.view().nbytes()));
}
BENCHMARK(BM_ReadBandwidth)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_MatmulDecode(benchmark::State& state) {
  const DType dtype = state.range(0) == 0 ? DType::BF16 : DType::F8_E4M3;
  const int64_t K = 4096, N = (int64_t(256) << 20) / (K * int64_t(dtype_size(dtype)));
  Fixture f = make(dtype, N, K, 1);
  auto backend = make_cpu_backend();
  for (auto _ : state) backend->matmul(f.x, f.weight, f.y);
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(f.weight.nbytes()));
  state.SetLabel(std::string(dtype_name(dtype)) + " weight bytes streamed");
}
BENCHMARK(BM_MatmulDecode)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_MatmulPrefill(benchmark::State& state) {
  const int64_t K = 2048, N = 4096, T = 64;
  Fixture f = make(DType::BF16, N, K, T);
  auto backend = make_cpu_backend();
  for (auto _ : state) backend->matmul(f.x, f.weight, f.y);
  state.counters["GFLOP/s"] = benchmark::Counter(double(2 * T * N * K) * double(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
}
BENCHMARK(BM_MatmulPrefill)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
