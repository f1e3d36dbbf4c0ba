// A C interface to the plugins' host logic and kernels, for tests through ctypes (tests/plugins): creating plugins
// from fields as TensorRT's ONNX parser does, the serialization round trip, and the kernels on device pointers.
#include "plugins.h"

#include <cstring>
#include <memory>

using namespace nvinfer1;

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace
{
IPluginCreatorV3One* creatorOf(char const* pluginName)
{
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    for (int32_t i = 0; i < count; ++i)
    {
        auto* creator = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(creator->getPluginName(), pluginName) == 0)
        {
            return creator;
        }
    }
    luvc::reportError(std::string("no plugin called '") + pluginName + "'");
    return nullptr;
}

template <typename Plugin>
int32_t sameParams(IPluginV3* first, IPluginV3* second)
{
    return static_cast<Plugin*>(first)->params() == static_cast<Plugin*>(second)->params() ? 1 : 0;
}
} // namespace

extern "C"
{
    //! The last error message of this thread (a field error, a CUDA error).
    LUVC_EXPORT char const* luvc_last_error()
    {
        return luvc::lastErrorMessage().c_str();
    }

    //! Create ``pluginName`` from ``fields``, serialize it, create it again from its serialized fields and compare:
    //! 1 equal, 0 different, -1 when a creation failed (see luvc_last_error).
    LUVC_EXPORT int32_t luvc_fields_round_trip(char const* pluginName, PluginFieldCollection const* fields)
    {
        IPluginCreatorV3One* creator = creatorOf(pluginName);
        if (creator == nullptr)
        {
            return -1;
        }
        std::unique_ptr<IPluginV3> plugin(creator->createPlugin("node", fields, TensorRTPhase::kBUILD));
        if (!plugin)
        {
            return -1;
        }
        auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        std::unique_ptr<IPluginV3> restored(
            creator->createPlugin("node", runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
        if (!restored)
        {
            return -1;
        }
        if (std::strcmp(pluginName, luvc::OrthoMergePlugin::kName) == 0)
        {
            return sameParams<luvc::OrthoMergePlugin>(plugin.get(), restored.get());
        }
        return sameParams<luvc::SpectrumPrunePlugin>(plugin.get(), restored.get());
    }

    //! One OrthoMerge on device memory, synchronously: x has ``rank`` dims ``dims``; 0 or a CUDA error, -1 for bad
    //! fields.
    LUVC_EXPORT int32_t luvc_ortho_merge_forward(PluginFieldCollection const* fields, int32_t elementType, int64_t const* dims,
        int32_t rank, void const* x, void* y)
    {
        try
        {
            luvc::OrthoMergeRunner runner(luvc::OrthoMergeParams::fromFields(fields));
            auto status = runner.run(static_cast<luvc::ElementType>(elementType), dims, rank, x, y, nullptr);
            return status == cudaSuccess ? static_cast<int32_t>(cudaDeviceSynchronize()) : static_cast<int32_t>(status);
        }
        catch (std::exception const& error)
        {
            luvc::reportError(error.what());
            return -1;
        }
    }

    //! One SpectrumPrune on device memory, synchronously (scratch allocated here); 0, a CUDA error, or -1.
    LUVC_EXPORT int32_t luvc_spectrum_prune_forward(PluginFieldCollection const* fields, int32_t elementType, int64_t batch,
        int64_t length, int64_t width, int64_t ropeWidth, void const* hidden, void const* cos, void const* sin,
        int64_t const* visualIds, void* hiddenOut, void* cosOut, void* sinOut, int64_t* visualIdsOut)
    {
        try
        {
            luvc::SpectrumPruneRunner runner(luvc::SpectrumPruneParams::fromFields(fields));
            void* workspace = nullptr;
            cudaError_t status = cudaMalloc(&workspace, runner.workspace(batch, width));
            if (status == cudaSuccess)
            {
                status = runner.run(static_cast<luvc::ElementType>(elementType), batch, length, width, ropeWidth,
                    hidden, cos, sin, visualIds, hiddenOut, cosOut, sinOut, visualIdsOut, workspace, nullptr);
            }
            cudaError_t const synced = cudaDeviceSynchronize();
            cudaFree(workspace);
            return static_cast<int32_t>(status != cudaSuccess ? status : synced);
        }
        catch (std::exception const& error)
        {
            luvc::reportError(error.what());
            return -1;
        }
    }
}
