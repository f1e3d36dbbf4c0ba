#include "fields.h"

#include <cstring>

namespace luvc
{
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;

PluginField const& requireField(nvinfer1::PluginFieldCollection const* fields, char const* name)
{
    for (int32_t i = 0; fields != nullptr && i < fields->nbFields; ++i)
    {
        if (fields->fields[i].name != nullptr && std::strcmp(fields->fields[i].name, name) == 0)
        {
            return fields->fields[i];
        }
    }
    throw FieldError(std::string("missing field '") + name + "'");
}

template <typename T>
static std::vector<int64_t> widen(void const* data, int32_t length)
{
    auto const* values = static_cast<T const*>(data);
    return std::vector<int64_t>(values, values + length);
}

std::vector<int64_t> readInts(PluginField const& field)
{
    if (field.length < 0 || (field.length > 0 && field.data == nullptr))
    {
        throw FieldError(std::string("field '") + field.name + "' has no data");
    }
    switch (field.type)
    {
    case PluginFieldType::kINT8: return widen<int8_t>(field.data, field.length);
    case PluginFieldType::kINT16: return widen<int16_t>(field.data, field.length);
    case PluginFieldType::kINT32: return widen<int32_t>(field.data, field.length);
    case PluginFieldType::kINT64: return widen<int64_t>(field.data, field.length);
    default: throw FieldError(std::string("field '") + field.name + "' must hold integers");
    }
}

std::vector<float> readFloats(PluginField const& field)
{
    if (field.length < 0 || (field.length > 0 && field.data == nullptr))
    {
        throw FieldError(std::string("field '") + field.name + "' has no data");
    }
    if (field.type == PluginFieldType::kFLOAT32)
    {
        auto const* values = static_cast<float const*>(field.data);
        return std::vector<float>(values, values + field.length);
    }
    if (field.type == PluginFieldType::kFLOAT64)
    {
        auto const* values = static_cast<double const*>(field.data);
        return std::vector<float>(values, values + field.length);
    }
    throw FieldError(std::string("field '") + field.name + "' must hold float32 values");
}

std::string readString(PluginField const& field)
{
    if (field.type != PluginFieldType::kCHAR || field.length < 0 || (field.length > 0 && field.data == nullptr))
    {
        throw FieldError(std::string("field '") + field.name + "' must be a string");
    }
    std::string text(static_cast<char const*>(field.data), static_cast<size_t>(field.length));
    while (!text.empty() && text.back() == '\0')
    {
        text.pop_back();
    }
    return text;
}

void FieldWriter::addInts(char const* name, std::vector<int64_t> const& values)
{
    auto const& stored = mInts.emplace_back(values);
    mFields.emplace_back(name, stored.data(), PluginFieldType::kINT64, static_cast<int32_t>(stored.size()));
}

void FieldWriter::addFloats(char const* name, std::vector<float> const& values)
{
    auto const& stored = mFloats.emplace_back(values);
    mFields.emplace_back(name, stored.data(), PluginFieldType::kFLOAT32, static_cast<int32_t>(stored.size()));
}

void FieldWriter::addString(char const* name, std::string const& value)
{
    auto const& stored = mStrings.emplace_back(value);
    mFields.emplace_back(name, stored.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(stored.size()));
}

nvinfer1::PluginFieldCollection const* FieldWriter::collection()
{
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
    return &mCollection;
}

} // namespace luvc
