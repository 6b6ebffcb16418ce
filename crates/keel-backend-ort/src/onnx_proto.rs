//! The subset of ONNX's protobuf schema (`onnx.proto`, IR version 8) needed to write a model.
//!
//! Hand-written `prost` messages instead of generated ones, so the build needs no `protoc`.
//! Field tags follow `onnx.proto`; fields Keel never writes are left out (protobuf readers skip
//! absent fields). A `oneof` with the one member Keel uses is written as a plain optional field,
//! which is the same on the wire.

use prost::Message;

/// IR version that goes with opset 17.
pub const IR_VERSION: i64 = 8;

/// `TensorProto.DataType` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum DataType {
    Float = 1,
    Int8 = 3,
    Int64 = 7,
}

/// `AttributeProto.AttributeType` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum AttributeType {
    Float = 1,
    Int = 2,
    Ints = 7,
}

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// Empty for the default `ai.onnx` domain.
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// Nodes in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Empty for `ai.onnx`; `com.microsoft` for ONNX Runtime's contrib operators.
    #[prost(string, tag = "7")]
    pub domain: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    // Optional (proto2 presence) so that 0 is still written: proto3-style scalars would drop it.
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// An [`AttributeType`]; required since IR version 2.
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

impl AttributeProto {
    pub fn int(name: &str, value: i64) -> Self {
        Self {
            name: name.into(),
            i: Some(value),
            r#type: AttributeType::Int as i32,
            ..Default::default()
        }
    }

    pub fn float(name: &str, value: f32) -> Self {
        Self {
            name: name.into(),
            f: Some(value),
            r#type: AttributeType::Float as i32,
            ..Default::default()
        }
    }

    pub fn ints(name: &str, values: &[i64]) -> Self {
        Self {
            name: name.into(),
            ints: values.to_vec(),
            r#type: AttributeType::Ints as i32,
            ..Default::default()
        }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// A [`DataType`].
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    /// Little-endian, fixed-width elements in row-major order.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

impl TensorProto {
    pub fn f32(name: &str, dims: &[usize], data: &[f32]) -> Self {
        Self::raw(name, dims, DataType::Float, data.len(), |out| {
            data.iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()))
        })
    }

    pub fn i64(name: &str, dims: &[usize], data: &[i64]) -> Self {
        Self::raw(name, dims, DataType::Int64, data.len(), |out| {
            data.iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()))
        })
    }

    pub fn i8(name: &str, dims: &[usize], data: &[i8]) -> Self {
        Self::raw(name, dims, DataType::Int8, data.len(), |out| {
            out.extend(data.iter().map(|&v| v as u8))
        })
    }

    fn raw(
        name: &str,
        dims: &[usize],
        data_type: DataType,
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Self {
        debug_assert_eq!(
            dims.iter().product::<usize>(),
            len,
            "{name}: shape/data mismatch"
        );
        let width = match data_type {
            DataType::Float => 4,
            DataType::Int64 => 8,
            DataType::Int8 => 1,
        };
        let mut raw_data = Vec::with_capacity(len * width);
        fill(&mut raw_data);
        Self {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            name: name.into(),
            raw_data,
        }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

impl ValueInfoProto {
    /// A tensor value; `None` dimensions are symbolic, named by the `&str`.
    pub fn tensor(name: &str, elem_type: DataType, dims: &[Dim]) -> Self {
        Self {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TypeProtoTensor {
                    elem_type: elem_type as i32,
                    shape: Some(TensorShapeProto {
                        dim: dims.iter().map(|d| d.to_proto()).collect(),
                    }),
                }),
            }),
        }
    }
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, Copy)]
pub enum Dim {
    Fixed(usize),
    Symbolic(&'static str),
}

impl Dim {
    fn to_proto(self) -> Dimension {
        match self {
            Dim::Fixed(n) => Dimension {
                dim_value: Some(n as i64),
                dim_param: None,
            },
            Dim::Symbolic(name) => Dimension {
                dim_value: None,
                dim_param: Some(name.into()),
            },
        }
    }
}

/// `TypeProto`, with only the `tensor_type` member of its `value` oneof.
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TypeProtoTensor>,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TypeProtoTensor {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`: its `value` oneof as two optional fields, exactly one set.
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}
