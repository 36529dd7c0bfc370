// The few ONNX messages bitgrad writes, as plain structs, and their protobuf encoding
// (onnx/protobuf.hpp). Field numbers are those of onnx.proto (the file Debian's python3-onnx
// ships as /usr/lib/python3/dist-packages/onnx/onnx.proto); only the fields bitgrad sets exist.
//
//   ModelProto          ir_version 1, producer_name 2, producer_version 3, doc_string 6,
//                       graph 7, opset_import 8, metadata_props 14
//   OperatorSetIdProto  domain 1, version 2
//   StringStringEntry   key 1, value 2
//   GraphProto          node 1, name 2, initializer 5, doc_string 10, input 11, output 12
//   NodeProto           input 1, output 2, name 3, op_type 4, attribute 5, doc_string 6
//   AttributeProto      name 1, f 2, i 3, s 4, floats 7, ints 8, type 20
//   TensorProto         dims 1, data_type 2, name 8, raw_data 9
//   ValueInfoProto      name 1, type 2, doc_string 3
//   TypeProto           tensor_type 1 -> Tensor: elem_type 1, shape 2
//   TensorShapeProto    dim 1 -> Dimension: dim_value 1, dim_param 2
//
// Tensor data always travels as raw_data: the elements back to back, little-endian, row-major;
// int4 elements two per byte, the first in the low 4 bits (ONNX's packing of INT4).
#pragma once

#include <bitgrad/onnx/protobuf.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace bitgrad::onnx {

/// TensorProto.DataType values bitgrad uses.
enum class data_type : std::int32_t {
  float32 = 1,
  uint8 = 2,
  int8 = 3,
  int32 = 6,
  int64 = 7,
  int4 = 22
};

struct tensor_proto {
  std::string name;
  data_type type = data_type::float32;
  std::vector<std::int64_t> dims;
  std::string raw_data;
};

/// AttributeProto.AttributeType values bitgrad uses.
enum class attribute_type : std::int32_t {
  float32 = 1,
  int64 = 2,
  string = 3,
  floats = 6,
  ints = 7
};

struct attribute_proto {
  std::string name;
  attribute_type type = attribute_type::int64;
  float f = 0;
  std::int64_t i = 0;
  std::string s;
  std::vector<float> floats;
  std::vector<std::int64_t> ints;

  static attribute_proto of_int(std::string name, std::int64_t v) {
    attribute_proto a;
    a.name = std::move(name);
    a.type = attribute_type::int64;
    a.i = v;
    return a;
  }
  static attribute_proto of_ints(std::string name, std::vector<std::int64_t> v) {
    attribute_proto a;
    a.name = std::move(name);
    a.type = attribute_type::ints;
    a.ints = std::move(v);
    return a;
  }
  static attribute_proto of_float(std::string name, float v) {
    attribute_proto a;
    a.name = std::move(name);
    a.type = attribute_type::float32;
    a.f = v;
    return a;
  }
};

struct node_proto {
  std::string op_type, name, doc_string;
  std::vector<std::string> input, output;
  std::vector<attribute_proto> attribute;
};

/// One dimension of a value's shape: a number, or a symbolic name ("batch") when param is set.
struct dimension {
  std::int64_t value = 0;
  std::string param;
};

struct value_info_proto {
  std::string name, doc_string;
  data_type elem_type = data_type::float32;
  std::vector<dimension> shape;
};

struct graph_proto {
  std::string name, doc_string;
  std::vector<node_proto> node;
  std::vector<tensor_proto> initializer;
  std::vector<value_info_proto> input, output;
};

struct opset_id {
  std::string domain; ///< "" = the default ONNX domain
  std::int64_t version = 13;
};

struct model_proto {
  std::int64_t ir_version = 7;
  std::string producer_name, producer_version, doc_string;
  std::vector<opset_id> opset_import;
  graph_proto graph;
  std::vector<std::pair<std::string, std::string>> metadata_props;
};

// ---- encoding ----------------------------------------------------------------------------

inline pb::message encode(const tensor_proto& t) {
  pb::message m;
  for (std::int64_t d : t.dims) m.int64(1, d);
  m.int64(2, static_cast<std::int64_t>(t.type));
  m.string(8, t.name);
  m.bytes(9, t.raw_data);
  return m;
}

inline pb::message encode(const attribute_proto& a) {
  pb::message m;
  m.string(1, a.name);
  switch (a.type) {
  case attribute_type::float32:
    m.float32(2, a.f);
    break;
  case attribute_type::int64:
    m.int64(3, a.i);
    break;
  case attribute_type::string:
    m.bytes(4, a.s);
    break;
  case attribute_type::floats:
    for (float v : a.floats) m.float32(7, v);
    break;
  case attribute_type::ints:
    for (std::int64_t v : a.ints) m.int64(8, v);
    break;
  }
  m.int64(20, static_cast<std::int64_t>(a.type));
  return m;
}

inline pb::message encode(const node_proto& n) {
  pb::message m;
  for (const auto& s : n.input) m.string(1, s);
  for (const auto& s : n.output) m.string(2, s);
  if (!n.name.empty()) m.string(3, n.name);
  m.string(4, n.op_type);
  for (const auto& a : n.attribute) m.submessage(5, encode(a));
  if (!n.doc_string.empty()) m.string(6, n.doc_string);
  return m;
}

inline pb::message encode(const value_info_proto& v) {
  pb::message shape;
  for (const dimension& d : v.shape) {
    pb::message dim;
    if (d.param.empty())
      dim.int64(1, d.value);
    else
      dim.string(2, d.param);
    shape.submessage(1, dim);
  }
  pb::message tensor;
  tensor.int64(1, static_cast<std::int64_t>(v.elem_type));
  tensor.submessage(2, shape);
  pb::message type;
  type.submessage(1, tensor);
  pb::message m;
  m.string(1, v.name);
  m.submessage(2, type);
  if (!v.doc_string.empty()) m.string(3, v.doc_string);
  return m;
}

inline pb::message encode(const graph_proto& g) {
  pb::message m;
  for (const auto& n : g.node) m.submessage(1, encode(n));
  m.string(2, g.name);
  for (const auto& t : g.initializer) m.submessage(5, encode(t));
  if (!g.doc_string.empty()) m.string(10, g.doc_string);
  for (const auto& v : g.input) m.submessage(11, encode(v));
  for (const auto& v : g.output) m.submessage(12, encode(v));
  return m;
}

inline pb::message encode(const model_proto& p) {
  pb::message m;
  m.int64(1, p.ir_version);
  if (!p.producer_name.empty()) m.string(2, p.producer_name);
  if (!p.producer_version.empty()) m.string(3, p.producer_version);
  if (!p.doc_string.empty()) m.string(6, p.doc_string);
  m.submessage(7, encode(p.graph));
  for (const opset_id& o : p.opset_import) {
    pb::message id;
    id.string(1, o.domain);
    id.int64(2, o.version);
    m.submessage(8, id);
  }
  for (const auto& [key, value] : p.metadata_props) {
    pb::message e;
    e.string(1, key);
    e.string(2, value);
    m.submessage(14, e);
  }
  return m;
}

/// The serialized bytes of a model (what a .onnx file holds).
inline std::string serialize(const model_proto& p) {
  return encode(p).take();
}

} // namespace bitgrad::onnx
