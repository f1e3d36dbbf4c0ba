// The TensorRT IPluginV3 plugins luvc::OrthoMerge and luvc::SpectrumPrune, and their creators.
#pragma once

#include "fields.h"
#include "runners.h"

#include <NvInferRuntime.h>

#include <exception>
#include <string>
#include <utility>

namespace luvc
{

//! Records ``message`` as the library's last error (see luvc_last_error) and prints it to stderr.
void reportError(std::string const& message);

//! Where reportError sends messages: TensorRT's logger (the library's setLoggerFinder entry point).
void setLogger(nvinfer1::ILoggerFinder* finder);

//! The last message reportError recorded on this thread.
std::string const& lastErrorMessage();

//! What every LUVC plugin shares: name, version, namespace and the three capabilities on one object.
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit PluginBase(char const* name)
        : mName(name)
    {
    }
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    char const* getPluginName() const noexcept override { return mName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
        int32_t) noexcept override
    {
        return 0;
    }
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }

protected:
    char const* mName;
    FieldWriter mSerialized;
};

//! The IPluginV3 methods every LUVC plugin defines for itself (declared once here; each plugin's .cpp defines them).
#define LUVC_PLUGIN_METHODS                                                                                               \
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,  \
        int32_t nbInputs) const noexcept override;                                                                        \
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,  \
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,                                           \
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;                                                           \
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,         \
        int32_t nbOutputs) noexcept override;                                                                             \
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,                                \
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;                               \
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,            \
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;         \
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

//! A plugin that runs one ``Runner`` on its ``Params``: its output count, parameters and copies (``Derived``, the
//! plugin class, names it with ``kName``).
template <typename Derived, typename Runner, typename Params, int32_t kOutputs>
class RunnerPlugin : public PluginBase
{
public:
    explicit RunnerPlugin(Params params)
        : PluginBase(Derived::kName)
        , mRunner(std::move(params))
    {
    }
    int32_t getNbOutputs() const noexcept override { return kOutputs; }
    Params const& params() const { return mRunner.params(); }
    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            return new Derived(mRunner.params());
        }
        catch (std::exception const& error)
        {
            reportError(error.what());
            return nullptr;
        }
    }

protected:
    Runner mRunner;
};

class OrthoMergePlugin : public RunnerPlugin<OrthoMergePlugin, OrthoMergeRunner, OrthoMergeParams, 1>
{
public:
    static constexpr char const* kName = "OrthoMerge";
    using RunnerPlugin::RunnerPlugin;
    LUVC_PLUGIN_METHODS
};

class SpectrumPrunePlugin : public RunnerPlugin<SpectrumPrunePlugin, SpectrumPruneRunner, SpectrumPruneParams, 4>
{
public:
    static constexpr char const* kName = "SpectrumPrune";
    using RunnerPlugin::RunnerPlugin;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    LUVC_PLUGIN_METHODS
};

//! Creator of one plugin from the fields its ONNX node's attributes become.
template <typename Plugin, typename Params>
class Creator : public nvinfer1::IPluginCreatorV3One
{
public:
    Creator();
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fields,
        nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFieldNames; }
    char const* getPluginName() const noexcept override { return Plugin::kName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldNames{};
};

using OrthoMergeCreator = Creator<OrthoMergePlugin, OrthoMergeParams>;
using SpectrumPruneCreator = Creator<SpectrumPrunePlugin, SpectrumPruneParams>;

} // namespace luvc
