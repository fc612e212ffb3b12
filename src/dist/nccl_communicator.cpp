// NcclCommunicator: NCCL between GPUs, one rank per GPU. Buffers are device pointers; every collective is
// enqueued on the communicator's stream (its own until set_stream gives the backend's) and returns without
// waiting, except barrier(), which waits for the stream. all_to_all_v is a group of ncclSend/ncclRecv.
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/tcp_rendezvous.h"

#ifdef MOE_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

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

  void all_reduce_sum(std::span<float> d) override { reduce(d.data(), d.size(), ncclFloat); }
  void all_reduce_sum(std::span<double> d) override { reduce(d.data(), d.size(), ncclDouble); }
  void all_gather(std::span<const float> s, std::span<float> r) override {
    gather(s.data(), s.size(), r.data(), r.size(), ncclFloat);
  }
  void all_gather(std::span<const double> s, std::span<double> r) override {
    gather(s.data(), s.size(), r.data(), r.size(), ncclDouble);
  }
  void reduce_scatter_sum(std::span<const float> s, std::span<float> r) override {
    scatter(s.data(), s.size(), r.data(), r.size(), ncclFloat);
  }
  void reduce_scatter_sum(std::span<const double> s, std::span<double> r) override {
    scatter(s.data(), s.size(), r.data(), r.size(), ncclDouble);
  }

  void all_to_all_v(const void* send, std::span<const size_t> send_counts, std::span<const size_t> send_displs,
                    void* recv, std::span<const size_t> recv_counts, std::span<const size_t> recv_displs) override {
    const size_t n = size_t(size_);
    MOE_CHECK(send_counts.size() == n && send_displs.size() == n && recv_counts.size() == n && recv_displs.size() == n,
              "dist: all_to_all_v takes {} counts and displacements per direction (one per rank)", n);
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    for (int p = 0; p < size_; ++p) {
      if (send_counts[size_t(p)] > 0)
        check_nccl(ncclSend(static_cast<const char*>(send) + send_displs[size_t(p)], send_counts[size_t(p)], ncclChar,
                            p, comm_, stream_),
                   "ncclSend");
      if (recv_counts[size_t(p)] > 0)
        check_nccl(ncclRecv(static_cast<char*>(recv) + recv_displs[size_t(p)], recv_counts[size_t(p)], ncclChar, p,
                            comm_, stream_),
                   "ncclRecv");
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd");
  }

  void broadcast(void* data, size_t bytes, int root) override {
    MOE_CHECK(root >= 0 && root < size_, "dist: broadcast from rank {} of {}", root, size_);
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_nccl(ncclBroadcast(data, data, bytes, ncclChar, root, comm_, stream_), "ncclBroadcast");
  }

 private:
  void reduce(void* d, size_t n, ncclDataType_t t) {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_nccl(ncclAllReduce(d, d, n, t, ncclSum, comm_, stream_), "ncclAllReduce");
  }
  void gather(const void* s, size_t n, void* r, size_t rn, ncclDataType_t t) {
    MOE_CHECK(rn == n * size_t(size_), "dist: all_gather of {} values per rank into {} (not {} x {})", n, rn, size_, n);
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_nccl(ncclAllGather(s, r, n, t, comm_, stream_), "ncclAllGather");
  }
  void scatter(const void* s, size_t sn, void* r, size_t n, ncclDataType_t t) {
    MOE_CHECK(sn == n * size_t(size_), "dist: reduce_scatter_sum of {} values into blocks of {} (not {} x {})", sn, n,
              size_, n);
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_nccl(ncclReduceScatter(s, r, n, t, ncclSum, comm_, stream_), "ncclReduceScatter");
  }

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
