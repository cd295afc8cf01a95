//! Hostile-input tests for the GGUF reader: every malformed header is built byte by byte and
//! must be refused with its exact [`GgufError`] variant; valid files (hand-built and the
//! gguf-py fixtures) must parse to the right values.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use qforge_codecs::DType;
use qforge_convert::gguf::{
    self, GgufArray, GgufError, GgufMetadata, GgufTensorInfo, GgufType, GgufValue, StringArray,
};
use qforge_convert::{Checkpoint, ConfigError, Error, Format, TensorLayout};
use sha2::Digest;

/// Tiny GGUF byte builders (kept in this file so the test binary owns its helpers).
mod build {
    /// `gguf_type` ids.
    pub mod ty {
        pub const U8: u32 = 0;
        pub const I8: u32 = 1;
        pub const U16: u32 = 2;
        pub const I16: u32 = 3;
        pub const U32: u32 = 4;
        pub const I32: u32 = 5;
        pub const F32: u32 = 6;
        pub const BOOL: u32 = 7;
        pub const STRING: u32 = 8;
        pub const ARRAY: u32 = 9;
        pub const U64: u32 = 10;
        pub const I64: u32 = 11;
        pub const F64: u32 = 12;
    }

    /// ggml type ids.
    pub mod ggml {
        pub const F32: u32 = 0;
        pub const F16: u32 = 1;
        pub const Q4_0: u32 = 2;
        pub const F64: u32 = 28;
    }

    /// A length-prefixed string.
    pub fn string(s: &[u8]) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(s);
        out
    }

    /// A key/value pair with raw key bytes: key, value type, then `payload` as is.
    pub fn kv_raw(key: &[u8], ty: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = string(key);
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A key/value pair.
    pub fn kv(key: &str, ty: u32, payload: &[u8]) -> Vec<u8> {
        kv_raw(key.as_bytes(), ty, payload)
    }

    /// An array payload: element type, count, then `items` as is.
    pub fn array(elem: u32, count: u64, items: &[u8]) -> Vec<u8> {
        let mut out = elem.to_le_bytes().to_vec();
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(items);
        out
    }

    /// A tensor info with raw name bytes; `ne` is written as given (innermost first).
    pub fn info(name: &[u8], ne: &[i64], ggml_type: u32, offset: u64) -> Vec<u8> {
        let mut out = string(name);
        out.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        for d in ne {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&ggml_type.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out
    }

    /// Zero bytes up to the next multiple of `align`.
    pub fn pad(out: &mut Vec<u8>, align: usize) {
        while out.len() % align != 0 {
            out.push(0);
        }
    }

    /// A GGUF file under construction. Counts default to the number of items added.
    #[derive(Clone)]
    pub struct File {
        pub magic: [u8; 4],
        pub version: u32,
        pub tensor_count: Option<u64>,
        pub kv_count: Option<u64>,
        pub kvs: Vec<Vec<u8>>,
        pub infos: Vec<Vec<u8>>,
        pub align: usize,
        pub data: Vec<u8>,
    }

    impl File {
        pub fn new() -> Self {
            File {
                magic: *b"GGUF",
                version: 3,
                tensor_count: None,
                kv_count: None,
                kvs: Vec::new(),
                infos: Vec::new(),
                align: 32,
                data: Vec::new(),
            }
        }

        /// Add a raw key/value pair.
        pub fn kv(mut self, kv: Vec<u8>) -> Self {
            self.kvs.push(kv);
            self
        }

        /// Add a raw tensor info (no data).
        pub fn info(mut self, info: Vec<u8>) -> Self {
            self.infos.push(info);
            self
        }

        /// Add a tensor the way writers do: its info with the next aligned offset, `nbytes`
        /// of patterned data, then padding.
        pub fn tensor(mut self, name: &str, ne: &[i64], ggml_type: u32, nbytes: usize) -> Self {
            let offset = self.data.len() as u64;
            self.infos
                .push(info(name.as_bytes(), ne, ggml_type, offset));
            let start = self.data.len();
            self.data.extend((0..nbytes).map(|i| (start + i) as u8));
            pad(&mut self.data, self.align);
            self
        }

        /// The file's bytes: header, key/values, tensor infos, padding (when there are
        /// tensor infos), data.
        pub fn bytes(&self) -> Vec<u8> {
            let mut out = self.magic.to_vec();
            out.extend_from_slice(&self.version.to_le_bytes());
            out.extend_from_slice(
                &self
                    .tensor_count
                    .unwrap_or(self.infos.len() as u64)
                    .to_le_bytes(),
            );
            out.extend_from_slice(&self.kv_count.unwrap_or(self.kvs.len() as u64).to_le_bytes());
            for kv in &self.kvs {
                out.extend_from_slice(kv);
            }
            for info in &self.infos {
                out.extend_from_slice(info);
            }
            if !self.infos.is_empty() {
                pad(&mut out, self.align);
            }
            out.extend_from_slice(&self.data);
            out
        }
    }
}

use build::{array, ggml, info, kv, kv_raw, string, ty, File};

/// Offset of the first key/value pair (after magic, version and the two counts).
const KV_START: u64 = 24;

fn parse(bytes: &[u8]) -> Result<(GgufMetadata, Vec<GgufTensorInfo>), GgufError> {
    gguf::parse(bytes)
}

fn err(bytes: &[u8]) -> GgufError {
    match parse(bytes) {
        Ok((meta, infos)) => panic!("expected an error, parsed {meta:?} {infos:?}"),
        Err(e) => e,
    }
}

/// A file with one tensor `t` (F32, 4 elements) and no metadata, plus `kvs`.
fn one_tensor_with(kvs: Vec<Vec<u8>>) -> Vec<u8> {
    let mut f = File::new();
    f.kvs = kvs;
    f.tensor("t", &[4], ggml::F32, 16).bytes()
}

/// A file whose only tensor info is `info`, followed by `data_len` bytes of data.
fn with_info(info: Vec<u8>, data_len: usize) -> Vec<u8> {
    let mut f = File::new().info(info);
    f.data = vec![0; data_len];
    f.bytes()
}

/// The hand-built valid file: metadata of every type and three tensors of three dtypes.
fn valid_file() -> File {
    let mut strings = string(b"alpha");
    strings.extend(string("\u{e9}t\u{e9}".as_bytes()));
    strings.extend(string(b""));
    let ints: Vec<u8> = [1i32, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    File::new()
        .kv(kv("general.architecture", ty::STRING, &string(b"llama")))
        .kv(kv("t.u8", ty::U8, &[200]))
        .kv(kv("t.i8", ty::I8, &(-100i8).to_le_bytes()))
        .kv(kv("t.u16", ty::U16, &60000u16.to_le_bytes()))
        .kv(kv("t.i16", ty::I16, &(-30000i16).to_le_bytes()))
        .kv(kv("t.u32", ty::U32, &4_000_000_000u32.to_le_bytes()))
        .kv(kv("t.i32", ty::I32, &(-2_000_000_000i32).to_le_bytes()))
        .kv(kv("t.f32", ty::F32, &1.5f32.to_le_bytes()))
        .kv(kv("t.true", ty::BOOL, &[1]))
        .kv(kv("t.false", ty::BOOL, &[0]))
        .kv(kv("t.u64", ty::U64, &(u64::MAX - 1).to_le_bytes()))
        .kv(kv("t.i64", ty::I64, &i64::MIN.to_le_bytes()))
        .kv(kv("t.f64", ty::F64, &(-0.25f64).to_le_bytes()))
        .kv(kv("t.ints", ty::ARRAY, &array(ty::I32, 3, &ints)))
        .kv(kv("t.strings", ty::ARRAY, &array(ty::STRING, 3, &strings)))
        .kv(kv("t.empty", ty::ARRAY, &array(ty::F64, 0, &[])))
        .tensor("a", &[4, 2], ggml::F32, 32)
        .tensor("b", &[32, 1], ggml::Q4_0, 18)
        .tensor("c", &[3], ggml::F16, 6)
}

// ---------------------------------------------------------------------------------------------
// Valid files.

#[test]
fn valid_file_parses_with_every_value_type() {
    let bytes = valid_file().bytes();
    let (meta, infos) = parse(&bytes).unwrap();
    assert_eq!(meta.version, 3);
    assert_eq!(meta.alignment, 32);
    assert_eq!(meta.data_offset % 32, 0);
    let want = [
        ("general.architecture", GgufValue::String("llama".into())),
        ("t.u8", GgufValue::U8(200)),
        ("t.i8", GgufValue::I8(-100)),
        ("t.u16", GgufValue::U16(60000)),
        ("t.i16", GgufValue::I16(-30000)),
        ("t.u32", GgufValue::U32(4_000_000_000)),
        ("t.i32", GgufValue::I32(-2_000_000_000)),
        ("t.f32", GgufValue::F32(1.5)),
        ("t.true", GgufValue::Bool(true)),
        ("t.false", GgufValue::Bool(false)),
        ("t.u64", GgufValue::U64(u64::MAX - 1)),
        ("t.i64", GgufValue::I64(i64::MIN)),
        ("t.f64", GgufValue::F64(-0.25)),
        ("t.ints", GgufValue::Array(GgufArray::I32(vec![1, -2, 3]))),
        (
            "t.strings",
            GgufValue::Array(GgufArray::String(
                ["alpha", "\u{e9}t\u{e9}", ""].into_iter().collect(),
            )),
        ),
        ("t.empty", GgufValue::Array(GgufArray::F64(vec![]))),
    ];
    let got: Vec<(&str, &GgufValue)> = meta.entries.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let want_refs: Vec<(&str, &GgufValue)> = want.iter().map(|(k, v)| (*k, v)).collect();
    assert_eq!(got, want_refs);
    assert_eq!(
        meta.get("t.u32").and_then(GgufValue::as_u64),
        Some(4_000_000_000)
    );
    assert_eq!(meta.get("t.i8").and_then(GgufValue::as_u64), None);

    let d = meta.data_offset;
    let expect = [
        GgufTensorInfo {
            name: "a".into(),
            ne: vec![4, 2],
            dtype: DType::F32,
            offset: 0,
            absolute_offset: d,
            nbytes: 32,
        },
        GgufTensorInfo {
            name: "b".into(),
            ne: vec![32, 1],
            dtype: DType::Q4_0,
            offset: 32,
            absolute_offset: d + 32,
            nbytes: 18,
        },
        GgufTensorInfo {
            name: "c".into(),
            ne: vec![3],
            dtype: DType::F16,
            offset: 64,
            absolute_offset: d + 64,
            nbytes: 6,
        },
    ];
    assert_eq!(infos, expect);
    assert_eq!(infos[0].shape(), vec![2, 4]);
    assert_eq!(infos[1].numel(), 32);
    // The data really is where the infos say.
    assert_eq!(bytes[d as usize + 32], 32);
    assert_eq!(bytes[d as usize + 64], 64);
}

#[test]
fn version_2_is_accepted() {
    let mut f = valid_file();
    f.version = 2;
    assert_eq!(parse(&f.bytes()).unwrap().0.version, 2);
}

#[test]
fn custom_alignment_is_honoured() {
    let mut f = File::new().kv(kv("general.alignment", ty::U32, &64u32.to_le_bytes()));
    f.align = 64;
    let bytes = f
        .tensor("a", &[4], ggml::F32, 16)
        .tensor("b", &[4], ggml::F32, 16)
        .bytes();
    let (meta, infos) = parse(&bytes).unwrap();
    assert_eq!(meta.alignment, 64);
    assert_eq!(meta.data_offset, 128); // 24 + 33 (key/value) + 2 × 33 (infos) = 123, padded to 64
    assert_eq!(infos[1].offset, 64);
    assert_eq!(infos[1].absolute_offset, 192);
}

#[test]
fn no_tensors_means_an_unaligned_blob_start() {
    // ggml seeks to the aligned data start only when there are tensors.
    let bytes = File::new().kv(kv("a", ty::U8, &[1])).bytes();
    let (meta, infos) = parse(&bytes).unwrap();
    assert!(infos.is_empty());
    assert_eq!(meta.data_offset, bytes.len() as u64);
    assert_eq!(meta.data_offset, KV_START + 8 + 1 + 4 + 1);
}

#[test]
fn scalars_and_empty_tensors_are_accepted() {
    // n_dims 0 is a one-element scalar in ggml; a zero dimension is an empty tensor.
    let bytes = File::new()
        .tensor("s", &[], ggml::F32, 4)
        .tensor("e", &[0, 7], ggml::Q4_0, 0)
        .bytes();
    let (_, infos) = parse(&bytes).unwrap();
    assert_eq!(
        (infos[0].ne.clone(), infos[0].numel(), infos[0].nbytes),
        (vec![], 1, 4)
    );
    assert_eq!(
        (infos[1].numel(), infos[1].nbytes, infos[1].offset),
        (0, 0, 32)
    );
}

#[test]
fn name_of_63_bytes_is_accepted() {
    let name = "n".repeat(63);
    let bytes = File::new().tensor(&name, &[1], ggml::F32, 4).bytes();
    assert_eq!(parse(&bytes).unwrap().1[0].name, name);
}

#[test]
fn last_tensor_without_padding_is_accepted() {
    // The mmap loaders only need the tensor's own bytes; the trailing padding is optional.
    let mut bytes = File::new().tensor("t", &[3], ggml::F32, 12).bytes();
    bytes.truncate(bytes.len() - 20);
    assert_eq!(parse(&bytes).unwrap().1[0].nbytes, 12);
}

// ---------------------------------------------------------------------------------------------
// Header.

#[test]
fn every_truncation_is_an_error() {
    let full = valid_file().bytes();
    let (meta, infos) = parse(&full).unwrap();
    let last = infos.last().unwrap();
    let end = (meta.data_offset + last.offset + last.nbytes) as usize;
    let exact = &full[..end];
    assert!(parse(exact).is_ok());
    for n in 0..end {
        assert!(parse(&exact[..n]).is_err(), "prefix of {n} bytes parsed");
    }
    assert_eq!(
        err(&exact[..3]),
        GgufError::Truncated { offset: 0, need: 4 }
    );
    assert_eq!(
        err(&exact[..10]),
        GgufError::Truncated { offset: 8, need: 8 }
    );
    assert!(
        matches!(err(&exact[..end - 1]), GgufError::DataPastEof { ref tensor, .. } if tensor == "c")
    );
    let infos_end = (meta.data_offset - 1) as usize; // inside the padding before the blob
    assert!(matches!(
        err(&exact[..infos_end]),
        GgufError::Truncated { .. }
    ));
}

#[test]
fn bad_magic() {
    let mut f = valid_file();
    f.magic = *b"GGUG";
    assert_eq!(err(&f.bytes()), GgufError::BadMagic { found: *b"GGUG" });
}

#[test]
fn versions_0_1_and_4_are_unsupported() {
    for version in [0, 1, 4, 0xFFFF] {
        let mut f = valid_file();
        f.version = version;
        assert_eq!(err(&f.bytes()), GgufError::UnsupportedVersion { version });
    }
}

#[test]
fn big_endian_file_is_recognized() {
    // A big-endian v3 file as gguf-py writes it: magic as bytes, every number byte-swapped.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_be_bytes());
    bytes.extend_from_slice(&0u64.to_be_bytes());
    bytes.extend_from_slice(&1u64.to_be_bytes());
    bytes.extend_from_slice(&1u64.to_be_bytes());
    bytes.extend_from_slice(b"a");
    bytes.extend_from_slice(&ty::U8.to_be_bytes());
    bytes.push(7);
    assert_eq!(
        err(&bytes),
        GgufError::BigEndian {
            version: 0x0300_0000
        }
    );
}

#[test]
fn tensor_count_2_pow_60() {
    let mut f = valid_file();
    f.tensor_count = Some(1 << 60);
    assert_eq!(
        err(&f.bytes()),
        GgufError::CountTooLarge {
            what: "tensor_count",
            count: 1 << 60,
            offset: 8
        }
    );
}

#[test]
fn tensor_count_checked_again_after_metadata() {
    // Plausible against the whole file, too many for what is left after the key/values.
    let mut f = File::new().kv(kv("pad", ty::STRING, &string(&[b'x'; 200])));
    f.tensor_count = Some(5);
    assert_eq!(
        err(&f.bytes()),
        GgufError::CountTooLarge {
            what: "tensor_count",
            count: 5,
            offset: 8
        }
    );
}

#[test]
fn kv_count_2_pow_60() {
    let mut f = valid_file();
    f.kv_count = Some(1 << 60);
    assert_eq!(
        err(&f.bytes()),
        GgufError::CountTooLarge {
            what: "kv_count",
            count: 1 << 60,
            offset: 16
        }
    );
}

#[test]
fn kv_count_larger_than_present() {
    let mut f = valid_file();
    f.kv_count = Some(17); // 16 present; the 17th reads tensor infos as a key/value
    assert!(parse(&f.bytes()).is_err());
    let mut f = File::new().kv(kv("a", ty::U8, &[1]));
    f.kv_count = Some(2);
    assert_eq!(
        err(&f.bytes()),
        GgufError::CountTooLarge {
            what: "kv_count",
            count: 2,
            offset: 16
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Key/value metadata.

#[test]
fn string_length_2_pow_60() {
    let mut key = (1u64 << 60).to_le_bytes().to_vec();
    key.extend_from_slice(b"general.name");
    let mut f = File::new();
    f.kvs.push(key);
    assert_eq!(
        err(&f.bytes()),
        GgufError::StringTooLong {
            len: 1 << 60,
            offset: KV_START
        }
    );
}

#[test]
fn string_value_longer_than_the_file() {
    let mut payload = 1000u64.to_le_bytes().to_vec();
    payload.extend_from_slice(b"short");
    let bytes = File::new().kv(kv("k", ty::STRING, &payload)).bytes();
    let value_at = KV_START + 8 + 1 + 4;
    assert_eq!(
        err(&bytes),
        GgufError::StringTooLong {
            len: 1000,
            offset: value_at
        }
    );
}

#[test]
fn string_above_the_2_pow_30_cap_is_refused_without_reading_it() {
    let mut payload = ((1u64 << 30) + 1).to_le_bytes().to_vec();
    payload.extend_from_slice(b"x");
    let bytes = File::new().kv(kv("k", ty::STRING, &payload)).bytes();
    assert!(matches!(err(&bytes), GgufError::StringTooLong { len, .. } if len == (1 << 30) + 1));
}

#[test]
fn array_of_2_pow_60_strings() {
    let bytes = File::new()
        .kv(kv(
            "a",
            ty::ARRAY,
            &array(ty::STRING, 1 << 60, &string(b"x")),
        ))
        .bytes();
    let count_at = KV_START + 8 + 1 + 4 + 4;
    assert_eq!(
        err(&bytes),
        GgufError::CountTooLarge {
            what: "array elements",
            count: 1 << 60,
            offset: count_at
        }
    );
}

#[test]
fn array_count_larger_than_the_rest_of_the_file() {
    // 100 u32 elements need 400 bytes; 40 are there.
    let bytes = File::new()
        .kv(kv("a", ty::ARRAY, &array(ty::U32, 100, &[0; 40])))
        .bytes();
    assert!(matches!(
        err(&bytes),
        GgufError::CountTooLarge {
            what: "array elements",
            count: 100,
            ..
        }
    ));
    // 10 strings need at least 80 bytes of length prefixes.
    let bytes = File::new()
        .kv(kv("a", ty::ARRAY, &array(ty::STRING, 10, &[0; 72])))
        .bytes();
    assert!(matches!(
        err(&bytes),
        GgufError::CountTooLarge {
            what: "array elements",
            count: 10,
            ..
        }
    ));
}

#[test]
fn nested_array() {
    let inner = array(ty::U8, 1, &[5]);
    let bytes = File::new()
        .kv(kv("a", ty::ARRAY, &array(ty::ARRAY, 1, &inner)))
        .bytes();
    assert_eq!(
        err(&bytes),
        GgufError::NestedArray {
            offset: KV_START + 8 + 1 + 4
        }
    );
}

#[test]
fn bad_value_type_13() {
    let bytes = File::new().kv(kv("a", 13, &[0; 8])).bytes();
    assert_eq!(
        err(&bytes),
        GgufError::BadValueType {
            ty: 13,
            offset: KV_START + 8 + 1
        }
    );
    let bytes = File::new()
        .kv(kv("a", ty::ARRAY, &array(13, 1, &[0; 8])))
        .bytes();
    assert_eq!(
        err(&bytes),
        GgufError::BadValueType {
            ty: 13,
            offset: KV_START + 8 + 1 + 4
        }
    );
    let bytes = File::new().kv(kv("a", u32::MAX, &[0; 8])).bytes();
    assert!(matches!(
        err(&bytes),
        GgufError::BadValueType { ty: u32::MAX, .. }
    ));
}

#[test]
fn bool_other_than_0_or_1() {
    let bytes = File::new().kv(kv("b", ty::BOOL, &[2])).bytes();
    assert_eq!(
        err(&bytes),
        GgufError::BadBool {
            value: 2,
            offset: KV_START + 8 + 1 + 4
        }
    );
    let bytes = File::new()
        .kv(kv("b", ty::ARRAY, &array(ty::BOOL, 3, &[1, 0, 0xFF])))
        .bytes();
    assert!(matches!(
        err(&bytes),
        GgufError::BadBool { value: 0xFF, .. }
    ));
}

#[test]
fn alignment_0() {
    let bytes = one_tensor_with(vec![kv("general.alignment", ty::U32, &0u32.to_le_bytes())]);
    assert_eq!(err(&bytes), GgufError::BadAlignment { value: 0 });
}

#[test]
fn alignment_3() {
    let bytes = one_tensor_with(vec![kv("general.alignment", ty::U32, &3u32.to_le_bytes())]);
    assert_eq!(err(&bytes), GgufError::BadAlignment { value: 3 });
}

#[test]
fn alignment_of_the_wrong_type() {
    let bytes = one_tensor_with(vec![kv("general.alignment", ty::U64, &32u64.to_le_bytes())]);
    assert_eq!(
        err(&bytes),
        GgufError::BadAlignmentType { ty: GgufType::U64 }
    );
    let bytes = one_tensor_with(vec![kv(
        "general.alignment",
        ty::ARRAY,
        &array(ty::U32, 1, &32u32.to_le_bytes()),
    )]);
    assert_eq!(
        err(&bytes),
        GgufError::BadAlignmentType {
            ty: GgufType::Array
        }
    );
}

#[test]
fn duplicate_key() {
    let bytes = File::new()
        .kv(kv("general.name", ty::U8, &[1]))
        .kv(kv("general.name", ty::U8, &[2]))
        .bytes();
    let second = KV_START + 8 + 12 + 4 + 1;
    assert_eq!(
        err(&bytes),
        GgufError::DuplicateKey {
            key: "general.name".into(),
            offset: second
        }
    );
}

#[test]
fn empty_key() {
    let bytes = File::new().kv(kv("", ty::U8, &[1])).bytes();
    assert_eq!(err(&bytes), GgufError::EmptyKey { offset: KV_START });
}

#[test]
fn invalid_utf8_key_and_value() {
    let bytes = File::new()
        .kv(kv_raw(b"general.\xff", ty::U8, &[1]))
        .bytes();
    assert_eq!(err(&bytes), GgufError::InvalidUtf8 { offset: KV_START });
    // An overlong encoding of '/' and a lone surrogate are not UTF-8 either.
    for bad in [&b"\xc0\xaf"[..], b"\xed\xa0\x80"] {
        let bytes = File::new().kv(kv("k", ty::STRING, &string(bad))).bytes();
        assert_eq!(
            err(&bytes),
            GgufError::InvalidUtf8 {
                offset: KV_START + 8 + 1 + 4
            }
        );
    }
    let mut items = string(b"ok");
    items.extend(string(b"\x80"));
    let bytes = File::new()
        .kv(kv("k", ty::ARRAY, &array(ty::STRING, 2, &items)))
        .bytes();
    assert!(matches!(err(&bytes), GgufError::InvalidUtf8 { .. }));
}

#[test]
fn nul_in_key() {
    let bytes = File::new()
        .kv(kv_raw(b"general.name\0evil", ty::U8, &[1]))
        .bytes();
    assert_eq!(err(&bytes), GgufError::EmbeddedNul { offset: KV_START });
}

#[test]
fn the_first_repeated_key_is_reported() {
    // Keys a, b, b, a: the first repeat in file order is the second "b", whatever the sort.
    let f = File::new()
        .kv(kv("a", ty::U8, &[1]))
        .kv(kv("b", ty::U8, &[2]))
        .kv(kv("b", ty::U8, &[3]))
        .kv(kv("a", ty::U8, &[4]));
    let third = KV_START + 2 * (8 + 1 + 4 + 1);
    assert_eq!(
        err(&f.bytes()),
        GgufError::DuplicateKey {
            key: "b".into(),
            offset: third
        }
    );
    // b, a, c, a, b: the second "a" comes before the second "b".
    let f = File::new()
        .kv(kv("b", ty::U8, &[1]))
        .kv(kv("a", ty::U8, &[2]))
        .kv(kv("c", ty::U8, &[3]))
        .kv(kv("a", ty::U8, &[4]))
        .kv(kv("b", ty::U8, &[5]));
    let fourth = KV_START + 3 * (8 + 1 + 4 + 1);
    assert_eq!(
        err(&f.bytes()),
        GgufError::DuplicateKey {
            key: "a".into(),
            offset: fourth
        }
    );
}

#[test]
fn arrays_of_every_element_type_are_read_in_bulk() {
    fn le<T, const N: usize>(items: &[T], f: fn(&T) -> [u8; N]) -> Vec<u8> {
        items.iter().flat_map(f).collect()
    }
    let nan = f32::from_bits(0x7fc0_1234); // a NaN with a payload, kept bit for bit
    let f32s = [1.5f32, -0.0, f32::INFINITY, nan, f32::MIN_POSITIVE / 2.0];
    let f64s = [0.1f64, -1e300, f64::NEG_INFINITY];
    let mut strings = Vec::new();
    for s in ["", "a", "\u{1f600}", "", "tail"] {
        strings.extend(string(s.as_bytes()));
    }
    let bytes = File::new()
        .kv(kv("u8", ty::ARRAY, &array(ty::U8, 3, &[0, 7, 255])))
        .kv(kv("i8", ty::ARRAY, &array(ty::I8, 2, &[0x80, 0x7f])))
        .kv(kv(
            "u16",
            ty::ARRAY,
            &array(ty::U16, 2, &le(&[1u16, 65535], |v| v.to_le_bytes())),
        ))
        .kv(kv(
            "i16",
            ty::ARRAY,
            &array(ty::I16, 2, &le(&[-2i16, 300], |v| v.to_le_bytes())),
        ))
        .kv(kv(
            "u32",
            ty::ARRAY,
            &array(ty::U32, 2, &le(&[7u32, u32::MAX], |v| v.to_le_bytes())),
        ))
        .kv(kv(
            "i32",
            ty::ARRAY,
            &array(ty::I32, 2, &le(&[i32::MIN, 5], |v| v.to_le_bytes())),
        ))
        .kv(kv(
            "f32",
            ty::ARRAY,
            &array(ty::F32, 5, &le(&f32s, |v| v.to_le_bytes())),
        ))
        .kv(kv("bool", ty::ARRAY, &array(ty::BOOL, 3, &[1, 0, 1])))
        .kv(kv("str", ty::ARRAY, &array(ty::STRING, 5, &strings)))
        .kv(kv(
            "u64",
            ty::ARRAY,
            &array(ty::U64, 2, &le(&[0u64, u64::MAX], |v| v.to_le_bytes())),
        ))
        .kv(kv(
            "i64",
            ty::ARRAY,
            &array(ty::I64, 2, &le(&[i64::MIN, -1], |v| v.to_le_bytes())),
        ))
        .kv(kv(
            "f64",
            ty::ARRAY,
            &array(ty::F64, 3, &le(&f64s, |v| v.to_le_bytes())),
        ))
        .kv(kv("empty.str", ty::ARRAY, &array(ty::STRING, 0, &[])))
        .bytes();
    let (meta, _) = parse(&bytes).unwrap();
    let arr = |k: &str| meta.get(k).and_then(GgufValue::as_array).unwrap();
    assert_eq!(arr("u8"), &GgufArray::U8(vec![0, 7, 255]));
    assert_eq!(arr("i8"), &GgufArray::I8(vec![-128, 127]));
    assert_eq!(arr("u16"), &GgufArray::U16(vec![1, 65535]));
    assert_eq!(arr("i16"), &GgufArray::I16(vec![-2, 300]));
    assert_eq!(arr("u32"), &GgufArray::U32(vec![7, u32::MAX]));
    assert_eq!(arr("i32"), &GgufArray::I32(vec![i32::MIN, 5]));
    match arr("f32") {
        GgufArray::F32(v) => {
            let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
            let want: Vec<u32> = f32s.iter().map(|x| x.to_bits()).collect();
            assert_eq!(bits, want);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(arr("bool"), &GgufArray::Bool(vec![true, false, true]));
    assert_eq!(arr("u64"), &GgufArray::U64(vec![0, u64::MAX]));
    assert_eq!(arr("i64"), &GgufArray::I64(vec![i64::MIN, -1]));
    assert_eq!(arr("f64"), &GgufArray::F64(f64s.to_vec()));
    let GgufArray::String(strs) = arr("str") else {
        panic!("{:?}", arr("str"))
    };
    let got: Vec<&str> = strs.iter().collect();
    assert_eq!(got, ["", "a", "\u{1f600}", "", "tail"]);
    assert_eq!((strs.len(), strs.is_empty()), (5, false));
    assert_eq!(
        (strs.get(2), strs.get(4), strs.get(5)),
        (Some("\u{1f600}"), Some("tail"), None)
    );
    assert_eq!(strs.iter().next_back(), Some("tail"));
    assert_eq!(
        strs,
        &["", "a", "\u{1f600}", "", "tail"]
            .into_iter()
            .collect::<StringArray>()
    );
    let empty = arr("empty.str");
    assert_eq!(empty, &GgufArray::String(StringArray::default()));
    assert!(empty.is_empty());
    assert_eq!(empty.elem_type(), GgufType::String);
    for (k, t, n) in [
        ("u8", GgufType::U8, 3),
        ("i8", GgufType::I8, 2),
        ("u16", GgufType::U16, 2),
        ("i16", GgufType::I16, 2),
        ("u32", GgufType::U32, 2),
        ("i32", GgufType::I32, 2),
        ("f32", GgufType::F32, 5),
        ("bool", GgufType::Bool, 3),
        ("str", GgufType::String, 5),
        ("u64", GgufType::U64, 2),
        ("i64", GgufType::I64, 2),
        ("f64", GgufType::F64, 3),
    ] {
        assert_eq!((arr(k).elem_type(), arr(k).len()), (t, n), "{k}");
    }
    assert_eq!(meta.get("u8").map(GgufValue::ty), Some(GgufType::Array));
    assert_eq!(meta.get("u8").and_then(GgufValue::as_str), None);
}

#[test]
fn bad_bool_in_an_array_is_reported_at_its_offset() {
    let bytes = File::new()
        .kv(kv("b", ty::ARRAY, &array(ty::BOOL, 4, &[0, 1, 2, 3])))
        .bytes();
    let items_at = KV_START + 8 + 1 + 4 + 4 + 8;
    assert_eq!(
        err(&bytes),
        GgufError::BadBool {
            value: 2,
            offset: items_at + 2
        }
    );
}

#[test]
fn string_array_errors_come_in_element_order() {
    // Element 1 is not UTF-8 and element 2 is too long: the first fault is reported.
    let mut items = string(b"ok");
    items.extend(string(b"\xff"));
    items.extend(1000u64.to_le_bytes());
    let bytes = File::new()
        .kv(kv("k", ty::ARRAY, &array(ty::STRING, 3, &items)))
        .bytes();
    let items_at = KV_START + 8 + 1 + 4 + 4 + 8;
    assert_eq!(
        err(&bytes),
        GgufError::InvalidUtf8 {
            offset: items_at + 10
        }
    );
}

#[test]
fn kv_count_above_the_cap() {
    // 2^16 + 1 pairs would fit in the file; the cap refuses the count before reading any.
    let count = gguf::MAX_KV_COUNT + 1;
    let mut f = File::new();
    f.kv_count = Some(count);
    f.data = vec![0; (count * 13) as usize];
    assert_eq!(
        err(&f.bytes()),
        GgufError::CountTooLarge {
            what: "kv_count",
            count,
            offset: 16
        }
    );
}

#[test]
fn kv_count_at_the_cap_is_accepted() {
    let mut f = File::new();
    for i in 0..gguf::MAX_KV_COUNT {
        f = f.kv(kv(&format!("k{i:x}"), ty::U8, &[i as u8]));
    }
    let (meta, _) = parse(&f.bytes()).unwrap();
    assert_eq!(meta.entries.len() as u64, gguf::MAX_KV_COUNT);
    assert_eq!(meta.get("kffff"), Some(&GgufValue::U8(0xff)));
}

#[test]
fn tensor_count_above_the_cap() {
    let count = gguf::MAX_TENSOR_COUNT + 1;
    let mut f = File::new();
    f.tensor_count = Some(count);
    f.data = vec![0; (count * 24) as usize];
    assert_eq!(
        err(&f.bytes()),
        GgufError::CountTooLarge {
            what: "tensor_count",
            count,
            offset: 8
        }
    );
}

#[test]
fn the_first_repeated_tensor_name_is_reported() {
    let bytes = File::new()
        .tensor("x", &[4], ggml::F32, 16)
        .tensor("w", &[4], ggml::F32, 16)
        .tensor("v", &[4], ggml::F32, 16)
        .tensor("v", &[4], ggml::F32, 16)
        .tensor("x", &[4], ggml::F32, 16)
        .bytes();
    assert_eq!(err(&bytes), GgufError::DuplicateTensor { name: "v".into() });
}

// ---------------------------------------------------------------------------------------------
// Tensor infos.

#[test]
fn invalid_utf8_tensor_name() {
    let bytes = with_info(info(b"blk.\xfe.weight", &[4], ggml::F32, 0), 16);
    assert_eq!(err(&bytes), GgufError::InvalidUtf8 { offset: KV_START });
}

#[test]
fn nul_in_tensor_name() {
    // ggml would see "a" twice here (C strings); we refuse the name itself.
    let bytes = File::new()
        .info(info(b"a\0x", &[4], ggml::F32, 0))
        .info(info(b"a\0y", &[4], ggml::F32, 32))
        .bytes();
    assert_eq!(err(&bytes), GgufError::EmbeddedNul { offset: KV_START });
}

#[test]
fn five_dimensions() {
    let bytes = with_info(info(b"t", &[1, 1, 1, 1, 1], ggml::F32, 0), 4);
    assert_eq!(
        err(&bytes),
        GgufError::TooManyDims {
            tensor: "t".into(),
            n_dims: 5
        }
    );
}

#[test]
fn negative_dimension() {
    let bytes = with_info(info(b"t", &[4, -1], ggml::F32, 0), 16);
    assert_eq!(
        err(&bytes),
        GgufError::NegativeDim {
            tensor: "t".into(),
            dim: 1,
            value: -1
        }
    );
}

#[test]
fn dimension_product_overflow() {
    let bytes = with_info(info(b"t", &[1 << 32, 1 << 32], ggml::F32, 0), 16);
    assert_eq!(err(&bytes), GgufError::DimOverflow { tensor: "t".into() });
    let bytes = with_info(info(b"t", &[i64::MAX, 2], ggml::F32, 0), 16);
    assert_eq!(err(&bytes), GgufError::DimOverflow { tensor: "t".into() });
}

#[test]
fn byte_size_overflow() {
    // 2^62 elements fit i64, but 2^62 × 8 bytes does not fit u64.
    let bytes = with_info(info(b"t", &[1 << 31, 1 << 31], ggml::F64, 0), 16);
    assert_eq!(err(&bytes), GgufError::DimOverflow { tensor: "t".into() });
}

#[test]
fn unknown_ggml_types() {
    for type_id in [4, 5, 31, 36, 1000, u32::MAX] {
        let bytes = with_info(info(b"t", &[32], type_id, 0), 64);
        assert_eq!(
            err(&bytes),
            GgufError::UnknownType {
                tensor: "t".into(),
                type_id
            }
        );
    }
}

#[test]
fn q4_0_row_of_31() {
    let bytes = with_info(info(b"t", &[31, 2], ggml::Q4_0, 0), 64);
    assert_eq!(
        err(&bytes),
        GgufError::PartialBlock {
            tensor: "t".into(),
            ne0: 31,
            block: 32
        }
    );
    // A scalar of a block type is a row of one element.
    let bytes = with_info(info(b"s", &[], ggml::Q4_0, 0), 64);
    assert_eq!(
        err(&bytes),
        GgufError::PartialBlock {
            tensor: "s".into(),
            ne0: 1,
            block: 32
        }
    );
}

#[test]
fn name_of_64_bytes() {
    let name = "n".repeat(64);
    let bytes = File::new().tensor(&name, &[1], ggml::F32, 4).bytes();
    assert_eq!(err(&bytes), GgufError::NameTooLong { tensor: name });
}

#[test]
fn duplicate_tensor_name() {
    let bytes = File::new()
        .tensor("w", &[4], ggml::F32, 16)
        .tensor("w", &[4], ggml::F32, 16)
        .bytes();
    assert_eq!(err(&bytes), GgufError::DuplicateTensor { name: "w".into() });
}

// ---------------------------------------------------------------------------------------------
// Tensor data placement.

#[test]
fn unaligned_offset() {
    let bytes = File::new()
        .info(info(b"a", &[4], ggml::F32, 0))
        .info(info(b"b", &[4], ggml::F32, 16)) // right after `a`, but not padded to 32
        .bytes();
    let mut bytes = bytes;
    bytes.extend_from_slice(&[0; 64]);
    assert_eq!(
        err(&bytes),
        GgufError::BadOffset {
            tensor: "b".into(),
            offset: 16
        }
    );
    let bytes = with_info(info(b"a", &[4], ggml::F32, 7), 64);
    assert_eq!(
        err(&bytes),
        GgufError::BadOffset {
            tensor: "a".into(),
            offset: 7
        }
    );
}

#[test]
fn offsets_out_of_order() {
    let mut f =
        File::new()
            .info(info(b"a", &[4], ggml::F32, 32))
            .info(info(b"b", &[4], ggml::F32, 0));
    f.data = vec![0; 64];
    assert_eq!(
        err(&f.bytes()),
        GgufError::OffsetMismatch {
            tensor: "a".into(),
            expected: 0,
            got: 32
        }
    );
}

#[test]
fn offsets_overlapping() {
    let mut f =
        File::new()
            .info(info(b"a", &[16], ggml::F32, 0))
            .info(info(b"b", &[4], ggml::F32, 32));
    f.data = vec![0; 128];
    assert_eq!(
        err(&f.bytes()),
        GgufError::OffsetMismatch {
            tensor: "b".into(),
            expected: 64,
            got: 32
        }
    );
}

#[test]
fn offsets_with_a_gap() {
    let mut f =
        File::new()
            .info(info(b"a", &[4], ggml::F32, 0))
            .info(info(b"b", &[4], ggml::F32, 64));
    f.data = vec![0; 128];
    assert_eq!(
        err(&f.bytes()),
        GgufError::OffsetMismatch {
            tensor: "b".into(),
            expected: 32,
            got: 64
        }
    );
}

#[test]
fn data_past_eof() {
    let mut f = File::new()
        .tensor("a", &[4], ggml::F32, 16)
        .tensor("b", &[64], ggml::F32, 256);
    f.data.truncate(32 + 100);
    let bytes = f.bytes();
    let data_offset = 96; // 24-byte header + two 33-byte infos = 90, padded to 32
    let end = data_offset + 32 + 256;
    assert_eq!(
        err(&bytes),
        GgufError::DataPastEof {
            tensor: "b".into(),
            end,
            file_len: bytes.len() as u64
        }
    );
}

#[test]
fn huge_tensor_past_eof_does_not_overflow() {
    let bytes = with_info(info(b"t", &[1 << 40, 1 << 20], ggml::F32, 0), 64);
    assert!(matches!(err(&bytes), GgufError::DataPastEof { end, .. } if end == (1 << 62) + 96)); // blob at 96
    let bytes = with_info(info(b"t", &[1 << 31, (1 << 31) - 1], ggml::F16, 0), 64);
    assert!(matches!(err(&bytes), GgufError::DataPastEof { .. }));
}

#[test]
fn blob_start_past_eof() {
    // One empty tensor; the file stops before the padding that precedes the blob.
    let mut bytes = File::new().info(info(b"e", &[0], ggml::F32, 0)).bytes();
    let infos_end = KV_START + (8 + 1) + 4 + 8 + 4 + 8; // 57, padded to 64
    bytes.truncate(infos_end as usize);
    assert_eq!(
        err(&bytes),
        GgufError::Truncated {
            offset: infos_end,
            need: 64 - infos_end
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Never panic.

#[test]
fn every_single_byte_mutation_is_handled() {
    let bytes = valid_file().bytes();
    for i in 0..bytes.len() {
        for v in [
            0x00,
            0x01,
            0x09,
            0x0d,
            0x7f,
            0x80,
            0xfe,
            0xff,
            bytes[i].wrapping_add(1),
        ] {
            let mut m = bytes.clone();
            m[i] = v;
            let _ = parse(&m);
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&data);
    }

    #[test]
    fn random_bytes_after_a_valid_header_never_panic(
        version in 2u32..=3,
        tensors in 0u64..8,
        kvs in 0u64..8,
        body in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut data = b"GGUF".to_vec();
        data.extend_from_slice(&version.to_le_bytes());
        data.extend_from_slice(&tensors.to_le_bytes());
        data.extend_from_slice(&kvs.to_le_bytes());
        data.extend_from_slice(&body);
        let _ = parse(&data);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut data = valid_file().bytes();
        for (i, v) in edits {
            let i = i.index(data.len());
            data[i] = v;
        }
        let _ = parse(&data);
    }

    #[test]
    fn random_u64_fields_never_panic(at in any::<prop::sample::Index>(), v in any::<u64>()) {
        let mut data = valid_file().bytes();
        let i = at.index(data.len() - 8);
        data[i..i + 8].copy_from_slice(&v.to_le_bytes());
        let _ = parse(&data);
    }
}

// ---------------------------------------------------------------------------------------------
// `read`: errors carry the path; the config is built from the metadata.

fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn read_reports_parse_errors_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = File::new()
        .tensor("w", &[4], ggml::F32, 16)
        .tensor("w", &[4], ggml::F32, 16)
        .bytes();
    let path = write_temp(dir.path(), "dup.gguf", &bytes);
    match gguf::read(&path) {
        Err(Error::Gguf {
            path: p,
            kind: GgufError::DuplicateTensor { name },
        }) => {
            assert_eq!((p, name.as_str()), (path.clone(), "w"));
        }
        other => panic!("{other:?}"),
    }
    // Checkpoint::open dispatches on the magic and reports the same error.
    let mut f = valid_file();
    f.version = 0x0300_0000;
    let path = write_temp(dir.path(), "be.gguf", &f.bytes());
    assert!(matches!(
        Checkpoint::open(&path),
        Err(Error::Gguf {
            kind: GgufError::BigEndian {
                version: 0x0300_0000
            },
            ..
        })
    ));
}

#[test]
fn read_reports_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = File::new()
        .tensor("token_embd.weight", &[4, 8], ggml::F32, 128)
        .bytes();
    let path = write_temp(dir.path(), "noarch.gguf", &bytes);
    assert!(matches!(
        gguf::read(&path),
        Err(Error::Config {
            kind: ConfigError::Missing("general.architecture"),
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// Fixtures written by gguf-py (scripts/gen_fixtures.py).

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/gguf")
}

fn expected(file: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    all["files"][file].clone()
}

/// An array's elements as scalar values, for comparing them one by one.
fn elements(a: &GgufArray) -> Vec<GgufValue> {
    fn each<T: Copy>(v: &[T], f: fn(T) -> GgufValue) -> Vec<GgufValue> {
        v.iter().map(|&x| f(x)).collect()
    }
    match a {
        GgufArray::U8(v) => each(v, GgufValue::U8),
        GgufArray::I8(v) => each(v, GgufValue::I8),
        GgufArray::U16(v) => each(v, GgufValue::U16),
        GgufArray::I16(v) => each(v, GgufValue::I16),
        GgufArray::U32(v) => each(v, GgufValue::U32),
        GgufArray::I32(v) => each(v, GgufValue::I32),
        GgufArray::F32(v) => each(v, GgufValue::F32),
        GgufArray::Bool(v) => each(v, GgufValue::Bool),
        GgufArray::String(v) => v.iter().map(|s| GgufValue::String(s.into())).collect(),
        GgufArray::U64(v) => each(v, GgufValue::U64),
        GgufArray::I64(v) => each(v, GgufValue::I64),
        GgufArray::F64(v) => each(v, GgufValue::F64),
    }
}

/// Whether a gguf-py metadata value (`{"type": "UINT32", "value": 2}`, `ARRAY[STRING]`, …)
/// equals ours.
fn same_value(ty: &str, json: &serde_json::Value, v: &GgufValue) -> bool {
    if let Some(elem) = ty.strip_prefix("ARRAY[").and_then(|t| t.strip_suffix(']')) {
        return match (v, json.as_array()) {
            (GgufValue::Array(items), Some(want)) => {
                let items = elements(items);
                items.len() == want.len()
                    && items.iter().zip(want).all(|(i, w)| same_value(elem, w, i))
            }
            _ => false,
        };
    }
    match (ty, v) {
        ("STRING", GgufValue::String(s)) => json.as_str() == Some(s),
        ("BOOL", GgufValue::Bool(b)) => json.as_bool() == Some(*b),
        ("FLOAT32", GgufValue::F32(f)) => json.as_f64().map(|w| w as f32) == Some(*f),
        ("FLOAT64", GgufValue::F64(f)) => json.as_f64() == Some(*f),
        ("INT8" | "INT16" | "INT32" | "INT64", _) => match *v {
            GgufValue::I8(x) => json.as_i64() == Some(x.into()),
            GgufValue::I16(x) => json.as_i64() == Some(x.into()),
            GgufValue::I32(x) => json.as_i64() == Some(x.into()),
            GgufValue::I64(x) => json.as_i64() == Some(x),
            _ => false,
        },
        ("UINT8" | "UINT16" | "UINT32" | "UINT64", _) => {
            let wide = matches!(
                v,
                GgufValue::U8(_) | GgufValue::U16(_) | GgufValue::U32(_) | GgufValue::U64(_)
            );
            wide && json.as_u64() == v.as_u64()
        }
        _ => false,
    }
}

/// Parse a fixture and check its header, metadata and tensor infos against expected.json.
fn check_fixture_infos(file: &str) -> (GgufMetadata, Vec<GgufTensorInfo>) {
    let want = expected(file);
    let bytes = std::fs::read(fixture_dir().join(file)).unwrap();
    let (meta, infos) = parse(&bytes).unwrap();
    assert_eq!(meta.alignment, want["alignment"].as_u64().unwrap());
    assert_eq!(meta.data_offset, want["data_start"].as_u64().unwrap());
    let want_meta = want["metadata"].as_object().unwrap();
    for (key, spec) in want_meta {
        let v = meta
            .get(key)
            .unwrap_or_else(|| panic!("{file}: missing key {key}"));
        let ty = spec["type"].as_str().unwrap();
        assert!(
            same_value(ty, &spec["value"], v),
            "{file}: {key}: {ty} {} vs {v:?}",
            spec["value"]
        );
    }
    // gguf-py reports general.alignment only when present; the reader adds nothing else.
    assert_eq!(meta.entries.len(), want_meta.len(), "{file}: key count");
    let want_tensors = want["tensors"].as_object().unwrap();
    assert_eq!(infos.len(), want_tensors.len(), "{file}: tensor count");
    for t in &infos {
        let w = &want_tensors[&t.name];
        assert_eq!(t.dtype.name(), w["dtype"].as_str().unwrap(), "{}", t.name);
        let ne: Vec<u64> = w["ne"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        let shape: Vec<u64> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!((&t.ne, t.shape()), (&ne, shape), "{}", t.name);
        assert_eq!(
            t.absolute_offset,
            w["data_offset"].as_u64().unwrap(),
            "{}",
            t.name
        );
        assert_eq!(t.nbytes, w["n_bytes"].as_u64().unwrap(), "{}", t.name);
    }
    (meta, infos)
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn f32_sha(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    sha(&bytes)
}

fn head(w: &serde_json::Value) -> Vec<f32> {
    w["head"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn fixture_kquants_parses_like_gguf_py() {
    let (_, infos) = check_fixture_infos("kquants.gguf");
    let want = expected("kquants.gguf");
    let bytes = std::fs::read(fixture_dir().join("kquants.gguf")).unwrap();
    for t in &infos {
        let data = &bytes[t.absolute_offset as usize..(t.absolute_offset + t.nbytes) as usize];
        let mut out = vec![0f32; t.numel() as usize];
        qforge_codecs::decode_to_f32(t.dtype, data, &mut out).unwrap();
        let w = &want["tensors"][&t.name];
        let h = head(w);
        assert_eq!(&out[..h.len()], &h[..], "{}", t.name);
        assert_eq!(sha(data), w["sha256"].as_str().unwrap(), "{} bytes", t.name);
        assert_eq!(
            f32_sha(&out),
            w["f32_sha256"].as_str().unwrap(),
            "{} f32",
            t.name
        );
    }
}

#[test]
fn fixture_tiny_opens_as_a_checkpoint() {
    check_fixture_infos("tiny.gguf");
    let want = expected("tiny.gguf");
    let ck = Checkpoint::open(fixture_dir().join("tiny.gguf")).unwrap();
    assert_eq!(ck.format, Format::Gguf);
    assert_eq!(
        (
            ck.config.hidden_size,
            ck.config.num_layers,
            ck.config.vocab_size
        ),
        (32, 2, 128)
    );
    assert!(!ck.config.tie_word_embeddings);
    assert_eq!(ck.tokenizer.kind, "gguf:gpt2");
    assert_eq!(ck.tokenizer.pre.as_deref(), Some("llama-bpe"));
    assert_eq!(ck.tokenizer.vocab_size, Some(128));
    assert!(!ck.tokenizer.chat_template);
    assert!(ck.tokenizer.files.is_empty());
    assert_eq!(
        ck.gguf.as_ref().map(|m| m.data_offset),
        want["data_start"].as_u64()
    );
    let want_tensors = want["tensors"].as_object().unwrap();
    assert_eq!(ck.tensors.len(), want_tensors.len());
    for (name, w) in want_tensors {
        let t = ck.tensor(name).unwrap_or_else(|| panic!("missing {name}"));
        let shape: Vec<u64> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(
            (t.dtype.name(), &t.shape),
            (w["dtype"].as_str().unwrap(), &shape),
            "{name}"
        );
        match &t.layout {
            TensorLayout::Contiguous(span) => {
                assert_eq!(
                    (span.file, span.offset, span.len),
                    (0, w["data_offset"].as_u64().unwrap(), t.nbytes())
                );
            }
            other => panic!("{name}: {other:?}"),
        }
        let values = ck.to_f32(t).unwrap();
        let h = head(w);
        assert_eq!(&values[..h.len()], &h[..], "{name}");
        let bytes = ck.bytes(t).unwrap();
        assert_eq!(sha(&bytes), w["sha256"].as_str().unwrap(), "{name} bytes");
        assert_eq!(
            f32_sha(&values),
            w["f32_sha256"].as_str().unwrap(),
            "{name} f32"
        );
    }
}
