// The CPU backend's chained-draft ops (kept_rows, chain_batch, index_rows) against their definitions, and
// their argument checks.
#include <gtest/gtest.h>

#include "backend/spec_chain_cases.h"

namespace moe {
namespace {

TEST(CpuSpecChain, OpsMatchTheirDefinitions) {
  auto cpu = make_cpu_backend();
  for (uint32_t seed : {1u, 2u, 3u}) test::check_chain_ops(*cpu, seed);
}

TEST(CpuSpecChain, BadArgumentsAreRefused) {
  auto cpu = make_cpu_backend();
  Tensor t = cpu->alloc(DType::I32, {6}), v = cpu->alloc(DType::I32, {6}), rows = cpu->alloc(DType::I32, {4});
  EXPECT_THROW(cpu->kept_rows(t, v, rows), Error);  // 6 rows are not 4 sequences of equal length
  Tensor f = cpu->alloc(DType::F32, {6});
  EXPECT_THROW(cpu->kept_rows(t, f, cpu->alloc(DType::I32, {3})), Error);  // verified must be I32
  Tensor x = cpu->alloc(DType::F32, {6, 3}), out = cpu->alloc(DType::F32, {2, 4});
  Tensor ids = cpu->alloc(DType::I32, {2});
  ids.as<int32_t>()[0] = 1;
  ids.as<int32_t>()[1] = 5;
  EXPECT_THROW(cpu->index_rows(x, ids, out), Error);  // rows of 3 into rows of 4
  Tensor out2 = cpu->alloc(DType::F32, {2, 3});
  ids.as<int32_t>()[1] = 6;
  EXPECT_THROW(cpu->index_rows(x, ids, out2), Error);  // row 6 of 6
  Tensor half = cpu->alloc(DType::BF16, {6, 3}), half_out = cpu->alloc(DType::BF16, {2, 3});
  EXPECT_THROW(cpu->index_rows(half, ids, half_out), Error);  // 2-byte rows
}

}  // namespace
}  // namespace moe
