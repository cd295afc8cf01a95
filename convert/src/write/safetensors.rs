//! Streaming safetensors writer.
//!
//! The header is planned from names, dtypes and shapes alone, so tensors can be produced and
//! written one at a time without holding the model in memory. The layout is exactly what the
//! `safetensors` library's `serialize` produces for the same tensors: data ordered by descending
//! dtype alignment, then by name; header JSON with `__metadata__` first; padded with spaces to a
//! multiple of 8 bytes. (Metadata keys are written sorted, so the output is deterministic even
//! with several keys, where the library's hash map order is not.)

use std::collections::BTreeMap;
use std::io::Write;

use qforge_codecs::DType;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// A tensor to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name in the file.
    pub name: String,
    /// Element format (must have a safetensors spelling).
    pub dtype: DType,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
}

/// The planned layout of one safetensors file.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The 8-byte length plus the padded header JSON.
    pub header: Vec<u8>,
    /// Tensors in data order, each with its byte range relative to the data section.
    pub tensors: Vec<(TensorSpec, u64, u64)>,
}

impl Plan {
    /// Total file size in bytes.
    pub fn file_size(&self) -> u64 {
        self.header.len() as u64 + self.tensors.last().map_or(0, |t| t.2)
    }
}

/// safetensors' dtype order (its `Dtype` enum order = alignment order).
fn st_rank(name: &str) -> usize {
    const ORDER: [&str; 22] = [
        "BOOL",
        "F4",
        "F6_E2M3",
        "F6_E3M2",
        "U8",
        "I8",
        "F8_E5M2",
        "F8_E4M3",
        "F8_E8M0",
        "F8_E4M3FNUZ",
        "F8_E5M2FNUZ",
        "I16",
        "U16",
        "F16",
        "BF16",
        "I32",
        "U32",
        "F32",
        "C64",
        "F64",
        "I64",
        "U64",
    ];
    ORDER.iter().position(|n| *n == name).unwrap_or(0)
}

fn unsupported(name: &str, dtype: DType) -> Error {
    Error::UnsupportedDType {
        path: std::path::PathBuf::from(name),
        tensor: name.to_owned(),
        dtype,
        reason: "safetensors cannot store this dtype",
    }
}

/// Plan a file holding `specs` with `__metadata__` `metadata`.
pub fn plan(specs: Vec<TensorSpec>, metadata: &BTreeMap<String, String>) -> Result<Plan> {
    let mut specs = specs
        .into_iter()
        .map(|s| {
            let st = s
                .dtype
                .info()
                .safetensors
                .ok_or_else(|| unsupported(&s.name, s.dtype))?;
            Ok((st_rank(st), st, s))
        })
        .collect::<Result<Vec<_>>>()?;
    specs.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.name.cmp(&b.2.name)));
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0u64;
    let mut tensors = Vec::with_capacity(specs.len());
    for (_, st, s) in specs {
        let n = s.shape.iter().product::<u64>();
        let bytes = s.dtype.bytes_for(n).map_err(|source| Error::Codec {
            path: s.name.clone().into(),
            tensor: s.name.clone(),
            source,
        })?;
        if header.contains_key(&s.name) {
            return Err(Error::DuplicateTensor {
                path: s.name.clone().into(),
                name: s.name,
            });
        }
        header.insert(
            s.name.clone(),
            json!({"dtype": st, "shape": s.shape, "data_offsets": [offset, offset + bytes]}),
        );
        tensors.push((s, offset, offset + bytes));
        offset += bytes;
    }
    let mut json = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::io("header", std::io::Error::other(e)))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok(Plan {
        header: out,
        tensors,
    })
}

/// Writes a planned file: the header, then each tensor's bytes in plan order, whole
/// ([`Writer::write_tensor`]) or in consecutive parts ([`Writer::begin_tensor`],
/// [`Writer::write_part`], [`Writer::end_tensor`]).
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    plan: Plan,
    next: usize,
    /// Bytes still due for the tensor begun and not yet ended.
    open: Option<u64>,
}

impl<W: Write> Writer<W> {
    /// Write the header of `plan` to `out`.
    pub fn new(mut out: W, plan: Plan) -> std::io::Result<Self> {
        out.write_all(&plan.header)?;
        Ok(Writer {
            out,
            plan,
            next: 0,
            open: None,
        })
    }

    /// The name of the tensor that must be written next, if any.
    pub fn next_name(&self) -> Option<&str> {
        self.plan.tensors.get(self.next).map(|t| t.0.name.as_str())
    }

    /// Write the next tensor's bytes. They must be the tensor the plan expects next and have
    /// exactly its size.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let len = self.begin_tensor(name)?;
        if len != bytes.len() as u64 {
            return Err(std::io::Error::other(format!(
                "expected tensor {name:?} of {len} bytes, got {} bytes",
                bytes.len()
            )));
        }
        self.write_part(bytes)?;
        self.end_tensor()
    }

    /// Start the next tensor, which must be `name`; returns its size in bytes, which
    /// [`Writer::write_part`] calls must then supply before [`Writer::end_tensor`].
    pub fn begin_tensor(&mut self, name: &str) -> std::io::Result<u64> {
        if self.open.is_some() {
            return Err(std::io::Error::other(format!(
                "tensor {name:?} begun before the previous one ended"
            )));
        }
        let Some((spec, start, end)) = self.plan.tensors.get(self.next) else {
            return Err(std::io::Error::other(format!(
                "tensor {name:?} written after the last planned tensor"
            )));
        };
        if spec.name != name {
            return Err(std::io::Error::other(format!(
                "expected tensor {:?}, got {name:?}",
                spec.name
            )));
        }
        self.open = Some(end - start);
        Ok(end - start)
    }

    /// Write the next bytes of the tensor begun; more than its size is an error.
    pub fn write_part(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let due = self
            .open
            .ok_or_else(|| std::io::Error::other("tensor bytes written outside a tensor"))?;
        let n = bytes.len() as u64;
        if n > due {
            return Err(std::io::Error::other(format!(
                "{n} bytes written where {due} were due for tensor {:?}",
                self.plan.tensors[self.next].0.name
            )));
        }
        self.out.write_all(bytes)?;
        self.open = Some(due - n);
        Ok(())
    }

    /// Finish the tensor begun; an error if its bytes fall short of its size.
    pub fn end_tensor(&mut self) -> std::io::Result<()> {
        match self.open {
            Some(0) => {
                self.open = None;
                self.next += 1;
                Ok(())
            }
            Some(due) => Err(std::io::Error::other(format!(
                "tensor {:?} ended {due} bytes short",
                self.plan.tensors[self.next].0.name
            ))),
            None => Err(std::io::Error::other("no tensor begun")),
        }
    }

    /// Check that every planned tensor was written and return the inner writer.
    pub fn finish(self) -> std::io::Result<W> {
        if self.next != self.plan.tensors.len() || self.open.is_some() {
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
    use std::borrow::Cow;

    struct V(safetensors::Dtype, Vec<usize>, Vec<u8>);
    impl safetensors::View for &V {
        fn dtype(&self) -> safetensors::Dtype {
            self.0
        }
        fn shape(&self) -> &[usize] {
            &self.1
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.2)
        }
        fn data_len(&self) -> usize {
            self.2.len()
        }
    }

    #[test]
    fn byte_identical_to_the_safetensors_library() {
        let tensors = [
            (
                "b.weight",
                DType::BF16,
                safetensors::Dtype::BF16,
                vec![3usize, 2],
            ),
            ("a.scale", DType::F32, safetensors::Dtype::F32, vec![3, 1]),
            (
                "a.weight",
                DType::F8_E4M3,
                safetensors::Dtype::F8_E4M3,
                vec![3, 2],
            ),
            ("c", DType::I32, safetensors::Dtype::I32, vec![5]),
            ("d", DType::U8, safetensors::Dtype::U8, vec![0]),
        ];
        let data: Vec<V> = tensors
            .iter()
            .enumerate()
            .map(|(i, (_, d, sd, shape))| {
                let n = shape.iter().product::<usize>() * d.block_bytes() as usize;
                V(
                    *sd,
                    shape.clone(),
                    (0..n).map(|j| (i * 31 + j) as u8).collect(),
                )
            })
            .collect();
        let meta: BTreeMap<String, String> = [("format".to_owned(), "pt".to_owned())].into();
        let theirs = safetensors::serialize(
            tensors.iter().zip(&data).map(|((n, ..), v)| (*n, v)),
            Some(meta.clone().into_iter().collect()),
        )
        .unwrap();

        let specs = tensors
            .iter()
            .map(|(n, d, _, s)| TensorSpec {
                name: (*n).into(),
                dtype: *d,
                shape: s.iter().map(|&x| x as u64).collect(),
            })
            .collect();
        let p = plan(specs, &meta).unwrap();
        let size = p.file_size();
        let mut w = Writer::new(Vec::new(), p).unwrap();
        while let Some(name) = w.next_name().map(str::to_owned) {
            let i = tensors.iter().position(|t| t.0 == name).unwrap();
            w.write_tensor(&name, &data[i].2).unwrap();
        }
        let ours = w.finish().unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(size, ours.len() as u64);
    }

    #[test]
    fn writer_enforces_the_plan() {
        let p = plan(
            vec![TensorSpec {
                name: "x".into(),
                dtype: DType::F32,
                shape: vec![2],
            }],
            &BTreeMap::new(),
        )
        .unwrap();
        let mut w = Writer::new(Vec::new(), p.clone()).unwrap();
        assert!(w.write_tensor("y", &[0; 8]).is_err());
        assert!(w.write_tensor("x", &[0; 7]).is_err());
        let w = Writer::new(Vec::new(), p.clone()).unwrap();
        assert!(w.finish().is_err());
        // in parts: too many bytes, too few, or a second tensor begun inside the first
        let mut w = Writer::new(Vec::new(), p.clone()).unwrap();
        assert_eq!(w.begin_tensor("x").unwrap(), 8);
        w.write_part(&[1; 5]).unwrap();
        assert!(w.write_part(&[1; 4]).is_err());
        assert!(w.end_tensor().is_err());
        assert!(w.begin_tensor("x").is_err());
        w.write_part(&[2; 3]).unwrap();
        w.end_tensor().unwrap();
        assert_eq!(
            &w.finish().unwrap()[p.header.len()..],
            &[1, 1, 1, 1, 1, 2, 2, 2]
        );
        let mut w = Writer::new(Vec::new(), p).unwrap();
        w.begin_tensor("x").unwrap();
        w.write_part(&[0; 8]).unwrap();
        assert!(w.finish().is_err());
        assert!(plan(
            vec![TensorSpec {
                name: "q".into(),
                dtype: DType::Q4_K,
                shape: vec![256]
            }],
            &BTreeMap::new()
        )
        .is_err());
    }
}
