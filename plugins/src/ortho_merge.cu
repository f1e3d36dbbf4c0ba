#include "kernels.h"

#include <cuda_fp16.h>

#include <algorithm>

namespace luvc
{
namespace
{
__device__ inline float load(float const* p, int64_t i) { return p[i]; }
__device__ inline float load(__half const* p, int64_t i) { return __half2float(p[i]); }
__device__ inline void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ inline void store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }

template <typename T>
__global__ void orthoMergeKernel(T const* x, T* y, int64_t units, int64_t inner, int64_t merged,
    int64_t const* indexA, int64_t const* indexB, float const* weightA, float const* weightB, int64_t total)
{
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x)
    {
        int64_t const i = idx % inner;
        int64_t const m = (idx / inner) % merged;
        int64_t const o = idx / (inner * merged);
        int64_t const base = o * units * inner + i;
        // no fused multiply-add: the products and the sum round as PyTorch's mul, mul, add do
        float const first = __fmul_rn(weightA[m], load(x, base + indexA[m] * inner));
        float const second = __fmul_rn(weightB[m], load(x, base + indexB[m] * inner));
        store(y, idx, __fadd_rn(first, second));
    }
}
} // namespace

cudaError_t launchOrthoMerge(ElementType type, void const* x, void* y, int64_t outer, int64_t units, int64_t inner,
    int64_t merged, int64_t const* indexA, int64_t const* indexB, float const* weightA, float const* weightB,
    cudaStream_t stream)
{
    int64_t const total = outer * merged * inner;
    if (total == 0)
    {
        return cudaSuccess;
    }
    int const threads = 256;
    int const blocks = static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, 65535));
    if (type == ElementType::kFLOAT32)
    {
        orthoMergeKernel<float><<<blocks, threads, 0, stream>>>(static_cast<float const*>(x), static_cast<float*>(y),
            units, inner, merged, indexA, indexB, weightA, weightB, total);
    }
    else
    {
        orthoMergeKernel<__half><<<blocks, threads, 0, stream>>>(static_cast<__half const*>(x),
            static_cast<__half*>(y), units, inner, merged, indexA, indexB, weightA, weightB, total);
    }
    return cudaGetLastError();
}

} // namespace luvc
