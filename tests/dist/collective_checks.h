#pragma once
// Checks of every collective against values computed locally: each rank's inputs are a function of (rank,
// index, seed), so every rank can compute what every other rank sent and the expected result. Inputs are random
// (never zeros); all_to_all_v counts are uneven and include 0. Shared by the MPI test (any number of ranks) and
// the one-rank tests. EXPECTs, never ASSERTs, between collectives: a rank that returned early would hang the
// others in the next collective.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "dist/communicator.h"

namespace moe::dist::testing {

// The value rank r holds at index i for a test seeded `seed`: uniform in [-1, 1), never 0.
inline double input(int r, size_t i, uint64_t seed) {
  std::mt19937_64 g(seed * 1000003u + uint64_t(r) * 7919u + i);
  const double v = std::uniform_real_distribution<double>(-1.0, 1.0)(g);
  return v == 0 ? 0.5 : v;
}

// Bytes rank r sends to rank p in the all_to_all_v test: (r + 2p) % 3 * 13 + (r == p), so some pairs send 0.
inline size_t a2a_count(int r, int p) { return size_t((r + 2 * p) % 3) * 13 + (r == p ? 1 : 0); }
inline uint8_t a2a_byte(int r, int p, size_t i) { return uint8_t(31 * r + 17 * p + 7 * i + 1); }

template <typename T>
void check_all_reduce(Communicator& c, size_t n, uint64_t seed) {
  std::vector<T> data(n);
  for (size_t i = 0; i < n; ++i) data[i] = T(input(c.rank(), i, seed));
  c.all_reduce_sum(std::span<T>(data));
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) {
    double want = 0;  // rank order, in double: the implementation's documented order, so the bits agree
    for (int r = 0; r < c.size(); ++r) want += double(T(input(r, i, seed)));
    wrong += data[i] != T(want);
  }
  EXPECT_EQ(wrong, 0u) << "all_reduce_sum of " << n << " values over " << c.size() << " ranks";
}

template <typename T>
void check_all_gather(Communicator& c, size_t n, uint64_t seed) {
  std::vector<T> mine(n), all(n * size_t(c.size()), T(-7));
  for (size_t i = 0; i < n; ++i) mine[i] = T(input(c.rank(), i, seed));
  c.all_gather(std::span<const T>(mine), std::span<T>(all));
  size_t wrong = 0;
  for (int r = 0; r < c.size(); ++r)
    for (size_t i = 0; i < n; ++i) wrong += all[size_t(r) * n + i] != T(input(r, i, seed));
  EXPECT_EQ(wrong, 0u) << "all_gather of " << n << " values per rank";
}

template <typename T>
void check_reduce_scatter(Communicator& c, size_t n, uint64_t seed) {
  const size_t N = size_t(c.size());
  std::vector<T> send(n * N), recv(n, T(-7));
  for (size_t i = 0; i < n * N; ++i) send[i] = T(input(c.rank(), i, seed));
  c.reduce_scatter_sum(std::span<const T>(send), std::span<T>(recv));
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) {
    double want = 0;
    for (int r = 0; r < c.size(); ++r) want += double(T(input(r, size_t(c.rank()) * n + i, seed)));
    wrong += recv[i] != T(want);
  }
  EXPECT_EQ(wrong, 0u) << "reduce_scatter_sum into blocks of " << n;
}

// Displacements leave a gap of 5 bytes between peers' segments (checks that displacements are honoured).
// `started`: through all_to_all_v_start, with a second exchange (the same pattern, reversed bytes) started after
// it and a blocking broadcast while both are pending; the handles are waited for in reverse order.
inline void check_all_to_all_v(Communicator& c, bool started = false) {
  const int N = c.size(), me = c.rank();
  const size_t n = size_t(N);
  std::vector<size_t> sc(n), sd(n), rc(n), rd(n);
  size_t so = 3, ro = 2;
  for (int p = 0; p < N; ++p) {
    sc[size_t(p)] = a2a_count(me, p), sd[size_t(p)] = so, so += sc[size_t(p)] + 5;
    rc[size_t(p)] = a2a_count(p, me), rd[size_t(p)] = ro, ro += rc[size_t(p)] + 5;
  }
  std::vector<uint8_t> send(so, 0xEE), recv(ro, 0xEE);
  for (int p = 0; p < N; ++p)
    for (size_t i = 0; i < sc[size_t(p)]; ++i) send[sd[size_t(p)] + i] = a2a_byte(me, p, i);
  std::vector<uint8_t> send2(send.rbegin(), send.rend()), recv2(ro, 0xEE);
  if (started) {
    // send2 is send reversed: peer p's segment starts at so - sd[p] - sc[p] there.
    std::vector<size_t> sd2(n);
    for (size_t p = 0; p < n; ++p) sd2[p] = so - sd[p] - sc[p];
    auto first = c.all_to_all_v_start(send.data(), sc, sd, recv.data(), rc, rd);
    auto second = c.all_to_all_v_start(send2.data(), sc, sd2, recv2.data(), rc, rd);
    int64_t token = me == 0 ? 4242 : -1;
    c.broadcast(&token, sizeof token, 0);
    EXPECT_EQ(token, 4242);
    second->wait();
    first->wait();
    for (int p = 0; p < N; ++p)  // the second exchange's segments hold the reversed bytes
      for (size_t i = 0; i < rc[size_t(p)]; ++i)
        EXPECT_EQ(recv2[rd[size_t(p)] + i], a2a_byte(p, me, rc[size_t(p)] - 1 - i)) << "from rank " << p;
  } else {
    c.all_to_all_v(send.data(), sc, sd, recv.data(), rc, rd);
  }
  size_t wrong = 0, gap_touched = 0, received = 0;
  std::vector<bool> in_segment(recv.size(), false);
  for (int p = 0; p < N; ++p)
    for (size_t i = 0; i < rc[size_t(p)]; ++i) {
      wrong += recv[rd[size_t(p)] + i] != a2a_byte(p, me, i);
      in_segment[rd[size_t(p)] + i] = true;
      ++received;
    }
  for (size_t i = 0; i < recv.size(); ++i) gap_touched += !in_segment[i] && recv[i] != 0xEE;
  EXPECT_EQ(wrong, 0u) << "all_to_all_v bytes received by rank " << me;
  EXPECT_EQ(gap_touched, 0u) << "all_to_all_v wrote outside the segments its displacements name";
  EXPECT_GT(received, 0u);
}

inline void check_broadcast(Communicator& c, uint64_t seed) {
  for (int root = 0; root < c.size(); ++root) {
    std::vector<double> data(37);
    for (size_t i = 0; i < data.size(); ++i) data[i] = input(c.rank(), i, seed + uint64_t(root));
    c.broadcast(data.data(), data.size() * sizeof(double), root);
    size_t wrong = 0;
    for (size_t i = 0; i < data.size(); ++i) wrong += data[i] != input(root, i, seed + uint64_t(root));
    EXPECT_EQ(wrong, 0u) << "broadcast from rank " << root;
  }
}

}  // namespace moe::dist::testing
