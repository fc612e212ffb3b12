// The routed experts' down GEMV over moe_route's ids (tile 1: one assignment per pass, no plan) with the
// weighted combine after it in the same launch (moe_experts under CudaOptions::moe_decode_fusion):
//   y [T * k, D] = h[a] . W_down[ids[a]]^T       block (x, a): rows x*16 .. x*16+15 of assignment a's row
//   out [T, D] = plus + sum_j w[t, j] * y[t * k + j]
// The GEMV is the kernels the unfused launch runs (gemv.cuh's CUDA-core pass, two rows a warp, for BF16 /
// F16; for FP8 gemv_mma_block, or gemv_mma.cuh's per-warp tiles, 64 rows a column, where warp_tiles_pay), so
// the same y.
// The blocks of one column of the grid (the same output rows, one block per assignment) count themselves done
// on that column's device counter; the last one sums those rows of out for every token in moe_combine's order
// of fmaf (the same bits) and sets the counter back to 0 (graph replays start from 0). One launch instead of
// two, and the columns' sums run in parallel.
#include "backend/cuda/gemv.cuh"

namespace moe::cuda {

namespace {

constexpr int kColRows = 16;  // output rows per block: the CUDA-core kernel's 8 warps x 2, the MMA block's 16
static_assert(kColRows == gemv_detail::kRowsPerBlock && kColRows == gemv_detail::kMmaRows);

template <DType WT>
__global__ void __launch_bounds__(256) gemv_combine_kernel(GemvParams p, GemvCombine c) {
  constexpr int R = gemv_detail::kRowsPerWarp;
  const int warp = int(threadIdx.x) / 32;
  const int64_t n0 = (int64_t(blockIdx.x) * gemv_detail::kWarps + warp) * R;
  pdl_trigger();
  pdl_wait();  // the ids (moe_route) and h (the gate / up GEMV) come from earlier kernels
  const gemv_detail::WorkItem w = gemv_detail::work_item(p);
  if (n0 < p.N && w.count > 0) {
    const char* wbase[2] = {static_cast<const char*>(p.table[w.e * 6 + p.matrix]), nullptr};
    const float* sbase[2] = {static_cast<const float*>(p.table[w.e * 6 + 3 + p.matrix]), nullptr};
    const int a = gemv_detail::assignment(p, w, 0);
    const float* xrows[1] = {p.x + int64_t(a / p.x_row_div) * p.x_stride};
    float* orows[1] = {p.out + int64_t(a) * p.out_stride};
    gemv_detail::gemv_pass<WT, 1, false, R, 8>(p, p.N, wbase, sbase, 0, n0, xrows, orows, 1);
  }
  gemv_detail::combine_tail(p, c, kColRows);
}

__global__ void __launch_bounds__(256) gemv_mma_combine_kernel(GemvParams p, GemvCombine c) {
  gemv_detail::gemv_mma_block<DType::F8_E4M3, false>(p);
  gemv_detail::combine_tail(p, c, kColRows);
}

// The per-warp tiles (gemv_mma.cuh): columns of kWarpTiles x 16 rows.
constexpr int kWarpTiles = gemv_detail::kWarpTiles;
__global__ void __launch_bounds__(kWarpTiles * 32) gemv_mma_warp_combine_kernel(GemvParams p, GemvCombine c) {
  gemv_detail::gemv_mma_warp_tiles<DType::F8_E4M3, false, kWarpTiles, gemv_detail::warp_tile_unroll<false>()>(
      p);
  gemv_detail::combine_tail(p, c, kWarpTiles * gemv_detail::kMmaRows);
}

}  // namespace

bool gemv_combine(const GemvParams& p, const GemvCombine& c, cudaStream_t s) {
  // Grouped over ids, no SwiGLU, rows of y packed (out_stride N), k assignments per token, at most
  // kGemvCombineColumns columns of 16 rows.
  if (!p.ids || p.items || p.swiglu || p.out_stride != p.N || c.k <= 0 || p.grid_y % c.k != 0 ||
      (p.N + kColRows - 1) / kColRows > kGemvCombineColumns)
    return false;
  const dim3 grid(unsigned((p.N + kColRows - 1) / kColRows), unsigned(p.grid_y));
  switch (p.wdtype) {
    case DType::BF16:
      launch("gemv_combine", gemv_combine_kernel<DType::BF16>, grid, 256, 0, s, p, c);
      break;
    case DType::F16:
      launch("gemv_combine", gemv_combine_kernel<DType::F16>, grid, 256, 0, s, p, c);
      break;
    case DType::F8_E4M3:
      if (!gemv_detail::mma_gemv_ok<DType::F8_E4M3>(p, 1)) return false;
      if (gemv_detail::warp_tiles_pay(p, 1))
        launch("gemv_combine", gemv_mma_warp_combine_kernel, dim3(gemv_detail::warp_tile_blocks(p.N), grid.y),
               kWarpTiles * 32, 0, s, p, c);
      else
        launch("gemv_combine", gemv_mma_combine_kernel, grid, 256, 0, s, p, c);
      break;
    default:
      return false;
  }
  return true;
}

}  // namespace moe::cuda
