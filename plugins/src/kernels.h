// CUDA kernels of the LUVC plugins, launched on a caller's stream. Pointers are device pointers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace luvc
{

enum class ElementType : int32_t
{
    kFLOAT32 = 0,
    kFLOAT16 = 1,
};

//! y[o, m, i] = weightA[m] * x[o, indexA[m], i] + weightB[m] * x[o, indexB[m], i] for x (outer, units, inner) and
//! y (outer, merged, inner); float32 arithmetic, stored in ``type``.
cudaError_t launchOrthoMerge(ElementType type, void const* x, void* y, int64_t outer, int64_t units, int64_t inner,
    int64_t merged, int64_t const* indexA, int64_t const* indexB, float const* weightA, float const* weightB,
    cudaStream_t stream);

//! The static layout of one SpectrumPrune node, passed by value to its kernels.
struct PruneLayout
{
    int32_t images;
    int64_t spanStart[32];
    int64_t spanCount[32];
    int64_t budget[32];
    int64_t lowFrequencies[32];
    int64_t visualOffset[32]; //!< first visual index of each image among the N visual tokens
    int64_t keptOffset[32];   //!< first kept index of each image among the K kept tokens
    int64_t basisOffset[32];  //!< offset of each image's DCT rows in the basis buffer (spectral-residual)
    int64_t lowpassOffset[32]; //!< offset of each image's C·V rows (in rows of width D) in the scratch buffer
    int64_t visualTokens;     //!< N
    int64_t keptTokens;       //!< K
    int64_t lowpassRows;      //!< sum of the DCT rows of every image
    int32_t channelSpectrum;  //!< 0: spectral-residual, 1: channel-spectrum
};

//! Bytes of device scratch ``enqueueSpectrumPrune`` needs for ``batch`` rows of width ``width``.
size_t spectrumPruneWorkspace(PruneLayout const& layout, int64_t batch, int64_t width);

//! One SpectrumPrune node: float32 scores, top-budget selection per image (ties: lower index first) in ascending
//! order, then the gathers of hidden (B, S, D), cos and sin (B, S, R) into S - (N - K) positions and of
//! visualIds (B, N) into (B, K). ``basis``: the DCT rows of every image (spectral-residual) or the cosine and sine
//! DFT matrices one after the other (channel-spectrum, D x F each).
cudaError_t enqueueSpectrumPrune(ElementType type, PruneLayout const& layout, int64_t batch, int64_t length,
    int64_t width, int64_t ropeWidth, void const* hidden, void const* cos, void const* sin, int64_t const* visualIds,
    void* hiddenOut, void* cosOut, void* sinOut, int64_t* visualIdsOut, float const* basis, int64_t frequencies,
    void* workspace, cudaStream_t stream);

} // namespace luvc
