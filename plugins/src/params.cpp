#include "params.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>

namespace luvc
{
namespace
{
std::string list(std::vector<int64_t> const& values)
{
    std::string text = "[";
    for (size_t i = 0; i < values.size(); ++i)
    {
        text += (i ? ", " : "") + std::to_string(values[i]);
    }
    return text + "]";
}

//! The one value of field ``name``, which must hold exactly one.
template <typename Value>
Value readOne(nvinfer1::PluginFieldCollection const* fields, char const* name, char const* what)
{
    auto const& field = requireField(fields, name);
    auto const values = [&] {
        if constexpr (std::is_same_v<Value, float>)
        {
            return readFloats(field);
        }
        else
        {
            return readInts(field);
        }
    }();
    if (values.size() != 1)
    {
        throw FieldError(std::string("field '") + name + "' must hold one " + what);
    }
    return values[0];
}
} // namespace

OrthoMergeParams OrthoMergeParams::fromFields(nvinfer1::PluginFieldCollection const* fields)
{
    OrthoMergeParams params;
    params.indexA = readInts(requireField(fields, "index_a"));
    params.indexB = readInts(requireField(fields, "index_b"));
    params.weightA = readFloats(requireField(fields, "weight_a"));
    params.weightB = readFloats(requireField(fields, "weight_b"));
    params.axis = readOne<int64_t>(fields, "axis", "integer");
    params.validate();
    return params;
}

void OrthoMergeParams::validate() const
{
    size_t const units = indexA.size();
    if (units == 0)
    {
        throw FieldError("OrthoMerge: index_a is empty; a merge step has at least one output unit");
    }
    if (indexB.size() != units || weightA.size() != units || weightB.size() != units)
    {
        throw FieldError("OrthoMerge: index_a, index_b, weight_a and weight_b must have the same length (got "
            + std::to_string(units) + ", " + std::to_string(indexB.size()) + ", " + std::to_string(weightA.size())
            + ", " + std::to_string(weightB.size()) + ")");
    }
    auto const negative = [](int64_t index) { return index < 0; };
    if (std::any_of(indexA.begin(), indexA.end(), negative) || std::any_of(indexB.begin(), indexB.end(), negative))
    {
        throw FieldError("OrthoMerge: merge indices must be >= 0");
    }
    if (axis < 0)
    {
        throw FieldError("OrthoMerge: axis must be >= 0 (got " + std::to_string(axis) + ")");
    }
}

void OrthoMergeParams::writeFields(FieldWriter& writer) const
{
    writer.addInts("index_a", indexA);
    writer.addInts("index_b", indexB);
    writer.addFloats("weight_a", weightA);
    writer.addFloats("weight_b", weightB);
    writer.addInts("axis", {axis});
}

int64_t OrthoMergeParams::largestIndex() const
{
    return std::max(*std::max_element(indexA.begin(), indexA.end()), *std::max_element(indexB.begin(), indexB.end()));
}

bool OrthoMergeParams::operator==(OrthoMergeParams const& other) const
{
    return indexA == other.indexA && indexB == other.indexB && weightA == other.weightA && weightB == other.weightB
        && axis == other.axis;
}

char const* variantName(SpuVariant variant)
{
    return variant == SpuVariant::kSPECTRAL_RESIDUAL ? "spectral-residual" : "channel-spectrum";
}

SpectrumPruneParams SpectrumPruneParams::fromFields(nvinfer1::PluginFieldCollection const* fields)
{
    SpectrumPruneParams params;
    params.spanStarts = readInts(requireField(fields, "span_starts"));
    params.spanCounts = readInts(requireField(fields, "span_counts"));
    params.budgets = readInts(requireField(fields, "budgets"));
    params.lowFrequencies = readInts(requireField(fields, "low_frequencies"));
    auto const variant = readString(requireField(fields, "variant"));
    if (variant == "spectral-residual")
    {
        params.variant = SpuVariant::kSPECTRAL_RESIDUAL;
    }
    else if (variant == "channel-spectrum")
    {
        params.variant = SpuVariant::kCHANNEL_SPECTRUM;
    }
    else
    {
        throw FieldError("SpectrumPrune: variant '" + variant + "' is not spectral-residual or channel-spectrum");
    }
    params.rho = readOne<float>(fields, "rho", "float");
    params.validate();
    return params;
}

void SpectrumPruneParams::validate() const
{
    size_t const images = spanCounts.size();
    if (images == 0 || images > static_cast<size_t>(kMaxImages))
    {
        throw FieldError("SpectrumPrune: span_counts must list 1 to " + std::to_string(kMaxImages) + " images (got "
            + std::to_string(images) + ")");
    }
    if (spanStarts.size() != images || budgets.size() != images || lowFrequencies.size() != images)
    {
        throw FieldError("SpectrumPrune: span_starts, span_counts, budgets and low_frequencies need one entry per "
                         "image (got "
            + list(spanStarts) + ", " + list(spanCounts) + ", " + list(budgets) + ", " + list(lowFrequencies) + ")");
    }
    int64_t end = 0;
    for (size_t i = 0; i < images; ++i)
    {
        if (spanCounts[i] < 1 || spanStarts[i] < end)
        {
            throw FieldError("SpectrumPrune: spans must be non-empty, ascending and apart (starts " + list(spanStarts)
                + ", counts " + list(spanCounts) + ")");
        }
        if (budgets[i] < 0 || budgets[i] > spanCounts[i])
        {
            throw FieldError("SpectrumPrune: budget " + std::to_string(budgets[i]) + " of image "
                + std::to_string(i) + " must be between 0 and its " + std::to_string(spanCounts[i]) + " tokens");
        }
        if (lowFrequencies[i] < 1)
        {
            throw FieldError("SpectrumPrune: low_frequencies must be >= 1 (got " + list(lowFrequencies) + ")");
        }
        if (variant == SpuVariant::kSPECTRAL_RESIDUAL && lowFrequencies[i] > spanCounts[i])
        {
            throw FieldError("SpectrumPrune: image " + std::to_string(i) + " keeps "
                + std::to_string(lowFrequencies[i]) + " DCT rows but has " + std::to_string(spanCounts[i]) + " tokens");
        }
        end = spanStarts[i] + spanCounts[i];
    }
    if (!(rho > 0.F && rho < 1.F))
    {
        throw FieldError("SpectrumPrune: rho must be in (0, 1) (got " + std::to_string(rho) + ")");
    }
}

void SpectrumPruneParams::writeFields(FieldWriter& writer) const
{
    writer.addInts("span_starts", spanStarts);
    writer.addInts("span_counts", spanCounts);
    writer.addInts("budgets", budgets);
    writer.addInts("low_frequencies", lowFrequencies);
    writer.addString("variant", variantName(variant));
    writer.addFloats("rho", {rho});
}

int64_t SpectrumPruneParams::visualTokens() const
{
    return std::accumulate(spanCounts.begin(), spanCounts.end(), int64_t{0});
}

int64_t SpectrumPruneParams::keptTokens() const
{
    return std::accumulate(budgets.begin(), budgets.end(), int64_t{0});
}

int64_t SpectrumPruneParams::sequenceEnd() const
{
    return spanStarts.back() + spanCounts.back();
}

bool SpectrumPruneParams::operator==(SpectrumPruneParams const& other) const
{
    return spanStarts == other.spanStarts && spanCounts == other.spanCounts && budgets == other.budgets
        && lowFrequencies == other.lowFrequencies && variant == other.variant && rho == other.rho;
}

std::vector<float> dctRows(int64_t n, int64_t rows)
{
    std::vector<float> basis(static_cast<size_t>(rows * n));
    double const pi = std::acos(-1.0);
    for (int64_t k = 0; k < rows; ++k)
    {
        for (int64_t i = 0; i < n; ++i)
        {
            double const value = k == 0 ? std::sqrt(1.0 / static_cast<double>(n))
                                        : std::cos(pi * (static_cast<double>(i) + 0.5) * static_cast<double>(k)
                                              / static_cast<double>(n))
                    * std::sqrt(2.0 / static_cast<double>(n));
            basis[static_cast<size_t>(k * n + i)] = static_cast<float>(value);
        }
    }
    return basis;
}

void realDftMatrices(int64_t dim, int64_t frequencies, std::vector<float>& cosine, std::vector<float>& sine)
{
    cosine.assign(static_cast<size_t>(dim * frequencies), 0.F);
    sine.assign(static_cast<size_t>(dim * frequencies), 0.F);
    double const pi = std::acos(-1.0);
    for (int64_t d = 0; d < dim; ++d)
    {
        for (int64_t f = 0; f < frequencies; ++f)
        {
            double const angle
                = 2.0 * pi * static_cast<double>(d) * static_cast<double>(f) / static_cast<double>(dim);
            cosine[static_cast<size_t>(d * frequencies + f)] = static_cast<float>(std::cos(angle));
            sine[static_cast<size_t>(d * frequencies + f)] = static_cast<float>(std::sin(angle));
        }
    }
}

} // namespace luvc
