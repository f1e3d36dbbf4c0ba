// Runners: a node's parameters with their device-resident constants (merge indices and weights, spectral bases),
// uploaded on first use, and the kernel launches. Shared by the TensorRT plugins and the test harness (c_api.cpp).
#pragma once

#include "kernels.h"
#include "params.h"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace luvc
{

//! A device allocation holding a copy of host bytes, made on first use.
class DeviceConstant
{
public:
    DeviceConstant() = default;
    DeviceConstant(DeviceConstant const&) = delete;
    DeviceConstant& operator=(DeviceConstant const&) = delete;
    ~DeviceConstant();
    //! The device copy of ``bytes`` bytes at ``host`` (copied on ``stream`` the first time).
    void const* get(void const* host, size_t bytes, cudaStream_t stream, cudaError_t& status);

private:
    void* mDevice{nullptr};
};

class OrthoMergeRunner
{
public:
    explicit OrthoMergeRunner(OrthoMergeParams params);
    OrthoMergeParams const& params() const { return mParams; }
    //! x: ``dims`` (rank ``rank``), y: the same with ``mergedUnits()`` on the params' axis.
    cudaError_t run(ElementType type, int64_t const* dims, int32_t rank, void const* x, void* y, cudaStream_t stream);

private:
    OrthoMergeParams mParams;
    std::vector<float> mWeights; // weight_a then weight_b
    std::vector<int64_t> mIndices; // index_a then index_b
    DeviceConstant mDeviceWeights;
    DeviceConstant mDeviceIndices;
};

class SpectrumPruneRunner
{
public:
    explicit SpectrumPruneRunner(SpectrumPruneParams params);
    SpectrumPruneParams const& params() const { return mParams; }
    PruneLayout const& layout() const { return mLayout; }
    size_t workspace(int64_t batch, int64_t width) const { return spectrumPruneWorkspace(mLayout, batch, width); }
    //! hidden (batch, length, width), cos/sin (batch, length, ropeWidth), visualIds (batch, N) -> outputs.
    cudaError_t run(ElementType type, int64_t batch, int64_t length, int64_t width, int64_t ropeWidth,
        void const* hidden, void const* cos, void const* sin, int64_t const* visualIds, void* hiddenOut, void* cosOut,
        void* sinOut, int64_t* visualIdsOut, void* workspace, cudaStream_t stream);

private:
    SpectrumPruneParams mParams;
    PruneLayout mLayout{};
    std::vector<float> mBasis; // DCT rows per image, or the DFT cosine then sine (made for the first width seen)
    int64_t mBasisWidth{-1};
    int64_t mFrequencies{0};
    DeviceConstant mDeviceBasis;
};

} // namespace luvc
