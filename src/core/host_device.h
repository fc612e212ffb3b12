#pragma once
// MOE_HOST_DEVICE marks an inline function that both host code and CUDA kernels call (compiled by nvcc for
// both sides, by the host compiler as a plain inline): one definition where the two must agree bit for bit.
#ifdef __CUDACC__
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif
