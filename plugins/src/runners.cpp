#include "runners.h"

#include <utility>

namespace luvc
{

DeviceConstant::~DeviceConstant()
{
    if (mDevice != nullptr)
    {
        cudaFree(mDevice);
    }
}

void const* DeviceConstant::get(void const* host, size_t bytes, cudaStream_t stream, cudaError_t& status)
{
    if (mDevice == nullptr && bytes > 0)
    {
        status = cudaMalloc(&mDevice, bytes);
        if (status == cudaSuccess)
        {
            status = cudaMemcpyAsync(mDevice, host, bytes, cudaMemcpyHostToDevice, stream);
        }
    }
    return mDevice;
}

OrthoMergeRunner::OrthoMergeRunner(OrthoMergeParams params)
    : mParams(std::move(params))
{
    mWeights = mParams.weightA;
    mWeights.insert(mWeights.end(), mParams.weightB.begin(), mParams.weightB.end());
    mIndices = mParams.indexA;
    mIndices.insert(mIndices.end(), mParams.indexB.begin(), mParams.indexB.end());
}

cudaError_t OrthoMergeRunner::run(
    ElementType type, int64_t const* dims, int32_t rank, void const* x, void* y, cudaStream_t stream)
{
    int64_t outer = 1;
    int64_t inner = 1;
    for (int32_t axis = 0; axis < rank; ++axis)
    {
        if (axis < mParams.axis)
        {
            outer *= dims[axis];
        }
        else if (axis > mParams.axis)
        {
            inner *= dims[axis];
        }
    }
    cudaError_t status = cudaSuccess;
    auto const* weights = static_cast<float const*>(
        mDeviceWeights.get(mWeights.data(), sizeof(float) * mWeights.size(), stream, status));
    auto const* indices = static_cast<int64_t const*>(
        mDeviceIndices.get(mIndices.data(), sizeof(int64_t) * mIndices.size(), stream, status));
    if (status != cudaSuccess)
    {
        return status;
    }
    int64_t const merged = mParams.mergedUnits();
    return launchOrthoMerge(type, x, y, outer, dims[mParams.axis], inner, merged, indices, indices + merged, weights,
        weights + merged, stream);
}

SpectrumPruneRunner::SpectrumPruneRunner(SpectrumPruneParams params)
    : mParams(std::move(params))
{
    mLayout.images = mParams.images();
    mLayout.channelSpectrum = mParams.variant == SpuVariant::kCHANNEL_SPECTRUM ? 1 : 0;
    int64_t visual = 0;
    int64_t kept = 0;
    int64_t basis = 0;
    int64_t rows = 0;
    for (int32_t i = 0; i < mLayout.images; ++i)
    {
        mLayout.spanStart[i] = mParams.spanStarts[i];
        mLayout.spanCount[i] = mParams.spanCounts[i];
        mLayout.budget[i] = mParams.budgets[i];
        mLayout.lowFrequencies[i] = mParams.lowFrequencies[i];
        mLayout.visualOffset[i] = visual;
        mLayout.keptOffset[i] = kept;
        mLayout.basisOffset[i] = basis;
        mLayout.lowpassOffset[i] = rows;
        visual += mParams.spanCounts[i];
        kept += mParams.budgets[i];
        if (!mLayout.channelSpectrum)
        {
            basis += mParams.lowFrequencies[i] * mParams.spanCounts[i];
            rows += mParams.lowFrequencies[i];
        }
    }
    mLayout.visualTokens = visual;
    mLayout.keptTokens = kept;
    mLayout.lowpassRows = rows;
    if (!mLayout.channelSpectrum)
    {
        for (int32_t i = 0; i < mLayout.images; ++i)
        {
            auto const rowsOfImage = dctRows(mParams.spanCounts[i], mParams.lowFrequencies[i]);
            mBasis.insert(mBasis.end(), rowsOfImage.begin(), rowsOfImage.end());
        }
    }
}

cudaError_t SpectrumPruneRunner::run(ElementType type, int64_t batch, int64_t length, int64_t width,
    int64_t ropeWidth, void const* hidden, void const* cos, void const* sin, int64_t const* visualIds,
    void* hiddenOut, void* cosOut, void* sinOut, int64_t* visualIdsOut, void* workspace, cudaStream_t stream)
{
    if (mLayout.channelSpectrum && mBasisWidth != width)
    {
        if (mBasisWidth != -1)
        {
            return cudaErrorInvalidValue; // the hidden width is a constant of the graph
        }
        std::vector<float> sine;
        mFrequencies = width / 2 + 1;
        realDftMatrices(width, mFrequencies, mBasis, sine);
        mBasis.insert(mBasis.end(), sine.begin(), sine.end());
        mBasisWidth = width;
    }
    cudaError_t status = cudaSuccess;
    auto const* basis
        = static_cast<float const*>(mDeviceBasis.get(mBasis.data(), sizeof(float) * mBasis.size(), stream, status));
    if (status != cudaSuccess)
    {
        return status;
    }
    return enqueueSpectrumPrune(type, mLayout, batch, length, width, ropeWidth, hidden, cos, sin, visualIds,
        hiddenOut, cosOut, sinOut, visualIdsOut, basis, mFrequencies, workspace, stream);
}

} // namespace luvc
