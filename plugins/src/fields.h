// Plugin fields: reading the attributes TensorRT's ONNX parser hands a creator (whatever integer or float width it
// chose), and owning the fields a plugin serializes. No CUDA and no TensorRT library calls: host-testable.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <deque>
#include <stdexcept>
#include <string>
#include <vector>

//! Marks the library's entry points (everything else is hidden).
#define LUVC_EXPORT __attribute__((visibility("default")))

namespace luvc
{

constexpr char const* kPluginNamespace = "luvc";
constexpr char const* kPluginVersion = "1";

//! A bad or missing attribute: the message names the field and what it must be.
class FieldError : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

//! The field called ``name`` in ``fields``; throws FieldError when it is absent.
nvinfer1::PluginField const& requireField(nvinfer1::PluginFieldCollection const* fields, char const* name);

//! Integer values of a field stored as INT8/16/32/64.
std::vector<int64_t> readInts(nvinfer1::PluginField const& field);

//! Float values of a field stored as FLOAT16/32/64 (FLOAT16 refused: attributes are float32 in ONNX).
std::vector<float> readFloats(nvinfer1::PluginField const& field);

//! Text of a CHAR field (a trailing NUL, if the parser adds one, is dropped).
std::string readString(nvinfer1::PluginField const& field);

//! Fields a plugin serializes, owning their data (addresses stay valid while the writer lives).
class FieldWriter
{
public:
    void addInts(char const* name, std::vector<int64_t> const& values);
    void addFloats(char const* name, std::vector<float> const& values);
    void addString(char const* name, std::string const& value);
    nvinfer1::PluginFieldCollection const* collection();

private:
    std::deque<std::vector<int64_t>> mInts;
    std::deque<std::vector<float>> mFloats;
    std::deque<std::string> mStrings;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace luvc
