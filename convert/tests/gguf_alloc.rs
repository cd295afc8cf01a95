//! Memory bound of the GGUF reader: the peak heap allocated while [`gguf::parse`] runs is at
//! most the file size plus 64 KiB, for hostile inputs (huge declared counts, files that are one
//! giant array or string) as for real files. Files made of nothing but tiny key/value pairs or
//! tensor infos are the exception: each of those costs a fixed-size struct in memory, bigger
//! than its bytes in the file, and the bound there is a stated multiple of the file size (the
//! caps on `kv_count` and `tensor_count` keep it finite in absolute terms too).
//!
//! A counting global allocator measures the peak. It counts only the allocations of a thread
//! that is measuring (a thread-local flag), and measurements are serialized by a mutex, so the
//! test threads that build inputs meanwhile do not disturb the figures.

#![allow(unsafe_code)] // the counting `GlobalAlloc` (support/counting_alloc.rs) is unsafe by definition

use std::path::{Path, PathBuf};

use qforge_convert::gguf::{self, GgufArray, GgufTensorInfo, GgufValue};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

/// Peak bytes allocated during `gguf::parse(bytes)` (its result included, which is dropped
/// after the measurement), and whether it succeeded.
fn peak_of_parse(bytes: &[u8]) -> (usize, bool) {
    let (peak, result, _) = counting_alloc::measure(|| gguf::parse(bytes));
    let ok = result.is_ok();
    drop(result);
    (peak, ok)
}

/// Slack allowed above the file size: the few small vectors and strings any parse allocates.
const SLACK: usize = 64 << 10;

/// How much memory a case may use.
#[derive(Clone, Copy, Debug)]
enum Bound {
    /// At most the file size plus [`SLACK`].
    FileSize,
    /// At most this many times the file size, plus [`SLACK`]: files of nothing but tiny
    /// entries, where per-entry structs outweigh the bytes (see each use).
    Times(usize),
}

/// Measure `bytes`, print the figures and check `bound`. `ok` is whether it must parse.
fn check(name: &str, bytes: &[u8], ok: bool, bound: Bound) {
    let (peak, parsed) = peak_of_parse(bytes);
    let len = bytes.len();
    eprintln!(
        "gguf_alloc: {name:<40} file {len:>10} B  peak {peak:>10} B  ({:.3} x file){}",
        peak as f64 / len.max(1) as f64,
        if parsed { "" } else { "  [refused]" },
    );
    assert_eq!(parsed, ok, "{name}: parsed");
    let limit = match bound {
        Bound::FileSize => len + SLACK,
        Bound::Times(k) => k * len + SLACK,
    };
    assert!(
        peak <= limit,
        "{name}: peak {peak} B > {limit} B ({bound:?}) for a {len}-byte file"
    );
}

/// Tiny GGUF byte builders (each test binary owns its helpers).
mod build {
    pub mod ty {
        pub const U8: u32 = 0;
        pub const I32: u32 = 5;
        pub const F32: u32 = 6;
        pub const BOOL: u32 = 7;
        pub const STRING: u32 = 8;
        pub const ARRAY: u32 = 9;
        pub const U32: u32 = 4;
        pub const U64: u32 = 10;
        pub const F64: u32 = 12;
    }

    pub mod ggml {
        pub const F32: u32 = 0;
        pub const F16: u32 = 1;
        pub const Q4_0: u32 = 2;
        pub const I8: u32 = 24;
    }

    pub fn string(s: &[u8]) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(s);
        out
    }

    pub fn kv_raw(key: &[u8], ty: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = string(key);
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

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

    pub fn pad(out: &mut Vec<u8>, align: usize) {
        while out.len() % align != 0 {
            out.push(0);
        }
    }

    /// A GGUF file under construction; counts default to the number of items added.
    #[derive(Clone)]
    pub struct File {
        pub tensor_count: Option<u64>,
        pub kv_count: Option<u64>,
        pub kvs: Vec<u8>,
        pub n_kvs: u64,
        pub infos: Vec<u8>,
        pub n_infos: u64,
        pub align: usize,
        pub data: Vec<u8>,
    }

    impl File {
        pub fn new() -> Self {
            File {
                tensor_count: None,
                kv_count: None,
                kvs: Vec::new(),
                n_kvs: 0,
                infos: Vec::new(),
                n_infos: 0,
                align: 32,
                data: Vec::new(),
            }
        }

        pub fn kv(mut self, kv: Vec<u8>) -> Self {
            self.kvs.extend(kv);
            self.n_kvs += 1;
            self
        }

        pub fn info(mut self, info: Vec<u8>) -> Self {
            self.infos.extend(info);
            self.n_infos += 1;
            self
        }

        /// A tensor the way writers place it: next aligned offset, `nbytes` of data, padding.
        pub fn tensor(self, name: &str, ne: &[i64], ggml_type: u32, nbytes: usize) -> Self {
            let offset = self.data.len() as u64;
            let mut f = self.info(info(name.as_bytes(), ne, ggml_type, offset));
            f.data.resize(f.data.len() + nbytes, 0x5a);
            pad(&mut f.data, f.align);
            f
        }

        pub fn bytes(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend_from_slice(&3u32.to_le_bytes());
            out.extend_from_slice(&self.tensor_count.unwrap_or(self.n_infos).to_le_bytes());
            out.extend_from_slice(&self.kv_count.unwrap_or(self.n_kvs).to_le_bytes());
            out.extend_from_slice(&self.kvs);
            out.extend_from_slice(&self.infos);
            if self.n_infos > 0 {
                pad(&mut out, self.align);
            }
            out.extend_from_slice(&self.data);
            out
        }
    }
}

use build::{array, ggml, info, kv, kv_raw, string, ty, File};

/// 16 MiB: the size of the big hostile files.
const BIG: usize = 16 << 20;

/// The hand-built valid file of gguf_hostile.rs: metadata of several types, three tensors.
fn valid_file() -> File {
    let mut strings = string(b"alpha");
    strings.extend(string("\u{e9}t\u{e9}".as_bytes()));
    strings.extend(string(b""));
    let ints: Vec<u8> = [1i32, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    File::new()
        .kv(kv("general.architecture", ty::STRING, &string(b"llama")))
        .kv(kv("t.u8", ty::U8, &[200]))
        .kv(kv("t.u32", ty::U32, &4_000_000_000u32.to_le_bytes()))
        .kv(kv("t.f32", ty::F32, &1.5f32.to_le_bytes()))
        .kv(kv("t.true", ty::BOOL, &[1]))
        .kv(kv("t.u64", ty::U64, &(u64::MAX - 1).to_le_bytes()))
        .kv(kv("t.f64", ty::F64, &(-0.25f64).to_le_bytes()))
        .kv(kv("t.ints", ty::ARRAY, &array(ty::I32, 3, &ints)))
        .kv(kv("t.strings", ty::ARRAY, &array(ty::STRING, 3, &strings)))
        .kv(kv("t.empty", ty::ARRAY, &array(ty::F64, 0, &[])))
        .tensor("a", &[4, 2], ggml::F32, 32)
        .tensor("b", &[32, 1], ggml::Q4_0, 18)
        .tensor("c", &[3], ggml::F16, 6)
}

/// A file whose only tensor info is `info`, followed by `data_len` bytes of data.
fn with_info(info: Vec<u8>, data_len: usize) -> Vec<u8> {
    let mut f = File::new().info(info);
    f.data = vec![0; data_len];
    f.bytes()
}

/// The `n` shortest distinct keys (or tensor names): non-NUL ASCII strings in order of length.
fn short_names(n: usize) -> Vec<Vec<u8>> {
    let alphabet: Vec<u8> = (1..=127).collect();
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(n);
    let mut level: Vec<Vec<u8>> = vec![Vec::new()];
    while out.len() < n {
        let mut next = Vec::new();
        for prefix in &level {
            for &c in &alphabet {
                let mut s = prefix.clone();
                s.push(c);
                next.push(s);
            }
        }
        out.extend(next.iter().take(n - out.len()).cloned());
        level = next;
    }
    out
}

#[test]
fn hostile_headers_and_values() {
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut f = valid_file();
    f.tensor_count = Some(1 << 60);
    cases.push(("tensor_count 2^60", f.bytes()));
    let mut f = valid_file();
    f.kv_count = Some(1 << 60);
    cases.push(("kv_count 2^60", f.bytes()));
    let mut f = valid_file();
    f.kv_count = Some(11); // the 11th key/value is read from the tensor infos
    cases.push(("kv_count one too many", f.bytes()));
    let mut f = File::new().kv(kv("pad", ty::STRING, &string(&[b'x'; 200])));
    f.tensor_count = Some(5);
    cases.push(("tensor_count too large after metadata", f.bytes()));
    let mut key = (1u64 << 60).to_le_bytes().to_vec();
    key.extend_from_slice(b"general.name");
    let mut f = File::new();
    f.kvs = key;
    f.n_kvs = 1;
    cases.push(("string length 2^60", f.bytes()));
    let mut payload = ((1u64 << 30) + 1).to_le_bytes().to_vec();
    payload.push(b'x');
    cases.push((
        "string length 2^30 + 1",
        File::new().kv(kv("k", ty::STRING, &payload)).bytes(),
    ));
    cases.push((
        "array of 2^60 strings",
        File::new()
            .kv(kv(
                "a",
                ty::ARRAY,
                &array(ty::STRING, 1 << 60, &string(b"x")),
            ))
            .bytes(),
    ));
    cases.push((
        "array of 2^60 u64",
        File::new()
            .kv(kv("a", ty::ARRAY, &array(ty::U64, 1 << 60, &[0; 64])))
            .bytes(),
    ));
    cases.push((
        "array count past the end",
        File::new()
            .kv(kv("a", ty::ARRAY, &array(ty::U32, 100, &[0; 40])))
            .bytes(),
    ));
    cases.push((
        "nested array",
        File::new()
            .kv(kv(
                "a",
                ty::ARRAY,
                &array(ty::ARRAY, 1, &array(ty::U8, 1, &[5])),
            ))
            .bytes(),
    ));
    cases.push((
        "value type 13",
        File::new().kv(kv("a", 13, &[0; 8])).bytes(),
    ));
    cases.push((
        "bool array with 0xff",
        File::new()
            .kv(kv("b", ty::ARRAY, &array(ty::BOOL, 3, &[1, 0, 0xFF])))
            .bytes(),
    ));
    cases.push((
        "duplicate key",
        File::new()
            .kv(kv("general.name", ty::U8, &[1]))
            .kv(kv("general.name", ty::U8, &[2]))
            .bytes(),
    ));
    cases.push(("empty key", File::new().kv(kv("", ty::U8, &[1])).bytes()));
    cases.push((
        "invalid UTF-8 key",
        File::new()
            .kv(kv_raw(b"general.\xff", ty::U8, &[1]))
            .bytes(),
    ));
    cases.push((
        "NUL in key",
        File::new().kv(kv_raw(b"a\0b", ty::U8, &[1])).bytes(),
    ));
    cases.push((
        "tensor name of 64 bytes",
        File::new()
            .tensor(&"n".repeat(64), &[1], ggml::F32, 4)
            .bytes(),
    ));
    cases.push((
        "five dimensions",
        with_info(info(b"t", &[1, 1, 1, 1, 1], ggml::F32, 0), 4),
    ));
    cases.push((
        "negative dimension",
        with_info(info(b"t", &[4, -1], ggml::F32, 0), 16),
    ));
    cases.push((
        "dimension product overflow",
        with_info(info(b"t", &[1 << 32, 1 << 32], ggml::F32, 0), 16),
    ));
    cases.push((
        "tensor of 2^60 bytes",
        with_info(info(b"t", &[1 << 40, 1 << 20], ggml::F32, 0), 64),
    ));
    cases.push((
        "unknown ggml type",
        with_info(info(b"t", &[32], u32::MAX, 0), 64),
    ));
    cases.push((
        "duplicate tensor",
        File::new()
            .tensor("w", &[4], ggml::F32, 16)
            .tensor("w", &[4], ggml::F32, 16)
            .bytes(),
    ));
    cases.push((
        "offset out of order",
        File::new()
            .info(info(b"a", &[4], ggml::F32, 32))
            .info(info(b"b", &[4], ggml::F32, 0))
            .bytes(),
    ));
    for (name, bytes) in &cases {
        check(name, bytes, false, Bound::FileSize);
    }
    check(
        "valid hand-built file",
        &valid_file().bytes(),
        true,
        Bound::FileSize,
    );
}

#[test]
fn one_giant_value() {
    // Header (24) + key "a" (9) + type (4) + element type and count (12): 49 bytes.
    let n = (BIG - 49) as u64;
    let bytes = File::new()
        .kv(kv("a", ty::ARRAY, &array(ty::U8, n, &vec![7; n as usize])))
        .bytes();
    check("u8 array of 16M elements", &bytes, true, Bound::FileSize);

    let n = (BIG - 49) as u64 / 4;
    let bytes = File::new()
        .kv(kv(
            "a",
            ty::ARRAY,
            &array(ty::F32, n, &vec![0; 4 * n as usize]),
        ))
        .bytes();
    check("f32 array of 4M elements", &bytes, true, Bound::FileSize);

    let n = (BIG - 49) as u64 / 8;
    let bytes = File::new()
        .kv(kv(
            "a",
            ty::ARRAY,
            &array(ty::U64, n, &vec![0; 8 * n as usize]),
        ))
        .bytes();
    check("u64 array of 2M elements", &bytes, true, Bound::FileSize);

    let n = (BIG - 49) as u64;
    let bytes = File::new()
        .kv(kv(
            "a",
            ty::ARRAY,
            &array(ty::BOOL, n, &vec![1; n as usize]),
        ))
        .bytes();
    check("bool array of 16M elements", &bytes, true, Bound::FileSize);

    // Each empty string is an 8-byte length prefix in the file and an 8-byte end in memory.
    let n = (BIG - 49) / 8;
    let bytes = File::new()
        .kv(kv(
            "a",
            ty::ARRAY,
            &array(ty::STRING, n as u64, &vec![0; 8 * n]),
        ))
        .bytes();
    check(
        "string array of 2M empty strings",
        &bytes,
        true,
        Bound::FileSize,
    );

    let n = (BIG - 49) / 9;
    let items: Vec<u8> = (0..n).flat_map(|_| string(b"x")).collect();
    let bytes = File::new()
        .kv(kv("a", ty::ARRAY, &array(ty::STRING, n as u64, &items)))
        .bytes();
    check(
        "string array of 1.8M 1-byte strings",
        &bytes,
        true,
        Bound::FileSize,
    );

    // The same, with the count one too many: refused after the scan, before allocating.
    let bytes = File::new()
        .kv(kv("a", ty::ARRAY, &array(ty::STRING, n as u64 + 1, &items)))
        .bytes();
    check(
        "string array, count one too many",
        &bytes,
        false,
        Bound::FileSize,
    );

    // Header (24) + key "a" (9) + type (4) + length (8): 45 bytes.
    let bytes = File::new()
        .kv(kv("a", ty::STRING, &string(&vec![b'z'; BIG - 45])))
        .bytes();
    check("one 16 MiB string", &bytes, true, Bound::FileSize);
}

#[test]
fn plausible_counts_over_zeros() {
    // Counts as large as the file allows, over 16 MiB of zero bytes. A zero key/value has an
    // empty key (refused at once); zero tensor infos are valid-looking unnamed F32 scalars, all
    // read before the duplicate-name check, so that case costs what many tiny infos cost (see
    // `many_tiny_tensor_infos`).
    let mut f = File::new();
    f.kv_count = Some(gguf::MAX_KV_COUNT);
    f.data = vec![0; BIG];
    check(
        "kv_count 2^16 over zeros",
        &f.bytes(),
        false,
        Bound::FileSize,
    );

    let mut f = File::new();
    f.tensor_count = Some((BIG / 24) as u64);
    f.data = vec![0; BIG];
    check(
        "tensor_count 699050 over zeros",
        &f.bytes(),
        false,
        Bound::Times(4),
    );
}

#[test]
fn many_tiny_key_values() {
    // The worst case per byte: 2^16 (the cap) `u8` pairs with the shortest distinct keys
    // (127 of 1 byte, then 2 and 3 bytes): 13 + key bytes each in the file, but 64 bytes of
    // (String, GgufValue) + the key's bytes + 8 for the duplicate check in memory, about 4.7
    // times as much. Bounded in absolute terms by MAX_KV_COUNT: about 5 MiB.
    let mut f = File::new();
    for (i, key) in short_names(gguf::MAX_KV_COUNT as usize).iter().enumerate() {
        f = f.kv(kv_raw(key, ty::U8, &[i as u8]));
    }
    check("2^16 tiny key/values", &f.bytes(), true, Bound::Times(5));
    // Counted but not present: the entries are reserved for the count the file can hold (13
    // bytes each) and then the reading fails. 72 bytes reserved per 13 in the file: 5.5 times.
    let mut bytes = f.bytes();
    let kv_start = 24;
    bytes.truncate(kv_start + gguf::MAX_KV_COUNT as usize * 13);
    bytes[kv_start..].fill(0xff);
    check(
        "2^16 key/values declared, absent",
        &bytes,
        false,
        Bound::Times(6),
    );
}

#[test]
fn many_tiny_tensor_infos() {
    // 2^20 (the cap) one-byte scalars with the shortest distinct names and alignment 1: 24 +
    // name bytes + 1 byte of data each in the file; 80 bytes of GgufTensorInfo + the name's
    // bytes + 8 for the duplicate check in memory, about 3.2 times as much. Bounded in absolute
    // terms by MAX_TENSOR_COUNT: about 90 MiB, for a file of at least 28 MiB.
    let mut f = File::new().kv(kv("general.alignment", ty::U32, &1u32.to_le_bytes()));
    f.align = 1;
    for name in short_names(gguf::MAX_TENSOR_COUNT as usize) {
        let offset = f.data.len() as u64;
        f = f.info(info(&name, &[], ggml::I8, offset));
        f.data.push(0);
    }
    check("2^20 tiny tensor infos", &f.bytes(), true, Bound::Times(4));
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny/gguf")
        .join(name)
}

#[test]
fn real_fixture_files() {
    for name in ["tiny.gguf", "kquants.gguf"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        check(name, &bytes, true, Bound::FileSize);
    }
}

#[path = "support/cache_dir.rs"]
mod cache_dir;
use cache_dir::cache_dir;

#[test]
fn real_smollm2_file() {
    let smol = cache_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !smol.is_file() {
        // scripts/test.sh fetches the data before `cargo test`, so under CI a missing file is a
        // broken setup, not a skip.
        let required = std::env::var("CI").as_deref() == Ok("true")
            || std::env::var("QFORGE_REQUIRE_DATA").as_deref() == Ok("1");
        assert!(
            !required,
            "{} not found (CI=true or QFORGE_REQUIRE_DATA=1): run scripts/fetch-data.sh",
            smol.display()
        );
        eprintln!(
            "gguf_alloc: NOT RUN: {} not found (scripts/fetch-data.sh fetches it; \
             CI=true or QFORGE_REQUIRE_DATA=1 makes this a failure)",
            smol.display()
        );
        return;
    }
    let bytes = std::fs::read(&smol).unwrap();
    check(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        &bytes,
        true,
        Bound::FileSize,
    );
    // The big arrays really are there, compactly.
    let (meta, infos): (_, Vec<GgufTensorInfo>) = gguf::parse(&bytes).unwrap();
    let tokens = meta
        .get("tokenizer.ggml.tokens")
        .and_then(GgufValue::as_array);
    assert!(matches!(tokens, Some(GgufArray::String(t)) if t.len() == 49152));
    assert!(!infos.is_empty());
}

#[test]
fn struct_sizes_behind_the_bounds() {
    // The per-entry figures quoted above; if these grow, the bounds must be re-derived.
    let sizes = (
        size_of::<(String, GgufValue)>(),
        size_of::<GgufTensorInfo>(),
        size_of::<GgufArray>(),
    );
    eprintln!("gguf_alloc: (String, GgufValue), GgufTensorInfo, GgufArray = {sizes:?} bytes");
    assert!(sizes.0 <= 64 && sizes.1 <= 80, "{sizes:?}");
}
