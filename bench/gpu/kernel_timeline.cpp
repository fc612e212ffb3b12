// Kernel timeline of any CUDA program, CUDA graph replays included: a CUPTI injection library. Nsight Compute
// serialises kernels and flushes caches, so its per-kernel times overstate small kernels that, in a replayed
// decode step, overlap their neighbours under programmatic dependent launch; Nsight Systems is not on the GPU
// machine. CUPTI's concurrent-kernel activity records keep the kernels as they ran: start and end (ns, GPU
// clock), stream, graph and graph node of every launch.
//
// Use (the CUDA driver loads the library at the program's first CUDA call and calls InitializeInjection):
//   CUDA_INJECTION64_PATH=build/tests/cuda/libmoe_kernel_timeline.so MOE_TIMELINE_OUT=timeline.csv
//   build/src/cli/moe bench --device cuda ...    (both on one command line)
// Output (written at exit): CSV "start_ns,end_ns,stream,graph,graph_node,name" with demangled names, one line
// per kernel launch, in the order CUPTI delivered them. bench/gpu/timeline_summary.py groups the replays of
// one graph into steps and reports each kernel's share of a step's critical path. MOE_TIMELINE_OUT is read
// here only because an injected library has no command line (default: timeline.csv).
#include <cupti.h>
#include <cxxabi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Record {
  uint64_t start, end;
  uint32_t stream, graph;
  uint64_t node;
  std::string name;
};

std::mutex mu;
std::vector<Record> records;
constexpr size_t kBufferBytes = 8u << 20;

void warn(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* msg = nullptr;
  cuptiGetResultString(r, &msg);
  std::fprintf(stderr, "kernel_timeline: %s: %s\n", what, msg ? msg : "unknown CUPTI error");
}

std::string demangle(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : name;
  std::free(d);
  return s;
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* a = nullptr;
  std::vector<Record> got;
  while (cuptiActivityGetNextRecord(buffer, valid, &a) == CUPTI_SUCCESS) {
    if (a->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;  // the only kind enabled
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(a);
    got.push_back({k->start, k->end, k->streamId, k->graphId, k->graphNodeId, demangle(k->name)});
  }
  size_t dropped = 0;
  cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped);
  if (dropped) std::fprintf(stderr, "kernel_timeline: %zu records dropped\n", dropped);
  std::free(buffer);
  const std::lock_guard<std::mutex> lock(mu);
  for (Record& r : got) records.push_back(std::move(r));
}

void write_out() {
  warn(cuptiActivityFlushAll(1), "cuptiActivityFlushAll");
  const char* path = std::getenv("MOE_TIMELINE_OUT");
  if (!path || !*path) path = "timeline.csv";
  std::FILE* f = std::fopen(path, "w");
  if (!f) {
    std::fprintf(stderr, "kernel_timeline: cannot write %s\n", path);
    return;
  }
  const std::lock_guard<std::mutex> lock(mu);
  std::fprintf(f, "start_ns,end_ns,stream,graph,graph_node,name\n");
  for (const Record& r : records) {
    std::string name = r.name;
    for (char& c : name)
      if (c == ',' || c == '"' || c == '\n') c = ';';
    std::fprintf(f, "%llu,%llu,%u,%u,%llu,%s\n", (unsigned long long)r.start, (unsigned long long)r.end,
                 r.stream, r.graph, (unsigned long long)r.node, name.c_str());
  }
  std::fclose(f);
  std::fprintf(stderr, "kernel_timeline: %zu kernels written to %s\n", records.size(), path);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int InitializeInjection(void) {
  warn(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "cuptiActivityRegisterCallbacks");
  warn(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable");
  std::atexit(write_out);
  return 1;
}
