// SingleCommunicator (the same collective checks as the MPI test, with one rank) and the TCP rendezvous that
// bootstraps NCCL without mpirun (ranks as threads on loopback).
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <functional>
#include <thread>

#include "collective_checks.h"
#include "core/error.h"
#include "dist/tcp_rendezvous.h"

namespace moe::dist {
namespace {

using namespace moe::dist::testing;

TEST(SingleCommunicator, EveryCollectiveWithOneRank) {
  SingleCommunicator c;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  check_all_reduce<float>(c, 17, 1);
  check_all_reduce<double>(c, 17, 2);
  check_all_gather<float>(c, 9, 3);
  check_reduce_scatter<double>(c, 9, 4);
  check_all_to_all_v(c);
  check_all_to_all_v(c, /*started=*/true);
  check_broadcast(c, 5);
  c.barrier();
  EXPECT_EQ(c.stream(), nullptr);
}

TEST(SingleCommunicator, MismatchedSizesAreErrors) {
  SingleCommunicator c;
  std::vector<float> a(3), b(4);
  EXPECT_THROW(c.all_gather(std::span<const float>(a), std::span<float>(b)), Error);
  EXPECT_THROW(c.reduce_scatter_sum(std::span<const float>(a), std::span<float>(b)), Error);
  std::vector<size_t> three{3}, four{4}, zero{0};
  EXPECT_THROW(c.all_to_all_v(a.data(), three, zero, b.data(), four, zero), Error);
  EXPECT_THROW(c.broadcast(a.data(), 4, 1), Error);
}

TEST(MpiBuild, ReportsWhetherMpiIsThere) {
  if (!have_mpi()) {
    EXPECT_THROW(make_mpi_communicator(), Error);
    GTEST_SKIP() << "this build has no MPI: the mpirun tests (dist_mpi_*) are not registered";
  }
  SUCCEED();
}

// A free loopback port: bind to 0 and read it back is racy across processes, so pick from the pid.
int test_port(int offset) { return 20000 + int(::getpid() % 20000) + offset; }

TEST(TcpRendezvous, RankZeroSharesTheBlobWithEveryRank) {
  const int size = 4, port = test_port(0);
  const std::vector<uint8_t> blob = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 42};
  std::vector<std::vector<uint8_t>> got(4);
  std::vector<std::string> errors(4);
  std::vector<std::thread> ranks;
  for (int r = 0; r < size; ++r)
    ranks.emplace_back([&, r] {
      try {
        Rendezvous rv{"127.0.0.1", port, r, size, 20};
        got[size_t(r)] = rendezvous_share(rv, r == 0 ? blob : std::vector<uint8_t>{});
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();
      }
    });
  for (auto& t : ranks) t.join();
  for (int r = 0; r < size; ++r) {
    EXPECT_EQ(errors[size_t(r)], "") << "rank " << r;
    EXPECT_EQ(got[size_t(r)], blob) << "rank " << r;
  }
}

TEST(TcpRendezvous, ErrorsNameWhatWentWrong) {
  auto message = [](const Rendezvous& r) {
    try {
      rendezvous_share(r, {1});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({"127.0.0.1", 29500, 3, 2, 1}).find("rank 3 of 2"), std::string::npos);
  EXPECT_NE(message({"127.0.0.1", 70000, 0, 2, 1}).find("port 70000"), std::string::npos);
  // Nobody listens: the joining rank gives up after its timeout, naming where it looked.
  const std::string late = message({"127.0.0.1", test_port(1), 1, 2, 1});
  EXPECT_NE(late.find("could not reach rank 0 at 127.0.0.1"), std::string::npos) << late;
  // Nobody joins: rank 0 times out, saying how many ranks came.
  const std::string lonely = message({"127.0.0.1", test_port(2), 0, 2, 1});
  EXPECT_NE(lonely.find("1 of 2 ranks joined"), std::string::npos) << lonely;
  EXPECT_NE(message({"no-such-host.invalid", 29500, 1, 2, 1}).find("does not resolve"), std::string::npos);
}

TEST(TcpRendezvous, TwoPeersClaimingOneRankIsAnError) {
  const int port = test_port(3);
  std::string err0, err1, err2;
  std::thread r0([&] {
    try {
      rendezvous_share({"127.0.0.1", port, 0, 3, 10}, {5});
    } catch (const Error& e) {
      err0 = e.what();
    }
  });
  auto peer = [&](std::string* err) {
    try {
      rendezvous_share({"127.0.0.1", port, 1, 3, 3}, {});
    } catch (const Error& e) {
      *err = e.what();
    }
  };
  std::thread r1(peer, &err1), r2(peer, &err2);
  r0.join(), r1.join(), r2.join();
  EXPECT_NE(err0.find("two peers claim rank 1"), std::string::npos) << err0;
}

}  // namespace
}  // namespace moe::dist

namespace moe::dist {
namespace {

std::string parse_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(TcpRendezvous, MessagesFromTheNetworkAreChecked) {
  uint8_t hello[8] = {'M', 'O', 'E', '1', 0, 0, 0, 0};
  const int32_t three = 3;
  std::memcpy(hello + 4, &three, 4);
  EXPECT_EQ(parse_hello(hello, 8, 4), 3);
  EXPECT_NE(parse_error([&] { parse_hello(hello, 8, 3); }).find("claims rank 3 of 3"), std::string::npos);
  EXPECT_NE(parse_error([&] { parse_hello(hello, 7, 4); }).find("not a moe rank"), std::string::npos);
  hello[0] = 'X';
  EXPECT_NE(parse_error([&] { parse_hello(hello, 8, 4); }).find("not a moe rank"), std::string::npos);
  const uint32_t ok = 128, big = (1u << 20) + 1;
  EXPECT_EQ(parse_blob_length(reinterpret_cast<const uint8_t*>(&ok), 4), 128u);
  EXPECT_NE(parse_error([&] { parse_blob_length(reinterpret_cast<const uint8_t*>(&big), 4); }).find("1048577 bytes"),
            std::string::npos);
  EXPECT_NE(parse_error([&] { parse_blob_length(reinterpret_cast<const uint8_t*>(&ok), 3); }).find("3 bytes, not 4"),
            std::string::npos);
}

}  // namespace
}  // namespace moe::dist
