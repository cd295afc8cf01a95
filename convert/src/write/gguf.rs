//! Streaming GGUF v3 writer (specs/gguf.md §1), laid out as gguf-py's `GGUFWriter` and ggml's
//! `gguf_write_to_file` lay it out: header, key/values in the order given, tensor infos,
//! zero padding to the alignment, then each tensor's data padded to the alignment (the last one
//! too). Offsets are planned from dtypes and shapes alone, so tensors can be produced one at a
//! time.

use std::io::Write;

use qforge_codecs::DType;

use crate::error::{Error, Result};
use crate::gguf::{GgufArray, GgufValue, DEFAULT_ALIGNMENT, MAX_NAME_LEN};

/// A tensor to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorSpec {
    /// Name (at most 63 bytes).
    pub name: String,
    /// ggml type.
    pub dtype: DType,
    /// Shape, outermost first (written reversed, as `ne`).
    pub shape: Vec<u64>,
}

/// The planned layout of a GGUF file.
#[derive(Debug, Clone)]
pub struct GgufPlan {
    /// Everything before the tensor data (header, metadata, tensor infos, padding).
    pub header: Vec<u8>,
    /// Tensors in file order with their data size in bytes.
    pub tensors: Vec<(GgufTensorSpec, u64)>,
    /// Data alignment.
    pub alignment: u64,
}

impl GgufPlan {
    /// Total file size in bytes.
    pub fn file_size(&self) -> u64 {
        self.header.len() as u64
            + self
                .tensors
                .iter()
                .map(|(_, n)| n.next_multiple_of(self.alignment))
                .sum::<u64>()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_array(out: &mut Vec<u8>, a: &GgufArray) {
    out.extend_from_slice(&a.elem_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        GgufArray::U8(v) => out.extend_from_slice(v),
        GgufArray::I8(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        GgufArray::U16(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        GgufArray::I16(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        GgufArray::U32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        GgufArray::I32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        GgufArray::F32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        GgufArray::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        GgufArray::String(v) => v.iter().for_each(|s| put_str(out, s)),
        GgufArray::U64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        GgufArray::I64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        GgufArray::F64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
    }
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(a) => put_array(out, a),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn invalid(name: &str, reason: String) -> Error {
    Error::io(
        name,
        std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
    )
}

/// Plan a GGUF file with these key/values (in order; `general.alignment`, if present, must be a
/// u32 power of two) and tensors (in order).
pub fn plan(metadata: &[(String, GgufValue)], tensors: Vec<GgufTensorSpec>) -> Result<GgufPlan> {
    let alignment = match metadata
        .iter()
        .find(|(k, _)| k == crate::gguf::ALIGNMENT_KEY)
    {
        None => u64::from(DEFAULT_ALIGNMENT),
        Some((_, GgufValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
        Some(_) => {
            return Err(invalid(
                "general.alignment",
                "must be a u32 power of two".into(),
            ))
        }
    };
    let mut h = Vec::new();
    h.extend_from_slice(b"GGUF");
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut h, k);
        h.extend_from_slice(&v.ty().id().to_le_bytes());
        put_value(&mut h, v);
    }
    let mut offset = 0u64;
    let mut planned = Vec::with_capacity(tensors.len());
    for t in tensors {
        if t.name.len() > MAX_NAME_LEN || t.name.is_empty() {
            return Err(invalid(
                &t.name,
                format!("tensor names must be 1..={MAX_NAME_LEN} bytes"),
            ));
        }
        let ggml = t
            .dtype
            .info()
            .ggml
            .ok_or_else(|| invalid(&t.name, format!("{} cannot be stored in GGUF", t.dtype)))?;
        if t.shape.is_empty() || t.shape.len() > 4 {
            return Err(invalid(
                &t.name,
                format!("GGUF tensors have 1 to 4 dimensions, not {}", t.shape.len()),
            ));
        }
        let numel = t.shape.iter().product::<u64>();
        let nbytes = t.dtype.bytes_for(numel).map_err(|source| Error::Codec {
            path: t.name.clone().into(),
            tensor: t.name.clone(),
            source,
        })?;
        if t.shape
            .last()
            .is_some_and(|&ne0| ne0 % t.dtype.block_size() != 0)
        {
            return Err(invalid(
                &t.name,
                format!("row length is not a multiple of the {} block", t.dtype),
            ));
        }
        put_str(&mut h, &t.name);
        h.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            h.extend_from_slice(&d.to_le_bytes());
        }
        h.extend_from_slice(&ggml.to_le_bytes());
        h.extend_from_slice(&offset.to_le_bytes());
        offset += nbytes.next_multiple_of(alignment);
        planned.push((t, nbytes));
    }
    let padded = (h.len() as u64).next_multiple_of(alignment) as usize;
    h.resize(padded, 0);
    Ok(GgufPlan {
        header: h,
        tensors: planned,
        alignment,
    })
}

/// Writes a planned GGUF file: the header, then each tensor's bytes (and padding) in order.
#[derive(Debug)]
pub struct GgufWriter<W: Write> {
    out: W,
    plan: GgufPlan,
    next: usize,
    /// Bytes of tensor `next` written so far by [`GgufWriter::write_part`].
    partial: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Write the header of `plan`.
    pub fn new(mut out: W, plan: GgufPlan) -> std::io::Result<Self> {
        out.write_all(&plan.header)?;
        Ok(GgufWriter {
            out,
            plan,
            next: 0,
            partial: 0,
        })
    }

    /// The name of the tensor that must be written next.
    pub fn next_name(&self) -> Option<&str> {
        self.plan.tensors.get(self.next).map(|t| t.0.name.as_str())
    }

    /// Write the next tensor's bytes (exactly its planned size) and its padding.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        if self.partial != 0 {
            return Err(std::io::Error::other(format!(
                "tensor {name:?} started while {} bytes of the previous one are written",
                self.partial
            )));
        }
        let Some((spec, n)) = self.plan.tensors.get(self.next) else {
            return Err(std::io::Error::other(format!(
                "tensor {name:?} written after the last planned tensor"
            )));
        };
        if spec.name != name || *n != bytes.len() as u64 {
            return Err(std::io::Error::other(format!(
                "expected tensor {:?} of {n} bytes, got {name:?} of {} bytes",
                spec.name,
                bytes.len()
            )));
        }
        self.out.write_all(bytes)?;
        let pad = (n.next_multiple_of(self.plan.alignment) - n) as usize;
        self.out.write_all(&vec![0u8; pad])?;
        self.next += 1;
        Ok(())
    }

    /// Write the next piece of the next tensor (one expert of a 3-D expert stack): the tensor
    /// is done, and padded, when its planned size is reached. Pieces of one tensor come in
    /// order; none may run past its planned size.
    pub fn write_part(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let Some((spec, n)) = self.plan.tensors.get(self.next) else {
            return Err(std::io::Error::other(format!(
                "tensor {name:?} written after the last planned tensor"
            )));
        };
        let end = self.partial + bytes.len() as u64;
        if spec.name != name || end > *n {
            return Err(std::io::Error::other(format!(
                "expected tensor {:?} of {n} bytes ({} written), got {name:?} piece of {} bytes",
                spec.name,
                self.partial,
                bytes.len()
            )));
        }
        let n = *n;
        self.out.write_all(bytes)?;
        self.partial = end;
        if end == n {
            let pad = (n.next_multiple_of(self.plan.alignment) - n) as usize;
            self.out.write_all(&vec![0u8; pad])?;
            self.next += 1;
            self.partial = 0;
        }
        Ok(())
    }

    /// Check that every planned tensor was written and return the inner writer.
    pub fn finish(self) -> std::io::Result<W> {
        if self.next != self.plan.tensors.len() || self.partial != 0 {
            return Err(std::io::Error::other(format!(
                "{} of {} planned tensors written",
                self.next,
                self.plan.tensors.len()
            )));
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{parse, StringArray};

    #[test]
    fn our_reader_reads_back_what_we_write() {
        let meta = vec![
            (
                "general.architecture".to_owned(),
                GgufValue::String("llama".into()),
            ),
            ("x.u32".to_owned(), GgufValue::U32(7)),
            ("x.f32".to_owned(), GgufValue::F32(1e-5)),
            ("x.bool".to_owned(), GgufValue::Bool(true)),
            (
                "x.strs".to_owned(),
                GgufValue::Array(GgufArray::String(
                    ["a", "", "Ġthe"].into_iter().collect::<StringArray>(),
                )),
            ),
            (
                "x.i32s".to_owned(),
                GgufValue::Array(GgufArray::I32(vec![1, -2, 3])),
            ),
        ];
        let tensors = vec![
            GgufTensorSpec {
                name: "a".into(),
                dtype: DType::F32,
                shape: vec![3],
            },
            GgufTensorSpec {
                name: "b".into(),
                dtype: DType::Q8_0,
                shape: vec![2, 32],
            },
        ];
        let p = plan(&meta, tensors).unwrap();
        let size = p.file_size();
        let mut w = GgufWriter::new(Vec::new(), p).unwrap();
        w.write_tensor("a", &[1u8; 12]).unwrap();
        w.write_tensor("b", &[2u8; 68]).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() as u64, size);
        let (m, infos) = parse(&bytes).unwrap();
        assert_eq!(m.entries, meta);
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[1].ne, vec![32, 2]);
        assert_eq!(infos[1].offset, 32);
        assert_eq!(
            &bytes[infos[1].absolute_offset as usize..][..68],
            &[2u8; 68][..]
        );
        assert_eq!(bytes.len() % 32, 0);
    }
}
