#include "plugins.h"

#include <iostream>

namespace luvc
{
using namespace nvinfer1;

namespace
{
thread_local std::string lastError;
ILoggerFinder* loggerFinder = nullptr; // TensorRT's, handed over by setLoggerFinder when the library loads

bool linearFloat(PluginTensorDesc const& desc)
{
    return desc.format == TensorFormat::kLINEAR && (desc.type == DataType::kFLOAT || desc.type == DataType::kHALF);
}

bool linearAs(PluginTensorDesc const& desc, DataType type)
{
    return desc.format == TensorFormat::kLINEAR && desc.type == type;
}

ElementType elementType(DataType type)
{
    return type == DataType::kHALF ? ElementType::kFLOAT16 : ElementType::kFLOAT32;
}

int64_t trailingVolume(Dims const& dims, int32_t from)
{
    int64_t volume = 1;
    for (int32_t axis = from; axis < dims.nbDims; ++axis)
    {
        volume *= dims.d[axis];
    }
    return volume;
}

int32_t failed(std::string const& message)
{
    reportError(message);
    return -1;
}
} // namespace

std::string const& lastErrorMessage()
{
    return lastError;
}

void reportError(std::string const& message)
{
    lastError = message;
    ILogger* logger = loggerFinder != nullptr ? loggerFinder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(ILogger::Severity::kERROR, ("luvc plugins: " + message).c_str());
    }
    else
    {
        std::cerr << "luvc plugins: " << message << std::endl;
    }
}

void setLogger(ILoggerFinder* finder)
{
    loggerFinder = finder;
}

IPluginCapability* PluginBase::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

// ---- OrthoMerge ------------------------------------------------------------------------------------------------

int32_t OrthoMergePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != 1 || nbOutputs != 1)
    {
        return failed("OrthoMerge takes one input and gives one output");
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t OrthoMergePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    int64_t const axis = mRunner.params().axis;
    if (nbInputs != 1 || nbOutputs != 1 || axis >= inputs[0].nbDims)
    {
        return failed("OrthoMerge: axis " + std::to_string(axis) + " is outside its input of rank "
            + std::to_string(inputs[0].nbDims));
    }
    outputs[0] = inputs[0];
    outputs[0].d[axis] = exprBuilder.constant(mRunner.params().mergedUnits());
    return 0;
}

bool OrthoMergePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t, int32_t) noexcept
{
    return pos == 0 ? linearFloat(inOut[0].desc) : linearAs(inOut[pos].desc, inOut[0].desc.type);
}

int32_t OrthoMergePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t) noexcept
{
    if (nbInputs != 1 || mRunner.params().axis >= in[0].desc.dims.nbDims)
    {
        return failed("OrthoMerge takes one input with the merge axis inside its rank");
    }
    int64_t const units = in[0].desc.dims.d[mRunner.params().axis];
    if (units >= 0 && units <= mRunner.params().largestIndex())
    {
        return failed("OrthoMerge: the input has " + std::to_string(units) + " units on axis "
            + std::to_string(mRunner.params().axis) + " but the merge reads unit "
            + std::to_string(mRunner.params().largestIndex()));
    }
    return 0;
}

int32_t OrthoMergePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept
{
    Dims const& dims = inputDesc[0].dims;
    int64_t sizes[Dims::MAX_DIMS];
    for (int32_t axis = 0; axis < dims.nbDims; ++axis)
    {
        sizes[axis] = dims.d[axis];
    }
    cudaError_t const status
        = mRunner.run(elementType(inputDesc[0].type), sizes, dims.nbDims, inputs[0], outputs[0], stream);
    return status == cudaSuccess ? 0 : failed(std::string("OrthoMerge: ") + cudaGetErrorString(status));
}

PluginFieldCollection const* OrthoMergePlugin::getFieldsToSerialize() noexcept
{
    mSerialized = FieldWriter();
    mRunner.params().writeFields(mSerialized);
    return mSerialized.collection();
}

// ---- SpectrumPrune ---------------------------------------------------------------------------------------------

int32_t SpectrumPrunePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != 4 || nbOutputs != 4)
    {
        return failed("SpectrumPrune takes hidden, cos, sin, visual_ids and gives four outputs");
    }
    outputTypes[0] = outputTypes[1] = outputTypes[2] = inputTypes[0];
    outputTypes[3] = DataType::kINT64;
    return 0;
}

int32_t SpectrumPrunePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != 4 || nbOutputs != 4 || inputs[0].nbDims < 3 || inputs[1].nbDims < 2 || inputs[2].nbDims < 2
        || inputs[3].nbDims != 2)
    {
        return failed("SpectrumPrune needs hidden (B, S, D), cos and sin (B, S, ...) and visual_ids (B, N)");
    }
    auto const* removed = exprBuilder.constant(mRunner.params().removedTokens());
    for (int32_t i = 0; i < 3; ++i)
    {
        outputs[i] = inputs[i];
        outputs[i].d[1] = exprBuilder.operation(DimensionOperation::kSUB, *inputs[i].d[1], *removed);
    }
    outputs[3].nbDims = 2;
    outputs[3].d[0] = inputs[3].d[0];
    outputs[3].d[1] = exprBuilder.constant(mRunner.params().keptTokens());
    return 0;
}

bool SpectrumPrunePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t, int32_t) noexcept
{
    if (pos == 0)
    {
        return linearFloat(inOut[0].desc);
    }
    bool const ids = pos == 3 || pos == 7;
    return linearAs(inOut[pos].desc, ids ? DataType::kINT64 : inOut[0].desc.type);
}

int32_t SpectrumPrunePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t) noexcept
{
    if (nbInputs != 4)
    {
        return failed("SpectrumPrune takes four inputs");
    }
    int64_t const visual = in[3].desc.dims.d[1];
    if (visual >= 0 && visual != mRunner.params().visualTokens())
    {
        return failed("SpectrumPrune: visual_ids has " + std::to_string(visual) + " tokens but the spans hold "
            + std::to_string(mRunner.params().visualTokens()));
    }
    int64_t const shortest = in[0].min.d[1];
    if (shortest >= 0 && shortest < mRunner.params().sequenceEnd())
    {
        return failed("SpectrumPrune: sequences may be " + std::to_string(shortest)
            + " tokens long but the last visual span ends at " + std::to_string(mRunner.params().sequenceEnd()));
    }
    return 0;
}

size_t SpectrumPrunePlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    return mRunner.workspace(inputs[0].max.d[0], trailingVolume(inputs[0].max, 2));
}

int32_t SpectrumPrunePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    Dims const& dims = inputDesc[0].dims;
    cudaError_t const status = mRunner.run(elementType(inputDesc[0].type), dims.d[0], dims.d[1],
        trailingVolume(dims, 2), trailingVolume(inputDesc[1].dims, 2), inputs[0], inputs[1], inputs[2],
        static_cast<int64_t const*>(inputs[3]), outputs[0], outputs[1], outputs[2], static_cast<int64_t*>(outputs[3]),
        workspace, stream);
    return status == cudaSuccess ? 0 : failed(std::string("SpectrumPrune: ") + cudaGetErrorString(status));
}

PluginFieldCollection const* SpectrumPrunePlugin::getFieldsToSerialize() noexcept
{
    mSerialized = FieldWriter();
    mRunner.params().writeFields(mSerialized);
    return mSerialized.collection();
}

// ---- creators --------------------------------------------------------------------------------------------------

namespace
{
template <typename Params>
std::vector<PluginField> fieldNames();

template <>
std::vector<PluginField> fieldNames<OrthoMergeParams>()
{
    return {PluginField("index_a", nullptr, PluginFieldType::kINT64), PluginField("index_b", nullptr, PluginFieldType::kINT64),
        PluginField("weight_a", nullptr, PluginFieldType::kFLOAT32),
        PluginField("weight_b", nullptr, PluginFieldType::kFLOAT32),
        PluginField("axis", nullptr, PluginFieldType::kINT64, 1)};
}

template <>
std::vector<PluginField> fieldNames<SpectrumPruneParams>()
{
    return {PluginField("span_starts", nullptr, PluginFieldType::kINT64),
        PluginField("span_counts", nullptr, PluginFieldType::kINT64),
        PluginField("budgets", nullptr, PluginFieldType::kINT64),
        PluginField("low_frequencies", nullptr, PluginFieldType::kINT64),
        PluginField("variant", nullptr, PluginFieldType::kCHAR), PluginField("rho", nullptr, PluginFieldType::kFLOAT32, 1)};
}
} // namespace

template <typename Plugin, typename Params>
Creator<Plugin, Params>::Creator()
    : mFields(fieldNames<Params>())
{
    mFieldNames.nbFields = static_cast<int32_t>(mFields.size());
    mFieldNames.fields = mFields.data();
}

template <typename Plugin, typename Params>
IPluginV3* Creator<Plugin, Params>::createPlugin(
    char const* name, PluginFieldCollection const* fields, TensorRTPhase) noexcept
{
    try
    {
        return new Plugin(Params::fromFields(fields));
    }
    catch (std::exception const& error)
    {
        reportError(std::string(Plugin::kName) + " node '" + (name ? name : "") + "': " + error.what());
        return nullptr;
    }
}

template class Creator<OrthoMergePlugin, OrthoMergeParams>;
template class Creator<SpectrumPrunePlugin, SpectrumPruneParams>;

} // namespace luvc

//! Entry points TensorRT's plugin registry looks up in a plugin library (IPluginRegistry::loadLibrary): the logger
//! the plugins report to, and the creators.
extern "C" LUVC_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    luvc::setLogger(finder);
}

extern "C" LUVC_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static luvc::OrthoMergeCreator orthoMerge;
    static luvc::SpectrumPruneCreator spectrumPrune;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&orthoMerge, &spectrumPrune};
    nbCreators = 2;
    return creators;
}
