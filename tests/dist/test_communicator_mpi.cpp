// MpiCommunicator under `mpirun -np N` (ctest runs N = 2 and 4 through tests/dist/mpirun.sh): every collective
// against values computed locally. Run without mpirun it is one rank (MPI's singleton).
#include <gtest/gtest.h>

#include "collective_checks.h"
#include "core/error.h"

namespace moe::dist {
namespace {

Communicator& comm() {
  static std::unique_ptr<Communicator> c = make_mpi_communicator();  // MPI is initialised once per process
  return *c;
}

using namespace moe::dist::testing;

TEST(MpiCommunicator, RankAndSize) {
  EXPECT_EQ(comm().name(), "mpi");
  EXPECT_GE(comm().size(), 1);
  EXPECT_GE(comm().rank(), 0);
  EXPECT_LT(comm().rank(), comm().size());
  std::vector<double> r{double(comm().rank())}, all(size_t(comm().size()));
  comm().all_gather(std::span<const double>(r), std::span<double>(all));
  for (int i = 0; i < comm().size(); ++i) EXPECT_EQ(all[size_t(i)], double(i)) << "every rank is present once";
  comm().barrier();
}

TEST(MpiCommunicator, AllReduceSumInRankOrder) {
  for (size_t n : {size_t(1), size_t(7), size_t(1001), size_t(4096)}) {
    check_all_reduce<float>(comm(), n, 11 + n);
    check_all_reduce<double>(comm(), n, 12 + n);
  }
}

TEST(MpiCommunicator, AllGather) {
  check_all_gather<float>(comm(), 129, 21);
  check_all_gather<double>(comm(), 3, 22);
}

TEST(MpiCommunicator, ReduceScatterSum) {
  check_reduce_scatter<float>(comm(), 65, 31);
  check_reduce_scatter<double>(comm(), 2, 32);
}

TEST(MpiCommunicator, AllToAllVUnevenCountsWithZeros) { check_all_to_all_v(comm()); }
TEST(MpiCommunicator, AllToAllVStartedTwoPendingAtOnce) { check_all_to_all_v(comm(), /*started=*/true); }

TEST(MpiCommunicator, BroadcastFromEveryRoot) { check_broadcast(comm(), 41); }

TEST(MpiCommunicator, SizeMismatchesAreErrorsNamingTheCollective) {
  // Checked before anything is sent, on every rank alike, so no rank is left waiting.
  std::vector<float> a(3), b(5);
  try {
    comm().all_gather(std::span<const float>(a), std::span<float>(b));
    ADD_FAILURE() << "all_gather into the wrong size did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("all_gather"), std::string::npos) << e.what();
  }
  std::vector<size_t> one(1);
  if (comm().size() != 1) {
    EXPECT_THROW(comm().all_to_all_v(a.data(), one, one, b.data(), one, one), Error);
  }
  EXPECT_THROW(comm().broadcast(a.data(), 4, comm().size()), Error);
  comm().barrier();
}

}  // namespace
}  // namespace moe::dist
