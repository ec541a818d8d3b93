//! The wire-format pass that runs before the protobuf parse.
//!
//! The model is parsed by `onnx-protobuf`'s generated code on the
//! rust-protobuf 3.4 runtime, which departs from protobuf (and from the C++
//! and upb parsers behind the `onnx` package and ONNX Runtime) in two ways:
//!
//! 1. **End of input ends every open message.** `CodedInputStream::merge_message`
//!    pushes the declared length as a limit but never checks that the
//!    nested message really used it, and a byte slice has no limit of its
//!    own, so a file cut at a field boundary *inside* a nested message
//!    parses: the open messages just end early. That is how 36 of the last
//!    600 one-byte truncations of an exported model loaded, some with
//!    `metadata_props` entries whose value was cut off. The `onnx` package
//!    refuses every one of them ("Error parsing message"), as ORT does.
//! 2. **A repeated singular message field replaces.**
//!    `rt::read_singular_message_into_field` keeps only the last occurrence
//!    of, e.g., `ModelProto.graph`; protobuf merges them (the later
//!    occurrence's scalars win, repeated fields concatenate, nested singular
//!    messages merge recursively), which is what `onnx` and ORT do.
//!    `onnx-protobuf` is generated for the lite runtime (no descriptors, no
//!    reflection), so the crate offers no way to merge two messages.
//!
//! The first is fixed for the generated parse itself by giving the stream a
//! limit at the end of the file (`push_limit`, see [`super::load::parse_model`]).
//! This pass fixes the second and gives every structural error a message
//! that says where it is: it walks the messages of `onnx.proto` (the field
//! table below), checks that every field (tag, varint, fixed-width value,
//! length-delimited payload, group) lies within its enclosing message and the
//! file, and, where a singular message field occurs more than once, rewrites
//! the bytes so that it occurs once with the concatenation of the
//! occurrences' payloads, which protobuf defines to be the same as merging
//! them. Only messages that need it are rewritten; a file without repeated
//! singular message fields is parsed as it is. Reading uses the crate's
//! `CodedInputStream` primitives; values are decoded by the generated code.
//!
//! A oneof member (`TypeProto.value`) follows protobuf too: occurrences of
//! the same member merge, a different member replaces the one before.

use crate::{Error, Result};
use protobuf::rt::WireType;
use protobuf::{CodedInputStream, CodedOutputStream};
use std::borrow::Cow;

/// Deepest nesting of messages (and groups) accepted, protobuf's default.
pub const MAX_DEPTH: usize = 100;

/// The messages of `onnx.proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Msg {
    Model,
    Graph,
    Node,
    Attribute,
    ValueInfo,
    TrainingInfo,
    Tensor,
    Segment,
    SparseTensor,
    Type,
    TypeTensor,
    TypeSequence,
    TypeMap,
    TypeOptional,
    TypeSparseTensor,
    Shape,
    Dimension,
    Annotation,
    Function,
    Entry,
    Opset,
}

/// How a message-typed field occurs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Card {
    /// Singular: occurrences merge.
    One,
    /// Repeated: each occurrence is an element.
    Many,
    /// A member of the message's (one) oneof.
    Oneof,
}

type FieldDef = (u32, &'static str, Option<(Msg, Card)>);

/// Field numbers, names and, for message-typed fields, the message and how
/// it occurs (`onnx.proto` as `onnx-protobuf` 0.2 compiles it).
fn fields(m: Msg) -> &'static [FieldDef] {
    use Card::*;
    use Msg::*;
    match m {
        Model => &[
            (1, "ir_version", None),
            (2, "producer_name", None),
            (3, "producer_version", None),
            (4, "domain", None),
            (5, "model_version", None),
            (6, "doc_string", None),
            (7, "graph", Some((Graph, One))),
            (8, "opset_import", Some((Opset, Many))),
            (14, "metadata_props", Some((Entry, Many))),
            (20, "training_info", Some((TrainingInfo, Many))),
            (25, "functions", Some((Function, Many))),
        ],
        Graph => &[
            (1, "node", Some((Node, Many))),
            (2, "name", None),
            (5, "initializer", Some((Tensor, Many))),
            (15, "sparse_initializer", Some((SparseTensor, Many))),
            (10, "doc_string", None),
            (11, "input", Some((ValueInfo, Many))),
            (12, "output", Some((ValueInfo, Many))),
            (13, "value_info", Some((ValueInfo, Many))),
            (14, "quantization_annotation", Some((Annotation, Many))),
            (16, "metadata_props", Some((Entry, Many))),
        ],
        Node => &[
            (1, "input", None),
            (2, "output", None),
            (3, "name", None),
            (4, "op_type", None),
            (7, "domain", None),
            (8, "overload", None),
            (5, "attribute", Some((Attribute, Many))),
            (6, "doc_string", None),
            (9, "metadata_props", Some((Entry, Many))),
        ],
        Attribute => &[
            (1, "name", None),
            (21, "ref_attr_name", None),
            (13, "doc_string", None),
            (20, "type", None),
            (2, "f", None),
            (3, "i", None),
            (4, "s", None),
            (5, "t", Some((Tensor, One))),
            (6, "g", Some((Graph, One))),
            (22, "sparse_tensor", Some((SparseTensor, One))),
            (14, "tp", Some((Type, One))),
            (7, "floats", None),
            (8, "ints", None),
            (9, "strings", None),
            (10, "tensors", Some((Tensor, Many))),
            (11, "graphs", Some((Graph, Many))),
            (23, "sparse_tensors", Some((SparseTensor, Many))),
            (15, "type_protos", Some((Type, Many))),
        ],
        ValueInfo => &[
            (1, "name", None),
            (2, "type", Some((Type, One))),
            (3, "doc_string", None),
            (4, "metadata_props", Some((Entry, Many))),
        ],
        TrainingInfo => &[
            (1, "initialization", Some((Graph, One))),
            (2, "algorithm", Some((Graph, One))),
            (3, "initialization_binding", Some((Entry, Many))),
            (4, "update_binding", Some((Entry, Many))),
        ],
        Tensor => &[
            (1, "dims", None),
            (2, "data_type", None),
            (3, "segment", Some((Segment, One))),
            (4, "float_data", None),
            (5, "int32_data", None),
            (6, "string_data", None),
            (7, "int64_data", None),
            (8, "name", None),
            (12, "doc_string", None),
            (9, "raw_data", None),
            (13, "external_data", Some((Entry, Many))),
            (14, "data_location", None),
            (10, "double_data", None),
            (11, "uint64_data", None),
            (16, "metadata_props", Some((Entry, Many))),
        ],
        Segment => &[(1, "begin", None), (2, "end", None)],
        SparseTensor => &[
            (1, "values", Some((Tensor, One))),
            (2, "indices", Some((Tensor, One))),
            (3, "dims", None),
        ],
        Type => &[
            (1, "tensor_type", Some((TypeTensor, Oneof))),
            (4, "sequence_type", Some((TypeSequence, Oneof))),
            (5, "map_type", Some((TypeMap, Oneof))),
            (9, "optional_type", Some((TypeOptional, Oneof))),
            (8, "sparse_tensor_type", Some((TypeSparseTensor, Oneof))),
            (6, "denotation", None),
        ],
        TypeTensor | TypeSparseTensor => {
            &[(1, "elem_type", None), (2, "shape", Some((Shape, One)))]
        }
        TypeSequence | TypeOptional => &[(1, "elem_type", Some((Type, One)))],
        TypeMap => &[(1, "key_type", None), (2, "value_type", Some((Type, One)))],
        Shape => &[(1, "dim", Some((Dimension, Many)))],
        Dimension => &[
            (1, "dim_value", None),
            (2, "dim_param", None),
            (3, "denotation", None),
        ],
        Annotation => &[
            (1, "tensor_name", None),
            (2, "quant_parameter_tensor_names", Some((Entry, Many))),
        ],
        Function => &[
            (1, "name", None),
            (4, "input", None),
            (5, "output", None),
            (6, "attribute", None),
            (11, "attribute_proto", Some((Attribute, Many))),
            (7, "node", Some((Node, Many))),
            (8, "doc_string", None),
            (9, "opset_import", Some((Opset, Many))),
            (10, "domain", None),
            (13, "overload", None),
            (12, "value_info", Some((ValueInfo, Many))),
            (14, "metadata_props", Some((Entry, Many))),
        ],
        Entry => &[(1, "key", None), (2, "value", None)],
        Opset => &[(1, "domain", None), (2, "version", None)],
    }
}

fn msg_name(m: Msg) -> &'static str {
    match m {
        Msg::Model => "ModelProto",
        Msg::Graph => "GraphProto",
        Msg::Node => "NodeProto",
        Msg::Attribute => "AttributeProto",
        Msg::ValueInfo => "ValueInfoProto",
        Msg::TrainingInfo => "TrainingInfoProto",
        Msg::Tensor => "TensorProto",
        Msg::Segment => "TensorProto.Segment",
        Msg::SparseTensor => "SparseTensorProto",
        Msg::Type => "TypeProto",
        Msg::TypeTensor => "TypeProto.Tensor",
        Msg::TypeSequence => "TypeProto.Sequence",
        Msg::TypeMap => "TypeProto.Map",
        Msg::TypeOptional => "TypeProto.Optional",
        Msg::TypeSparseTensor => "TypeProto.SparseTensor",
        Msg::Shape => "TensorShapeProto",
        Msg::Dimension => "TensorShapeProto.Dimension",
        Msg::Annotation => "TensorAnnotation",
        Msg::Function => "FunctionProto",
        Msg::Entry => "StringStringEntryProto",
        Msg::Opset => "OperatorSetIdProto",
    }
}

/// What to do about a file cut short, appended to every truncation error.
const TRUNCATED_HINT: &str = "the file is truncated (an interrupted copy, download or write): \
copy it again, or export it again with `qat export`";
/// The same for bytes that contradict each other.
const DAMAGED_HINT: &str =
    "the file is damaged or not an ONNX model: copy it again, or export it again with `qat export`";

/// Checks the wire structure of a serialized `ModelProto` and returns the
/// bytes to parse: `bytes` itself, or, where a singular message field occurs
/// more than once, a copy in which each such field occurs once with its
/// occurrences merged.
pub fn check_and_merge(bytes: &[u8]) -> Result<Cow<'_, [u8]>> {
    let w = Walker {
        file_len: bytes.len(),
    };
    Ok(match w.message(bytes, 0, Msg::Model, "", 0)? {
        Some(v) => Cow::Owned(v),
        None => Cow::Borrowed(bytes),
    })
}

struct Walker {
    file_len: usize,
}

/// A message-typed field of a walked message.
struct Sub {
    number: u32,
    card: Card,
    /// Offsets in the message: the tag, the length, the payload, the end.
    start: usize,
    len_at: usize,
    payload: usize,
    end: usize,
    /// The payload rewritten, if it had to be.
    rewritten: Option<Vec<u8>>,
}

impl Sub {
    fn body<'b>(&'b self, buf: &'b [u8]) -> &'b [u8] {
        self.rewritten
            .as_deref()
            .unwrap_or(&buf[self.payload..self.end])
    }
}

/// One field being read, named only when an error needs it.
#[derive(Clone, Copy)]
struct Here<'p> {
    path: &'p str,
    msg: Msg,
    number: Option<u32>,
    /// The element's index, for a repeated message field.
    index: Option<usize>,
    /// The message lies at `base..base + len` in the file.
    base: usize,
    len: usize,
}

impl Here<'_> {
    fn field_name(&self) -> Option<&'static str> {
        let n = self.number?;
        fields(self.msg).iter().find(|d| d.0 == n).map(|d| d.1)
    }

    fn describe(&self) -> String {
        let Some(n) = self.number else {
            return if self.path.is_empty() {
                "the model".to_string()
            } else {
                format!("{} ({})", self.path, msg_name(self.msg))
            };
        };
        let name = self
            .field_name()
            .map_or_else(|| format!("field {n}"), str::to_string);
        let index = self.index.map_or_else(String::new, |i| format!("[{i}]"));
        format!(
            "{}{index} ({} field {n})",
            join(self.path, &name),
            msg_name(self.msg)
        )
    }

    /// Whether the enclosing message runs to the end of the file.
    fn at_file_end(&self, file_len: usize) -> bool {
        self.base + self.len == file_len
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Appends a length-delimited field: `tag` (as read), the length, `body`.
fn put_field(out: &mut Vec<u8>, tag: &[u8], body: &[u8]) -> Result<()> {
    out.extend_from_slice(tag);
    {
        let mut os = CodedOutputStream::vec(out);
        os.write_raw_varint64(body.len() as u64)
            .and_then(|_| os.flush())
            .map_err(|e| Error::Onnx(format!("re-encoding a merged field: {e}")))?;
    }
    out.extend_from_slice(body);
    Ok(())
}

impl Walker {
    /// The message `buf` (at file offset `base`) of type `msg`; `Some` with
    /// the rewritten bytes when it had to change.
    fn message(
        &self,
        buf: &[u8],
        base: usize,
        msg: Msg,
        path: &str,
        depth: usize,
    ) -> Result<Option<Vec<u8>>> {
        let mut here = Here {
            path,
            msg,
            number: None,
            index: None,
            base,
            len: buf.len(),
        };
        if depth > MAX_DEPTH {
            return Err(self.damaged(
                &here,
                base,
                &format!("messages nested more than {MAX_DEPTH} deep"),
            ));
        }
        let defs = fields(msg);
        let mut is = CodedInputStream::from_bytes(buf);
        let mut subs: Vec<Sub> = Vec::new();
        let mut counts: Vec<(u32, usize)> = Vec::new();
        let mut rewrite = false;
        loop {
            here.number = None;
            here.index = None;
            let start = is.pos() as usize;
            let tag = is
                .read_raw_tag_or_eof()
                .map_err(|e| self.varint_error(&here, buf, start, e))?;
            let Some(tag) = tag else { break };
            let number = tag >> 3;
            here.number = Some(number);
            if number == 0 {
                return Err(self.damaged(&here, base + start, "field number 0 is invalid"));
            }
            match WireType::new(tag & 7) {
                Some(WireType::LengthDelimited) => {
                    let def = defs.iter().find(|d| d.0 == number);
                    let mut n = 0;
                    if let Some(&(_, _, Some((_, card)))) = def {
                        n = match counts.iter_mut().find(|c| c.0 == number) {
                            Some(c) => {
                                c.1 += 1;
                                c.1 - 1
                            }
                            None => {
                                counts.push((number, 1));
                                0
                            }
                        };
                        if card == Card::Many {
                            here.index = Some(n);
                        }
                    }
                    let len_at = is.pos() as usize;
                    let len = is
                        .read_raw_varint64()
                        .map_err(|e| self.varint_error(&here, buf, len_at, e))?;
                    let payload = is.pos() as usize;
                    let end = self.fit(&here, buf, payload, len)?;
                    if let Some(&(_, name, Some((sub, card)))) = def {
                        rewrite |= card != Card::Many && n > 0;
                        let sub_path = match card {
                            Card::Many => format!("{}[{n}]", join(path, name)),
                            _ => join(path, name),
                        };
                        let rewritten = self.message(
                            &buf[payload..end],
                            base + payload,
                            sub,
                            &sub_path,
                            depth + 1,
                        )?;
                        rewrite |= rewritten.is_some();
                        subs.push(Sub {
                            number,
                            card,
                            start,
                            len_at,
                            payload,
                            end,
                            rewritten,
                        });
                    }
                    self.skip_to(&here, &mut is, end)?;
                }
                Some(WireType::StartGroup) => {
                    self.group(&here, buf, &mut is, number, depth + 1)?;
                }
                Some(WireType::EndGroup) => {
                    return Err(self.damaged(
                        &here,
                        base + start,
                        "an end-group tag outside any group",
                    ));
                }
                Some(w) => self.scalar(&here, buf, &mut is, w)?,
                None => {
                    return Err(self.damaged(
                        &here,
                        base + start,
                        &format!("invalid wire type {}", tag & 7),
                    ));
                }
            }
        }
        if !rewrite {
            return Ok(None);
        }
        self.rebuild(buf, base, msg, path, depth, &subs).map(Some)
    }

    /// The message with each singular message field once (its occurrences
    /// concatenated, then walked again so that what they share merges too),
    /// the surviving oneof member once, and every rewritten payload in place.
    fn rebuild(
        &self,
        buf: &[u8],
        base: usize,
        msg: Msg,
        path: &str,
        depth: usize,
        subs: &[Sub],
    ) -> Result<Vec<u8>> {
        // The oneof member that survives is the last one to appear, merged
        // over its occurrences since a different member last appeared.
        let oneof_last = subs.iter().rposition(|s| s.card == Card::Oneof);
        let oneof_from = oneof_last.map(|last| {
            subs[..last]
                .iter()
                .rposition(|s| s.card == Card::Oneof && s.number != subs[last].number)
                .map_or(0, |j| j + 1)
        });
        let mut out = Vec::with_capacity(buf.len());
        let mut copied = 0;
        for (i, s) in subs.iter().enumerate() {
            out.extend_from_slice(&buf[copied..s.start]);
            copied = s.end;
            let tag = &buf[s.start..s.len_at];
            let group: Vec<&Sub> = match s.card {
                Card::Many => vec![s],
                Card::One if subs[..i].iter().any(|p| p.number == s.number) => continue,
                Card::One => subs.iter().filter(|p| p.number == s.number).collect(),
                Card::Oneof => {
                    let (Some(last), Some(from)) = (oneof_last, oneof_from) else {
                        continue;
                    };
                    if i < from || s.number != subs[last].number {
                        continue; // replaced by a later member
                    }
                    if subs[from..i].iter().any(|p| p.card == Card::Oneof) {
                        continue; // merged into the first of the run
                    }
                    subs[from..=last]
                        .iter()
                        .filter(|p| p.card == Card::Oneof)
                        .collect()
                }
            };
            if let [one] = group[..] {
                put_field(&mut out, tag, one.body(buf))?;
                continue;
            }
            let joined: Vec<u8> = group.iter().flat_map(|p| p.body(buf)).copied().collect();
            let Some(&(_, name, Some((sub, _)))) = fields(msg).iter().find(|d| d.0 == s.number)
            else {
                return Err(Error::Onnx(format!(
                    "{}: field {} lost its definition while merging",
                    msg_name(msg),
                    s.number
                )));
            };
            let merged =
                self.message(&joined, base + s.payload, sub, &join(path, name), depth + 1)?;
            put_field(&mut out, tag, merged.as_deref().unwrap_or(&joined))?;
        }
        out.extend_from_slice(&buf[copied..]);
        Ok(out)
    }

    /// The end of a payload of `len` bytes at `at`, which must fit in the
    /// message.
    fn fit(&self, here: &Here, buf: &[u8], at: usize, len: u64) -> Result<usize> {
        let left = (buf.len() - at) as u64;
        if len <= left {
            return Ok(at + len as usize);
        }
        let what = here.describe();
        Err(if here.at_file_end(self.file_len) {
            Error::Onnx(format!(
                "the file ends inside {what}: it declares {len} bytes at byte {}, only {left} follow; {TRUNCATED_HINT}",
                here.base + at
            ))
        } else {
            self.damaged(
                here,
                here.base + at,
                &format!("declares {len} bytes, but its enclosing message has only {left} left"),
            )
        })
    }

    fn skip_to(&self, here: &Here, is: &mut CodedInputStream, end: usize) -> Result<()> {
        let at = is.pos() as usize;
        is.skip_raw_bytes((end - at) as u32)
            .map_err(|e| self.damaged(here, here.base + at, &e.to_string()))
    }

    /// A varint or fixed-width value.
    fn scalar(
        &self,
        here: &Here,
        buf: &[u8],
        is: &mut CodedInputStream,
        w: WireType,
    ) -> Result<()> {
        let at = is.pos() as usize;
        match w {
            WireType::Fixed32 | WireType::Fixed64 => {
                let n = if w == WireType::Fixed32 { 4 } else { 8 };
                let end = self.fit(here, buf, at, n)?;
                self.skip_to(here, is, end)
            }
            _ => is
                .read_raw_varint64()
                .map(|_| ())
                .map_err(|e| self.varint_error(here, buf, at, e)),
        }
    }

    /// A group (wire types 3 and 4, which `onnx.proto` does not use): its
    /// fields up to the matching end-group tag, which must be there.
    fn group(
        &self,
        here: &Here,
        buf: &[u8],
        is: &mut CodedInputStream,
        number: u32,
        depth: usize,
    ) -> Result<()> {
        let opened = is.pos() as usize;
        if depth > MAX_DEPTH {
            return Err(self.damaged(
                here,
                here.base + opened,
                &format!("groups nested more than {MAX_DEPTH} deep"),
            ));
        }
        loop {
            let start = is.pos() as usize;
            let tag = is
                .read_raw_tag_or_eof()
                .map_err(|e| self.varint_error(here, buf, start, e))?;
            let Some(tag) = tag else {
                if here.at_file_end(self.file_len) {
                    return Err(Error::Onnx(format!(
                        "the file ends inside {}, a group opened at byte {} and never closed: {TRUNCATED_HINT}",
                        here.describe(),
                        here.base + opened
                    )));
                }
                return Err(self.damaged(here, here.base + opened, "a group that is never closed"));
            };
            let inner = tag >> 3;
            match WireType::new(tag & 7) {
                Some(WireType::EndGroup) if inner == number => return Ok(()),
                Some(WireType::EndGroup) => {
                    return Err(self.damaged(
                        here,
                        here.base + start,
                        &format!("group {number} closed by an end-group tag of field {inner}"),
                    ))
                }
                Some(WireType::StartGroup) => self.group(here, buf, is, inner, depth + 1)?,
                Some(WireType::LengthDelimited) => {
                    let len_at = is.pos() as usize;
                    let len = is
                        .read_raw_varint64()
                        .map_err(|e| self.varint_error(here, buf, len_at, e))?;
                    let end = self.fit(here, buf, is.pos() as usize, len)?;
                    self.skip_to(here, is, end)?;
                }
                Some(w) => self.scalar(here, buf, is, w)?,
                None => {
                    return Err(self.damaged(
                        here,
                        here.base + start,
                        &format!("invalid wire type {}", tag & 7),
                    ))
                }
            }
        }
    }

    /// A varint at `at` that the crate could not read: cut off by the end
    /// of the file (every byte to the end has its continuation bit set), or
    /// malformed.
    fn varint_error(&self, here: &Here, buf: &[u8], at: usize, e: protobuf::Error) -> Error {
        let tail = &buf[at.min(buf.len())..];
        let cut = tail.len() < 10 && tail.iter().all(|b| b & 0x80 != 0);
        if cut && here.at_file_end(self.file_len) {
            Error::Onnx(format!(
                "the file ends inside {} at byte {}: {TRUNCATED_HINT}",
                here.describe(),
                here.base + at
            ))
        } else {
            self.damaged(here, here.base + at, &format!("unreadable varint ({e})"))
        }
    }

    fn damaged(&self, here: &Here, at: usize, what: &str) -> Error {
        Error::Onnx(format!(
            "{}: {what} (at byte {at}); {DAMAGED_HINT}",
            here.describe()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::{
        type_proto, AttributeProto, GraphProto, Message, ModelProto, NodeProto, TypeProto,
    };

    /// `body` as length-delimited field `number`.
    fn field(number: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut os = CodedOutputStream::vec(&mut out);
        os.write_bytes(number, body).unwrap();
        os.flush().unwrap();
        drop(os);
        out
    }

    fn model(ir: i64) -> Vec<u8> {
        let mut m = ModelProto::new();
        m.ir_version = ir;
        m.write_to_bytes().unwrap()
    }

    fn parse(bytes: &[u8]) -> Result<ModelProto> {
        super::super::load::parse_model(bytes)
    }

    fn err(bytes: &[u8]) -> String {
        match parse(bytes) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// TypeProto bytes: a tensor type with an element type and/or a
    /// one-dimension shape, or a sequence type.
    fn tp(elem: Option<i32>, dim: Option<i64>, seq: bool) -> Vec<u8> {
        let mut t = TypeProto::new();
        if seq {
            t.value = Some(type_proto::Value::SequenceType(type_proto::Sequence::new()));
        } else {
            let mut tt = type_proto::Tensor::new();
            if let Some(e) = elem {
                tt.elem_type = e;
            }
            if let Some(d) = dim {
                let mut s = onnx_protobuf::TensorShapeProto::new();
                let mut dd = onnx_protobuf::tensor_shape_proto::Dimension::new();
                dd.value = Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimValue(d));
                s.dim.push(dd);
                tt.shape = Some(s).into();
            }
            t.value = Some(type_proto::Value::TensorType(tt));
        }
        t.write_to_bytes().unwrap()
    }

    /// A model whose graph input 0 has `ty` (TypeProto bytes) as its type.
    fn with_input_type(ty: &[u8]) -> ModelProto {
        let mut vi = field(1, b"x");
        vi.extend(field(2, ty));
        let mut bytes = model(7);
        bytes.extend(field(7, &field(11, &vi)));
        parse(&bytes).unwrap()
    }

    fn tensor_type(m: &ModelProto) -> Option<&type_proto::Tensor> {
        match &m.graph.input[0].type_.value {
            Some(type_proto::Value::TensorType(t)) => Some(t),
            _ => None,
        }
    }

    #[test]
    fn a_file_without_repeated_singular_fields_is_not_copied() {
        let mut m = ModelProto::new();
        m.ir_version = 7;
        let mut g = GraphProto::new();
        g.node.push(NodeProto::new());
        g.node.push(NodeProto::new());
        m.graph = Some(g).into();
        let bytes = m.write_to_bytes().unwrap();
        assert!(matches!(check_and_merge(&bytes).unwrap(), Cow::Borrowed(_)));
        let mut twice = bytes.clone();
        twice.extend(field(7, &GraphProto::new().write_to_bytes().unwrap()));
        assert!(matches!(check_and_merge(&twice).unwrap(), Cow::Owned(_)));
        assert_eq!(parse(&twice).unwrap().graph.node.len(), 2);
    }

    #[test]
    fn oneof_members_merge_or_replace_as_protobuf_does() {
        // The same member twice merges.
        let mut ty = tp(Some(1), None, false);
        ty.extend(tp(None, Some(3), false));
        let m = with_input_type(&ty);
        let t = tensor_type(&m).unwrap();
        assert_eq!((t.elem_type, t.shape.dim.len()), (1, 1));
        // A different member in between replaces: only the last run counts.
        let mut ty = tp(Some(1), None, false);
        ty.extend(tp(None, None, true));
        ty.extend(tp(None, Some(3), false));
        let m = with_input_type(&ty);
        let t = tensor_type(&m).unwrap();
        assert_eq!((t.elem_type, t.shape.dim.len()), (0, 1));
        // And the last member wins.
        let mut ty = tp(Some(1), None, false);
        ty.extend(tp(None, None, true));
        assert!(tensor_type(&with_input_type(&ty)).is_none());
    }

    #[test]
    fn singular_fields_inside_repeated_elements_merge() {
        // An attribute whose tensor `t` comes in two parts.
        let mut t1 = onnx_protobuf::TensorProto::new();
        t1.name = "w".into();
        let mut t2 = onnx_protobuf::TensorProto::new();
        t2.dims = vec![2, 3];
        let mut a = AttributeProto::new();
        a.name = "value".into();
        let mut attr = a.write_to_bytes().unwrap();
        attr.extend(field(5, &t1.write_to_bytes().unwrap()));
        attr.extend(field(5, &t2.write_to_bytes().unwrap()));
        let node = field(5, &attr);
        let mut bytes = model(7);
        bytes.extend(field(7, &field(1, &node)));
        let m = parse(&bytes).unwrap();
        let t = &m.graph.node[0].attribute[0].t;
        assert_eq!((t.name.as_str(), t.dims.as_slice()), ("w", &[2i64, 3][..]));
    }

    #[test]
    fn groups_must_be_closed() {
        // Field 30 as a group holding field 1 = 5: an unknown field, kept.
        let group = [0xf3, 0x01, 0x08, 0x05, 0xf4, 0x01];
        let mut ok = model(7);
        ok.extend(group);
        assert_eq!(parse(&ok).unwrap().ir_version, 7);
        let mut open = model(7);
        open.extend(&group[..4]);
        let e = err(&open);
        assert!(e.contains("never closed") && e.contains("truncated"), "{e}");
        let mut wrong = model(7);
        wrong.extend([0xf3, 0x01, 0x08, 0x05, 0xfc, 0x01]);
        assert!(err(&wrong).contains("closed by an end-group tag of field 31"));
        let mut lone = model(7);
        lone.extend([0xf4, 0x01]);
        assert!(err(&lone).contains("end-group tag outside any group"));
    }

    #[test]
    fn malformed_fields_are_errors_that_say_where() {
        let mut zero = model(7);
        zero.extend([0x02, 0x00]);
        assert!(err(&zero).contains("field number 0"));
        let mut wire = model(7);
        wire.push(0x0f);
        assert!(err(&wire).contains("invalid wire type 7"));
        // Inside the graph, a node that claims more bytes than the graph
        // has, with more of the file after the graph: damaged, not cut.
        let mut graph = vec![0x0a, 0x7f];
        graph.extend([0u8; 4]);
        let mut bytes = model(7);
        bytes.extend(field(7, &graph));
        bytes.extend(field(14, &field(1, b"k")));
        let e = err(&bytes);
        assert!(
            e.contains("graph.node[0] (GraphProto field 1)")
                && e.contains("declares 127 bytes, but its enclosing message has only 4 left")
                && e.contains("damaged"),
            "{e}"
        );
        // A varint cut by the end of the file.
        let mut cut = model(7);
        cut.extend([0x28, 0xff, 0xff]);
        let e = err(&cut);
        assert!(e.contains("the file ends inside model_version"), "{e}");
        // A varint longer than 10 bytes.
        let mut long = model(7);
        long.push(0x28);
        long.extend([0xff; 11]);
        long.push(0x01);
        assert!(err(&long).contains("unreadable varint"));
    }

    #[test]
    fn nesting_is_bounded() {
        // Graphs in attributes in nodes in graphs, deeper than protobuf's
        // limit of 100 messages.
        let mut g = Vec::new();
        for _ in 0..40 {
            let attr = field(6, &g);
            let node = field(5, &attr);
            g = field(1, &node);
        }
        let mut bytes = model(7);
        bytes.extend(field(7, &g));
        let e = err(&bytes);
        assert!(e.contains("nested more than 100 deep"), "{e}");
    }
}
