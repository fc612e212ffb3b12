// NcclCommunicator: NCCL between GPUs, one rank per GPU. Buffers are device pointers; every collective is
// enqueued on the communicator's stream (its own until set_stream gives the backend's) and returns without
// waiting, except barrier(), which waits for the stream. all_to_all_v is a group of ncclSend/ncclRecv.
// Host buffers are taken too (expert parallelism exchanges its counts, slot lists and step plans in host
// memory): they are staged through device buffers of the communicator, and such a call waits for the stream
// before it returns, so the host may read the result at once.
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/tcp_rendezvous.h"

#ifdef MOE_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>

namespace moe::dist {

namespace {

void check_cuda(cudaError_t rc, const char* what) {
  MOE_CHECK(rc == cudaSuccess, "dist: {} failed: {}", what, cudaGetErrorString(rc));
}
void check_nccl(ncclResult_t rc, const char* what) {
  MOE_CHECK(rc == ncclSuccess, "dist: {} failed: {}", what, ncclGetErrorString(rc));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const NcclOptions& o) : device_(o.device) {
    int devices = 0;
    check_cuda(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
    MOE_CHECK(o.device >= 0 && o.device < devices, "dist: NCCL rank wants cuda:{} but {} GPU(s) are visible", o.device,
              devices);
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    rank_ = o.bootstrap ? o.bootstrap->rank() : o.rank;
    size_ = o.bootstrap ? o.bootstrap->size() : o.size;
    ncclUniqueId id{};
    if (rank_ == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    if (o.bootstrap) {
      o.bootstrap->broadcast(&id, sizeof id, 0);
    } else {
      Rendezvous r{o.host, o.port, o.rank, o.size, o.timeout_s};
      std::vector<uint8_t> blob(sizeof id);
      std::memcpy(blob.data(), &id, sizeof id);
      blob = rendezvous_share(r, blob);
      MOE_CHECK(blob.size() == sizeof id, "dist: the rendezvous brought {} bytes, not an ncclUniqueId", blob.size());
      std::memcpy(&id, blob.data(), sizeof id);
    }
    check_nccl(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
    check_cuda(cudaStreamCreateWithFlags(&own_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    stream_ = own_stream_;
    check_cuda(cudaMalloc(&scratch_, sizeof(float)), "cudaMalloc");
  }
  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    if (comm_) ncclCommDestroy(comm_);
    if (scratch_) cudaFree(scratch_);
    for (Stage& st : stage_)
      if (st.p) cudaFree(st.p);
    if (own_stream_) cudaStreamDestroy(own_stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl"; }
  void set_stream(void* s) override { stream_ = s ? static_cast<cudaStream_t>(s) : own_stream_; }
  void* stream() const override { return stream_; }

  void barrier() override {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_nccl(ncclAllReduce(scratch_, scratch_, 1, ncclFloat, ncclSum, comm_, stream_), "ncclAllReduce (barrier)");
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  void all_reduce_sum(std::span<float> d) override { reduce(d.data(), d.size(), sizeof(float), ncclFloat); }
  void all_reduce_sum(std::span<double> d) override { reduce(d.data(), d.size(), sizeof(double), ncclDouble); }
  void all_gather(std::span<const float> s, std::span<float> r) override {
    gather(s.data(), s.size(), r.data(), r.size(), sizeof(float), ncclFloat);
  }
  void all_gather(std::span<const double> s, std::span<double> r) override {
    gather(s.data(), s.size(), r.data(), r.size(), sizeof(double), ncclDouble);
  }
  void reduce_scatter_sum(std::span<const float> s, std::span<float> r) override {
    scatter(s.data(), s.size(), r.data(), r.size(), sizeof(float), ncclFloat);
  }
  void reduce_scatter_sum(std::span<const double> s, std::span<double> r) override {
    scatter(s.data(), s.size(), r.data(), r.size(), sizeof(double), ncclDouble);
  }

  void all_to_all_v(const void* send, std::span<const size_t> send_counts, std::span<const size_t> send_displs,
                    void* recv, std::span<const size_t> recv_counts, std::span<const size_t> recv_displs) override {
    const size_t n = size_t(size_);
    MOE_CHECK(send_counts.size() == n && send_displs.size() == n && recv_counts.size() == n && recv_displs.size() == n,
              "dist: all_to_all_v takes {} counts and displacements per direction (one per rank)", n);
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    size_t send_end = 0, recv_end = 0;  // the buffers' extents, for staging host ones
    for (size_t p = 0; p < n; ++p) {
      if (send_counts[p] > 0) send_end = std::max(send_end, send_displs[p] + send_counts[p]);
      if (recv_counts[p] > 0) recv_end = std::max(recv_end, recv_displs[p] + recv_counts[p]);
    }
    const char* sd = static_cast<const char*>(stage_in(0, send, send_end));
    char* rd = static_cast<char*>(stage_for(1, recv, recv_end));
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    for (int p = 0; p < size_; ++p) {
      if (send_counts[size_t(p)] > 0)
        check_nccl(ncclSend(sd + send_displs[size_t(p)], send_counts[size_t(p)], ncclChar, p, comm_, stream_),
                   "ncclSend");
      if (recv_counts[size_t(p)] > 0)
        check_nccl(ncclRecv(rd + recv_displs[size_t(p)], recv_counts[size_t(p)], ncclChar, p, comm_, stream_),
                   "ncclRecv");
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    // A staged host result: only the segments the displacements name come back (the bytes between them are
    // the caller's and stay as they were).
    if (rd != recv)
      for (size_t p = 0; p < n; ++p)
        if (recv_counts[p] > 0)
          check_cuda(cudaMemcpyAsync(static_cast<char*>(recv) + recv_displs[p], rd + recv_displs[p], recv_counts[p],
                                     cudaMemcpyDeviceToHost, stream_),
                     "cudaMemcpyAsync (NCCL staging)");
    if (rd != recv || on_host(send)) check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  void broadcast(void* data, size_t bytes, int root) override {
    MOE_CHECK(root >= 0 && root < size_, "dist: broadcast from rank {} of {}", root, size_);
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    void* d = stage_in(0, data, bytes);
    check_nccl(ncclBroadcast(d, d, bytes, ncclChar, root, comm_, stream_), "ncclBroadcast");
    stage_out(data, data, d, bytes);
  }

 private:
  void reduce(void* d, size_t n, size_t unit, ncclDataType_t t) {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    void* dd = stage_in(0, d, n * unit);
    check_nccl(ncclAllReduce(dd, dd, n, t, ncclSum, comm_, stream_), "ncclAllReduce");
    stage_out(d, d, dd, n * unit);
  }
  void gather(const void* s, size_t n, void* r, size_t rn, size_t unit, ncclDataType_t t) {
    MOE_CHECK(rn == n * size_t(size_), "dist: all_gather of {} values per rank into {} (not {} x {})", n, rn, size_, n);
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    const void* sd = stage_in(0, s, n * unit);
    void* rd = stage_for(1, r, rn * unit);
    check_nccl(ncclAllGather(sd, rd, n, t, comm_, stream_), "ncclAllGather");
    stage_out(s, r, rd, rn * unit);
  }
  void scatter(const void* s, size_t sn, void* r, size_t n, size_t unit, ncclDataType_t t) {
    MOE_CHECK(sn == n * size_t(size_), "dist: reduce_scatter_sum of {} values into blocks of {} (not {} x {})", sn, n,
              size_, n);
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    const void* sd = stage_in(0, s, sn * unit);
    void* rd = stage_for(1, r, n * unit);
    check_nccl(ncclReduceScatter(sd, rd, n, t, ncclSum, comm_, stream_), "ncclReduceScatter");
    stage_out(s, r, rd, n * unit);
  }

  // Host buffers: plain or pinned host memory is staged (NCCL reads and writes device memory only).
  static bool on_host(const void* p) {
    if (!p) return false;
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
      (void)cudaGetLastError();  // older drivers: an unregistered pointer is an error, and it is host memory
      return true;
    }
    return a.type == cudaMemoryTypeUnregistered || a.type == cudaMemoryTypeHost;
  }
  // Device buffer `slot` of at least `bytes` (grown, never shrunk).
  void* stage(int slot, size_t bytes) {
    Stage& st = stage_[size_t(slot)];
    if (st.bytes < bytes) {
      if (st.p) check_cuda(cudaFree(st.p), "cudaFree");
      st.p = nullptr;
      st.bytes = 0;
      check_cuda(cudaMalloc(&st.p, bytes), "cudaMalloc (NCCL staging)");
      st.bytes = bytes;
    }
    return st.p;
  }
  // A device copy of `p`'s first `bytes` in slot `slot` when p is host memory, else p itself.
  void* stage_in(int slot, const void* p, size_t bytes) {
    if (!on_host(p) || bytes == 0) return const_cast<void*>(p);
    void* d = stage(slot, bytes);
    check_cuda(cudaMemcpyAsync(d, p, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync (NCCL staging)");
    return d;
  }
  // Where a result for `p` goes: p itself (device memory) or staging slot `slot` (host memory).
  void* stage_for(int slot, void* p, size_t bytes) { return on_host(p) && bytes > 0 ? stage(slot, bytes) : p; }
  // After the collective: a host result `host` (staged at `dev`) is copied back; if either buffer of the call was
  // host memory the call waits for the stream (the host reads, or reuses, its buffer next).
  void stage_out(const void* in, void* host, const void* dev, size_t bytes) {
    const bool out_host = dev != host;
    if (out_host && bytes > 0)
      check_cuda(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync (NCCL staging)");
    if (out_host || on_host(in)) check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  struct Stage {
    void* p = nullptr;
    size_t bytes = 0;
  };
  Stage stage_[2];
  int device_ = 0, rank_ = 0, size_ = 1;
  ncclComm_t comm_ = nullptr;
  cudaStream_t own_stream_ = nullptr, stream_ = nullptr;
  float* scratch_ = nullptr;
};

}  // namespace

bool have_nccl() { return true; }
std::unique_ptr<Communicator> make_nccl_communicator(const NcclOptions& o) {
  return std::make_unique<NcclCommunicator>(o);
}

}  // namespace moe::dist

#else

namespace moe::dist {
bool have_nccl() { return false; }
std::unique_ptr<Communicator> make_nccl_communicator(const NcclOptions&) {
  fail("dist: this build has no NCCL (it needs a CUDA build, -DMOE_CUDA=ON, with libnccl from the CUDA toolkit)");
}
}  // namespace moe::dist

#endif
