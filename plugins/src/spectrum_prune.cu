#include "kernels.h"

#include <cfloat>
#include <cuda_fp16.h>

namespace luvc
{
namespace
{
constexpr int kThreads = 256;

__device__ inline float load(float const* p, int64_t i) { return p[i]; }
__device__ inline float load(__half const* p, int64_t i) { return __half2float(p[i]); }

__device__ inline int32_t imageOfVisual(PruneLayout const& layout, int64_t visual)
{
    int32_t image = 0;
    while (image + 1 < layout.images && layout.visualOffset[image + 1] <= visual)
    {
        ++image;
    }
    return image;
}

__device__ inline float blockSum(float value, float* shared)
{
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2)
    {
        if (threadIdx.x < stride)
        {
            shared[threadIdx.x] += shared[threadIdx.x + stride];
        }
        __syncthreads();
    }
    float const total = shared[0];
    __syncthreads();
    return total;
}

//! lowpass[b, row, d] = sum_i C_image[k, i] * hidden[b, start + i, d] (row = lowpassOffset[image] + k)
template <typename T>
__global__ void lowpassProjection(PruneLayout layout, T const* hidden, float const* basis, float* lowpass,
    int64_t length, int64_t width)
{
    int64_t const d = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    int64_t const row = blockIdx.y;
    int64_t const b = blockIdx.z;
    if (d >= width)
    {
        return;
    }
    int32_t image = 0;
    while (image + 1 < layout.images && layout.lowpassOffset[image + 1] <= row)
    {
        ++image;
    }
    int64_t const k = row - layout.lowpassOffset[image];
    int64_t const n = layout.spanCount[image];
    float const* rowBasis = basis + layout.basisOffset[image] + k * n;
    T const* tokens = hidden + (b * length + layout.spanStart[image]) * width + d;
    float sum = 0.F;
    for (int64_t i = 0; i < n; ++i)
    {
        sum += rowBasis[i] * load(tokens, i * width);
    }
    lowpass[(b * layout.lowpassRows + row) * width + d] = sum;
}

//! scores[b, t] = || V_t - (C^T C V)_t ||^2 over the hidden width (one block per visual token and row)
template <typename T>
__global__ void spectralResidualScores(PruneLayout layout, T const* hidden, float const* basis,
    float const* lowpass, float* scores, int64_t length, int64_t width)
{
    __shared__ float shared[kThreads];
    int64_t const t = blockIdx.x;
    int64_t const b = blockIdx.y;
    int32_t const image = imageOfVisual(layout, t);
    int64_t const i = t - layout.visualOffset[image];
    int64_t const n = layout.spanCount[image];
    int64_t const rows = layout.lowFrequencies[image];
    float const* imageBasis = basis + layout.basisOffset[image];
    float const* imageLowpass = lowpass + (b * layout.lowpassRows + layout.lowpassOffset[image]) * width;
    T const* token = hidden + (b * length + layout.spanStart[image] + i) * width;
    float partial = 0.F;
    for (int64_t d = threadIdx.x; d < width; d += blockDim.x)
    {
        float smooth = 0.F;
        for (int64_t k = 0; k < rows; ++k)
        {
            smooth += imageBasis[k * n + i] * imageLowpass[k * width + d];
        }
        float const residual = load(token, d) - smooth;
        partial += residual * residual;
    }
    float const total = blockSum(partial, shared);
    if (threadIdx.x == 0)
    {
        scores[b * layout.visualTokens + t] = total;
    }
}

//! scores[b, t] = share of the token's channel-spectrum energy in its lowest frequencies
template <typename T>
__global__ void channelSpectrumScores(PruneLayout layout, T const* hidden, float const* cosine, float const* sine,
    float* scores, int64_t length, int64_t width, int64_t frequencies)
{
    extern __shared__ float token[];
    __shared__ float shared[kThreads];
    int64_t const t = blockIdx.x;
    int64_t const b = blockIdx.y;
    int32_t const image = imageOfVisual(layout, t);
    T const* source = hidden + (b * length + layout.spanStart[image] + t - layout.visualOffset[image]) * width;
    for (int64_t d = threadIdx.x; d < width; d += blockDim.x)
    {
        token[d] = load(source, d);
    }
    __syncthreads();
    float low = 0.F;
    float all = 0.F;
    for (int64_t f = threadIdx.x; f < frequencies; f += blockDim.x)
    {
        float real = 0.F;
        float imaginary = 0.F;
        for (int64_t d = 0; d < width; ++d)
        {
            real += token[d] * cosine[d * frequencies + f];
            imaginary += token[d] * sine[d * frequencies + f];
        }
        float const energy = real * real + imaginary * imaginary;
        all += energy;
        low += f < layout.lowFrequencies[image] ? energy : 0.F;
    }
    float const lowTotal = blockSum(low, shared);
    float const allTotal = blockSum(all, shared);
    if (threadIdx.x == 0)
    {
        scores[b * layout.visualTokens + t] = lowTotal / fmaxf(allTotal, FLT_MIN);
    }
}

//! keptLocal[b, keptOffset + q]: the image's kept token indices, ascending (one block per image and row)
__global__ void selectKept(
    PruneLayout layout, float const* scores, int32_t* kept, int32_t* keptLocal)
{
    int32_t const image = blockIdx.x;
    int64_t const b = blockIdx.y;
    int64_t const n = layout.spanCount[image];
    int64_t const budget = layout.budget[image];
    float const* imageScores = scores + b * layout.visualTokens + layout.visualOffset[image];
    int32_t* imageKept = kept + b * layout.visualTokens + layout.visualOffset[image];
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    {
        float const score = imageScores[i];
        int64_t rank = 0;
        for (int64_t t = 0; t < n && rank < budget; ++t)
        {
            float const other = imageScores[t];
            rank += (other > score || (other == score && t < i)) ? 1 : 0;
        }
        imageKept[i] = rank < budget ? 1 : 0;
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    {
        if (imageKept[i])
        {
            int64_t position = 0;
            for (int64_t t = 0; t < i; ++t)
            {
                position += imageKept[t];
            }
            keptLocal[b * layout.keptTokens + layout.keptOffset[image] + position] = static_cast<int32_t>(i);
        }
    }
}

//! The source sequence index of output position p (text keeps its order, each image its kept tokens).
__device__ inline int64_t sourceIndex(PruneLayout const& layout, int32_t const* keptLocal, int64_t b, int64_t p)
{
    int64_t removed = 0;
    for (int32_t image = 0; image < layout.images; ++image)
    {
        int64_t const start = layout.spanStart[image] - removed;
        if (p < start)
        {
            return p + removed;
        }
        if (p < start + layout.budget[image])
        {
            return layout.spanStart[image] + keptLocal[b * layout.keptTokens + layout.keptOffset[image] + p - start];
        }
        removed += layout.spanCount[image] - layout.budget[image];
    }
    return p + removed;
}

template <typename T>
__global__ void gatherSequence(PruneLayout layout, int32_t const* keptLocal, T const* hidden, T const* cos,
    T const* sin, T* hiddenOut, T* cosOut, T* sinOut, int64_t length, int64_t outLength, int64_t width,
    int64_t ropeWidth)
{
    int64_t const p = blockIdx.x;
    int64_t const b = blockIdx.y;
    int64_t const source = b * length + sourceIndex(layout, keptLocal, b, p);
    int64_t const target = b * outLength + p;
    for (int64_t d = threadIdx.x; d < width; d += blockDim.x)
    {
        hiddenOut[target * width + d] = hidden[source * width + d];
    }
    for (int64_t d = threadIdx.x; d < ropeWidth; d += blockDim.x)
    {
        cosOut[target * ropeWidth + d] = cos[source * ropeWidth + d];
        sinOut[target * ropeWidth + d] = sin[source * ropeWidth + d];
    }
}

__global__ void gatherVisualIds(
    PruneLayout layout, int32_t const* keptLocal, int64_t const* visualIds, int64_t* visualIdsOut, int64_t batch)
{
    int64_t const index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (index >= batch * layout.keptTokens)
    {
        return;
    }
    int64_t const b = index / layout.keptTokens;
    int64_t const q = index % layout.keptTokens;
    int32_t image = 0;
    while (image + 1 < layout.images && layout.keptOffset[image + 1] <= q)
    {
        ++image;
    }
    visualIdsOut[index] = visualIds[b * layout.visualTokens + layout.visualOffset[image] + keptLocal[index]];
}

size_t aligned(size_t bytes)
{
    return (bytes + 255) / 256 * 256;
}

template <typename T>
cudaError_t enqueueTyped(PruneLayout const& layout, int64_t batch, int64_t length, int64_t width, int64_t ropeWidth,
    T const* hidden, T const* cos, T const* sin, int64_t const* visualIds, T* hiddenOut, T* cosOut, T* sinOut,
    int64_t* visualIdsOut, float const* basis, int64_t frequencies, void* workspace, cudaStream_t stream)
{
    auto* cursor = static_cast<char*>(workspace);
    auto* scores = reinterpret_cast<float*>(cursor);
    cursor += aligned(sizeof(float) * batch * layout.visualTokens);
    auto* kept = reinterpret_cast<int32_t*>(cursor);
    cursor += aligned(sizeof(int32_t) * batch * layout.visualTokens);
    auto* keptLocal = reinterpret_cast<int32_t*>(cursor);
    cursor += aligned(sizeof(int32_t) * batch * layout.keptTokens);
    auto* lowpass = reinterpret_cast<float*>(cursor);

    if (batch == 0)
    {
        return cudaSuccess;
    }
    if (layout.keptTokens > 0)
    {
        dim3 const tokens(static_cast<unsigned>(layout.visualTokens), static_cast<unsigned>(batch));
        if (layout.channelSpectrum)
        {
            size_t const shared = sizeof(float) * width;
            channelSpectrumScores<T><<<tokens, kThreads, shared, stream>>>(layout, hidden, basis,
                basis + width * frequencies, scores, length, width, frequencies);
        }
        else
        {
            dim3 const rows(static_cast<unsigned>((width + kThreads - 1) / kThreads),
                static_cast<unsigned>(layout.lowpassRows), static_cast<unsigned>(batch));
            lowpassProjection<T><<<rows, kThreads, 0, stream>>>(layout, hidden, basis, lowpass, length, width);
            spectralResidualScores<T>
                <<<tokens, kThreads, 0, stream>>>(layout, hidden, basis, lowpass, scores, length, width);
        }
        dim3 const images(static_cast<unsigned>(layout.images), static_cast<unsigned>(batch));
        selectKept<<<images, kThreads, 0, stream>>>(layout, scores, kept, keptLocal);
        int64_t const ids = batch * layout.keptTokens;
        gatherVisualIds<<<static_cast<unsigned>((ids + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
            layout, keptLocal, visualIds, visualIdsOut, batch);
    }
    int64_t const outLength = length - (layout.visualTokens - layout.keptTokens);
    if (outLength > 0)
    {
        dim3 const positions(static_cast<unsigned>(outLength), static_cast<unsigned>(batch));
        gatherSequence<T><<<positions, kThreads, 0, stream>>>(
            layout, keptLocal, hidden, cos, sin, hiddenOut, cosOut, sinOut, length, outLength, width, ropeWidth);
    }
    return cudaGetLastError();
}
} // namespace

size_t spectrumPruneWorkspace(PruneLayout const& layout, int64_t batch, int64_t width)
{
    size_t bytes = aligned(sizeof(float) * batch * layout.visualTokens);
    bytes += aligned(sizeof(int32_t) * batch * layout.visualTokens);
    bytes += aligned(sizeof(int32_t) * batch * layout.keptTokens);
    if (!layout.channelSpectrum)
    {
        bytes += aligned(sizeof(float) * batch * layout.lowpassRows * width);
    }
    return bytes;
}

cudaError_t enqueueSpectrumPrune(ElementType type, PruneLayout const& layout, int64_t batch, int64_t length,
    int64_t width, int64_t ropeWidth, void const* hidden, void const* cos, void const* sin, int64_t const* visualIds,
    void* hiddenOut, void* cosOut, void* sinOut, int64_t* visualIdsOut, float const* basis, int64_t frequencies,
    void* workspace, cudaStream_t stream)
{
    if (type == ElementType::kFLOAT32)
    {
        return enqueueTyped<float>(layout, batch, length, width, ropeWidth, static_cast<float const*>(hidden),
            static_cast<float const*>(cos), static_cast<float const*>(sin), visualIds, static_cast<float*>(hiddenOut),
            static_cast<float*>(cosOut), static_cast<float*>(sinOut), visualIdsOut, basis, frequencies, workspace,
            stream);
    }
    return enqueueTyped<__half>(layout, batch, length, width, ropeWidth, static_cast<__half const*>(hidden),
        static_cast<__half const*>(cos), static_cast<__half const*>(sin), visualIds, static_cast<__half*>(hiddenOut),
        static_cast<__half*>(cosOut), static_cast<__half*>(sinOut), visualIdsOut, basis, frequencies, workspace,
        stream);
}

} // namespace luvc
