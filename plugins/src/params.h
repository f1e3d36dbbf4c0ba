// What each LUVC plugin node means: its attributes (the contract of luvc/export/plugin_ops.py), their validation,
// the static output sizes they imply, and their serialization. Host code only.
#pragma once

#include "fields.h"

#include <cstdint>
#include <string>
#include <vector>

namespace luvc
{

constexpr int32_t kMaxImages = 32; // images (visual spans) one SpectrumPrune node handles

//! luvc::OrthoMerge: y = weight_a * x[index_a] + weight_b * x[index_b] along ``axis``.
struct OrthoMergeParams
{
    std::vector<int64_t> indexA;
    std::vector<int64_t> indexB;
    std::vector<float> weightA;
    std::vector<float> weightB;
    int64_t axis{0};

    static OrthoMergeParams fromFields(nvinfer1::PluginFieldCollection const* fields); //!< throws FieldError
    void validate() const;                                                            //!< throws FieldError
    void writeFields(FieldWriter& writer) const;
    int64_t mergedUnits() const { return static_cast<int64_t>(indexA.size()); }
    int64_t largestIndex() const; //!< inputs need more units than this on ``axis``
    bool operator==(OrthoMergeParams const& other) const;
};

enum class SpuVariant : int32_t
{
    kSPECTRAL_RESIDUAL = 0,
    kCHANNEL_SPECTRUM = 1,
};

//! luvc::SpectrumPrune: per image, keep the ``budget`` highest-scoring visual tokens in ascending order.
struct SpectrumPruneParams
{
    std::vector<int64_t> spanStarts;
    std::vector<int64_t> spanCounts;
    std::vector<int64_t> budgets;
    std::vector<int64_t> lowFrequencies;
    SpuVariant variant{SpuVariant::kSPECTRAL_RESIDUAL};
    float rho{0.25F};

    static SpectrumPruneParams fromFields(nvinfer1::PluginFieldCollection const* fields); //!< throws FieldError
    void validate() const;                                                               //!< throws FieldError
    void writeFields(FieldWriter& writer) const;
    int32_t images() const { return static_cast<int32_t>(spanCounts.size()); }
    int64_t visualTokens() const; //!< N: visual tokens entering (sum of span counts)
    int64_t keptTokens() const;   //!< K: visual tokens leaving (sum of budgets)
    int64_t removedTokens() const { return visualTokens() - keptTokens(); }
    int64_t sequenceEnd() const; //!< the sequence must be at least this long (end of the last span)
    bool operator==(SpectrumPruneParams const& other) const;
};

char const* variantName(SpuVariant variant);

//! The first ``rows`` rows of the orthonormal DCT-II matrix of size ``n`` (rows x n, float32 from float64), the
//! low-pass basis of the spectral-residual score (as luvc.compress.spu.dct_basis computes it).
std::vector<float> dctRows(int64_t n, int64_t rows);

//! Cosine and sine matrices (dim x frequencies) of the real DFT over ``dim`` samples (channel-spectrum score).
void realDftMatrices(int64_t dim, int64_t frequencies, std::vector<float>& cosine, std::vector<float>& sine);

} // namespace luvc
