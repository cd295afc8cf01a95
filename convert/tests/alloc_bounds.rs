//! Memory bounds of the safetensors and `.pth` readers, measured the way `gguf_alloc.rs` measures
//! the GGUF reader: a counting global allocator records the peak heap allocated while one
//! [`Checkpoint::open`] (a safetensors model directory, with its index and tokenizer files) or
//! [`parse_state_dict`] (`.pth`) runs, its result included.
//!
//! The bound is the size of the file under test plus [`SLACK`] for hostile inputs (impossible
//! lengths and counts, one giant string, deep nesting) as for real files. Where a file is
//! nothing but tiny entries, each of which costs a fixed-size struct bigger than its bytes in
//! the file, the bound is a stated multiple of the file size, justified at each use; the
//! readers' caps keep those finite in absolute terms as well. A pickle is the extreme case: one
//! opcode byte can make a 32-byte value (see [`STATED_PICKLE`]). Every case must also finish
//! quickly (see [`TIME_LIMIT`]).
//!
//! The allocator counts only the allocations of a thread that is measuring (a thread-local
//! flag), and measurements are serialized by a mutex, so test threads that build inputs
//! meanwhile do not disturb the figures. Model files are memory-mapped by the readers and `.pth`
//! images are built before the measurement starts, so their bytes are not part of the peak; the
//! JSON side files (index, tokenizer) are read whole, and are.

#![allow(unsafe_code)] // the counting `GlobalAlloc` (support/counting_alloc.rs) is unsafe by definition

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qforge_convert::hf::SafetensorsError;
use qforge_convert::pth::pickle::{
    MAX_DIMS, MAX_ITEMS, MAX_MEMO, MAX_MEMO_ALIASES, MAX_STACK, MAX_STORAGE_KEY,
};
use qforge_convert::pth::{parse_state_dict, PthError, PthFile};
use qforge_convert::{Checkpoint, Error};

// ---------------------------------------------------------------------------------------------
// the counting allocator

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{measure, Cost};

// ---------------------------------------------------------------------------------------------
// bounds and the report

/// Slack allowed above the file size: the paths, small vectors and error strings any open
/// allocates.
const SLACK: usize = 1 << 20;

/// Most CPU time one case may use (debug build; the slowest, 500k tensors, takes about 3 s).
/// CPU time of the reading thread, not wall time, so a busy machine cannot fail it (wall time
/// over the limit only prints a "starved" note). Work that grows faster than the input shows
/// up as minutes: before the memo-alias cap, 3 MB of pickle took 100 s in a release build.
const TIME_LIMIT: Duration = Duration::from_secs(10);

/// How much memory a case may use.
#[derive(Clone, Copy, Debug)]
enum Bound {
    /// At most the file size plus [`SLACK`].
    FileSize,
    /// At most this many times the file size, plus [`SLACK`]: files of nothing but tiny
    /// entries, where per-entry structs outweigh the bytes (see each use).
    Times(usize),
}

/// One measured case.
struct Row {
    name: String,
    len: usize,
    peak: usize,
    cost: Cost,
    outcome: String,
}

/// Check one measurement against `bound` and [`TIME_LIMIT`], and print it.
fn check(row: &Row, bound: Bound) {
    let Row {
        name,
        len,
        peak,
        cost,
        outcome,
    } = row;
    eprintln!(
        "alloc_bounds: {name:<46} file {len:>10} B  peak {peak:>10} B  ({:>7.3} x file)  {:>6.0} ms CPU  {outcome}",
        *peak as f64 / (*len).max(1) as f64,
        cost.cpu.as_secs_f64() * 1e3,
    );
    let limit = match bound {
        Bound::FileSize => len + SLACK,
        Bound::Times(k) => k * len + SLACK,
    };
    assert!(
        *peak <= limit,
        "{name}: peak {peak} B > {limit} B ({bound:?}) for a {len}-byte file"
    );
    if let Err(e) = cost.check(TIME_LIMIT) {
        panic!("{name}: {e}");
    }
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny")
        .join(rel)
}

// ---------------------------------------------------------------------------------------------
// safetensors

/// Safetensors bytes: header length, `header`, then `data_len` zero bytes of data.
fn st(header: &[u8], data_len: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.resize(b.len() + data_len, 0);
    b
}

/// A model directory holding the tiny fixture's `config.json` and the `files` given.
fn model_dir(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("hf/config.json"), dir.path().join("config.json")).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}

/// Measure `Checkpoint::open` on `dir` (written beforehand); `len` is the size of the file
/// under test.
fn measure_open(name: &str, dir: &Path, len: usize) -> (Row, Result<Checkpoint, Error>) {
    let (peak, result, cost) = measure(|| Checkpoint::open(dir));
    let outcome = match &result {
        Ok(c) => format!("ok, {} tensors", c.tensors.len()),
        Err(Error::Safetensors { kind, .. }) => clip(&format!("{kind:?}")),
        Err(e) => clip(&format!("{e}")),
    };
    let row = Row {
        name: name.into(),
        len,
        peak,
        cost,
        outcome,
    };
    (row, result)
}

/// Measure `bytes` as the `model.safetensors` of a model directory.
fn measure_safetensors(name: &str, bytes: &[u8]) -> (Row, Result<Checkpoint, Error>) {
    let dir = model_dir(&[("model.safetensors", bytes)]);
    measure_open(name, dir.path(), bytes.len())
}

/// The safetensors error of `r`.
fn st_kind(r: &Result<Checkpoint, Error>) -> &SafetensorsError {
    match r {
        Err(Error::Safetensors { kind, .. }) => kind,
        other => panic!("expected a safetensors error, got {other:?}"),
    }
}

/// Error texts can hold hostile names: keep the report short.
fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

/// 16 MiB: the size of the big hostile files.
const BIG: usize = 16 << 20;

/// `fmt::Write` into a byte vector.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[test]
fn safetensors_header_lengths() {
    for (name, len, want) in [
        (
            "header length 2^40",
            1u64 << 40,
            SafetensorsError::HeaderTooLarge,
        ),
        (
            "header length 2^64 - 1",
            u64::MAX,
            SafetensorsError::HeaderTooLarge,
        ),
        // Just under the 100 MB cap, far past the end of the file.
        (
            "header length 10^8, past EOF",
            100_000_000,
            SafetensorsError::HeaderPastEof,
        ),
        (
            "header length 1000, past EOF",
            1000,
            SafetensorsError::HeaderPastEof,
        ),
    ] {
        let mut b = len.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        let (row, r) = measure_safetensors(name, &b);
        assert_eq!(st_kind(&r), &want, "{name}");
        check(&row, Bound::FileSize);
    }
}

#[test]
fn safetensors_giant_strings() {
    // A header that is one 16 MiB JSON string: refused without quoting it in the error.
    let mut h = vec![b'x'; BIG];
    h[0] = b'"';
    h[BIG - 1] = b'"';
    let (row, r) = measure_safetensors("16 MiB header: one JSON string", &st(&h, 0));
    assert!(matches!(st_kind(&r), SafetensorsError::InvalidHeader(_)));
    check(&row, Bound::FileSize);

    // The same string as the dtype of a tensor.
    let mut h = br#"{"a":{"shape":[0],"data_offsets":[0,0],"dtype":""#.to_vec();
    h.resize(BIG - 3, b'd');
    h.extend_from_slice(b"\"}}");
    let (row, r) = measure_safetensors("16 MiB dtype string", &st(&h, 0));
    assert!(matches!(st_kind(&r), SafetensorsError::InvalidHeader(_)));
    check(&row, Bound::FileSize);

    // As a shape.
    let mut h = br#"{"a":{"dtype":"U8","data_offsets":[0,0],"shape":""#.to_vec();
    h.resize(BIG - 3, b's');
    h.extend_from_slice(b"\"}}");
    let (row, r) = measure_safetensors("16 MiB shape string", &st(&h, 0));
    assert!(matches!(st_kind(&r), SafetensorsError::InvalidHeader(_)));
    check(&row, Bound::FileSize);

    // As a metadata value (valid: no tensors, so the model is incomplete).
    let mut h = br#"{"__metadata__":{"k":""#.to_vec();
    h.resize(BIG - 3, b'v');
    h.extend_from_slice(b"\"}}");
    let (row, r) = measure_safetensors("16 MiB __metadata__ value", &st(&h, 0));
    assert!(matches!(r, Err(Error::MissingTensor { .. })), "{r:?}");
    check(&row, Bound::FileSize);

    // As a tensor name: a valid empty tensor the model does not know. The name is kept once by
    // the tensor and copied once more by `Checkpoint`'s duplicate-name set: twice the file.
    let mut h = b"{\"".to_vec();
    h.resize(BIG - 60, b'n');
    h.extend_from_slice(br#"":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#);
    let (row, r) = measure_safetensors("16 MiB tensor name", &st(&h, 0));
    assert!(matches!(r, Err(Error::UnknownTensor { .. })), "{r:?}");
    check(&row, Bound::Times(2));

    // Escaped (`\u0041`, 6 bytes for 1): unescaping only shrinks it.
    let mut h = b"{\"".to_vec();
    while h.len() < BIG - 60 {
        h.extend_from_slice(b"\\u0041");
    }
    h.extend_from_slice(br#"":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#);
    let (row, r) = measure_safetensors("16 MiB escaped tensor name", &st(&h, 0));
    assert!(matches!(r, Err(Error::UnknownTensor { .. })), "{r:?}");
    check(&row, Bound::FileSize);
}

#[test]
fn safetensors_deep_nesting() {
    // serde_json stops at 128 levels of typed values: an error, not a stack overflow. Ignored
    // values (unknown fields) are skipped without recursion, one byte of state per level.
    let n = 1_000_000;
    let nest = |open: &[u8], close: u8| {
        let mut v = Vec::with_capacity(n * (open.len() + 1));
        for _ in 0..n {
            v.extend_from_slice(open);
        }
        v.extend(std::iter::repeat_n(close, n));
        v
    };
    let arrays = nest(b"[", b']');
    let objects = nest(b"{\"k\":", b'}');
    let cases = [
        ("1M nested arrays as the header", arrays.clone()),
        (
            "1M nested arrays as a shape",
            [
                &br#"{"a":{"dtype":"U8","data_offsets":[0,0],"shape":"#[..],
                &arrays,
                b"}}",
            ]
            .concat(),
        ),
        (
            "1M nested objects in __metadata__",
            [&br#"{"__metadata__":{"k":"#[..], &objects, b"}}"].concat(),
        ),
    ];
    for (name, h) in cases {
        let (row, r) = measure_safetensors(name, &st(&h, 0));
        assert!(matches!(st_kind(&r), SafetensorsError::InvalidHeader(_)));
        check(&row, Bound::FileSize);
    }
    // An unknown field is valid JSON and skipped: the tensor is then unknown to the model.
    let h = [
        &br#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":"#[..],
        &arrays,
        b"}}",
    ]
    .concat();
    let (row, r) = measure_safetensors("1M nested arrays in an unknown field", &st(&h, 0));
    assert!(matches!(r, Err(Error::UnknownTensor { .. })), "{r:?}");
    check(&row, Bound::FileSize);
    // Unclosed: the nesting limit trips long before the end of the input.
    let (row, r) = measure_safetensors("16M unclosed [", &st(&vec![b'['; BIG], 0));
    assert!(matches!(st_kind(&r), SafetensorsError::InvalidHeader(_)));
    check(&row, Bound::FileSize);
}

/// A header of `n` tiny U8 tensors named by their index in hex, with contiguous offsets and
/// shapes `[1]` and `[0]` in turn, and the data length it implies.
fn tiny_tensors(n: usize) -> (Vec<u8>, usize) {
    let mut h = b"{".to_vec();
    let mut offset = 0usize;
    for i in 0..n {
        let len = i % 2;
        if i > 0 {
            h.push(b',');
        }
        write!(
            Bytes(&mut h),
            r#""{i:x}":{{"dtype":"U8","shape":[{len}],"data_offsets":[{offset},{}]}}"#,
            offset + len
        )
        .unwrap();
        offset += len;
    }
    h.push(b'}');
    (h, offset)
}

#[test]
fn safetensors_many_tiny_entries() {
    // 500k one-byte or empty U8 tensors: 62 bytes of header each on average. Each costs a
    // 72-byte parsed entry (name borrowed from the header, a one-dimension shape of 8 bytes) and
    // then a `RawTensor` of about 120 bytes, with the entries still held; `Checkpoint::assemble`
    // then reserves its tensor list, name set and role map for all of them (about 250 bytes a
    // tensor) before refusing the first unknown name. About 7 times the file, 9 for the
    // shortest possible entries (49 bytes); the 100 MB header cap bounds it in absolute terms.
    let (h, data) = tiny_tensors(500_000);
    let (row, r) = measure_safetensors("500k tiny tensors", &st(&h, data));
    assert!(matches!(r, Err(Error::UnknownTensor { .. })), "{r:?}");
    check(&row, Bound::Times(STATED_TINY_TENSORS));

    // The same with a duplicate name at the very end: refused after parsing, before the
    // tensors are built (parsed entries and 8 bytes a tensor for the duplicate search).
    let (mut h, data) = tiny_tensors(50_000);
    h.pop();
    write!(
        Bytes(&mut h),
        r#","0":{{"dtype":"U8","shape":[0],"data_offsets":[{data},{data}]}}}}"#
    )
    .unwrap();
    let (row, r) = measure_safetensors("50k tiny tensors, last one duplicate", &st(&h, data));
    assert_eq!(
        st_kind(&r),
        &SafetensorsError::DuplicateName("0".to_owned())
    );
    check(&row, Bound::Times(2));

    // Keys that are not tensors: the entries are reserved for as many tensors as the
    // header could hold (49 bytes each, 72 bytes reserved), then the first value is refused.
    let mut h = b"{".to_vec();
    for i in 0..300_000u32 {
        if i > 0 {
            h.push(b',');
        }
        write!(Bytes(&mut h), r#""{i:x}":0"#).unwrap();
    }
    h.push(b'}');
    let (row, r) = measure_safetensors("300k keys with number values", &st(&h, 0));
    assert!(matches!(st_kind(&r), SafetensorsError::InvalidHeader(_)));
    check(&row, Bound::Times(2));

    // 300k tiny metadata pairs: checked, never kept.
    let mut h = br#"{"__metadata__":{"#.to_vec();
    for i in 0..300_000u32 {
        if i > 0 {
            h.push(b',');
        }
        write!(Bytes(&mut h), r#""{i:x}":"""#).unwrap();
    }
    h.extend_from_slice(b"}}");
    let (row, r) = measure_safetensors("300k tiny __metadata__ pairs", &st(&h, 0));
    assert!(matches!(r, Err(Error::MissingTensor { .. })), "{r:?}");
    check(&row, Bound::FileSize);
}

/// See `safetensors_many_tiny_entries`.
const STATED_TINY_TENSORS: usize = 10;

#[test]
fn safetensors_duplicates_and_real_file() {
    let h = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
    let (row, r) = measure_safetensors("duplicate names", &st(h, 2));
    assert_eq!(
        st_kind(&r),
        &SafetensorsError::DuplicateName("a".to_owned())
    );
    check(&row, Bound::FileSize);

    // The real file, with its tokenizer files.
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixture(&format!("hf/{f}")), dir.path().join(f)).unwrap();
    }
    let len = std::fs::metadata(dir.path().join("model.safetensors"))
        .unwrap()
        .len() as usize;
    let (row, r) = measure_open("fixture hf/ (model.safetensors)", dir.path(), len);
    assert_eq!(r.unwrap().tensors.len(), 21);
    check(&row, Bound::FileSize);
}

#[test]
fn hf_side_files() {
    let model = std::fs::read(fixture("hf/model.safetensors")).unwrap();
    let with =
        |file: &str, bytes: &[u8]| model_dir(&[("model.safetensors", &model), (file, bytes)]);

    // A 1M-element array: a `serde_json::Value` tree of it would be over 100 times its size.
    let mut array = b"[".to_vec();
    array.extend(std::iter::repeat_n(*b"0,", 1 << 20).flatten());
    array.extend_from_slice(b"0]");
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        let dir = with(file, &array);
        let (row, r) = measure_open(
            &format!("{file}: 1M-element array"),
            dir.path(),
            array.len(),
        );
        assert!(r.is_ok(), "{r:?}");
        check(&row, Bound::FileSize);
    }
    // One 16 MiB string, and deep nesting, where the summary looks.
    let mut s = br#"{"model":{"type":""#.to_vec();
    s.resize(BIG, b't');
    s.extend_from_slice(br#""}}"#);
    let dir = with("tokenizer.json", &s);
    let (row, r) = measure_open("tokenizer.json: 16 MiB model type", dir.path(), s.len());
    assert!(r.unwrap().tokenizer.kind.starts_with("tokenizer.json:ttt"));
    // The file is read whole, and the type copied out of it, then into the tokenizer's kind.
    check(&row, Bound::Times(2));
    let mut s = br#"{"added_tokens":"#.to_vec();
    s.extend(std::iter::repeat_n(b'[', 1_000_000));
    s.extend(std::iter::repeat_n(b']', 1_000_000));
    s.push(b'}');
    let dir = with("tokenizer.json", &s);
    let (row, r) = measure_open(
        "tokenizer.json: 1M nested added_tokens",
        dir.path(),
        s.len(),
    );
    // Skipped without recursion, at one byte of state a level (a vector that doubles) besides
    // the file read whole: no tokens found.
    assert_eq!(r.unwrap().tokenizer.vocab_size, Some(0));
    check(&row, Bound::Times(2));

    // 300k vocabulary entries: each id kept as 8 bytes to count the distinct ones, in a vector
    // that doubles (a move counted as both blocks): up to 24 bytes for 6 (`"a":1,`) at least.
    let mut v = br#"{"model":{"type":"BPE","vocab":{"#.to_vec();
    for i in 0..300_000u32 {
        if i > 0 {
            v.push(b',');
        }
        write!(Bytes(&mut v), r#""{i:x}":{i}"#).unwrap();
    }
    v.extend_from_slice(b"}}}");
    let dir = with("tokenizer.json", &v);
    let (row, r) = measure_open("tokenizer.json: 300k vocab entries", dir.path(), v.len());
    assert_eq!(r.unwrap().tokenizer.vocab_size, Some(300_000));
    check(&row, Bound::Times(4));

    // An index of 100k entries naming one real shard, which does not hold them. Each entry (11
    // bytes here, 8 at least: `"a":"b",`) keeps its tensor name as a `String` (24 bytes and the
    // name's) in a vector of the counted size, plus a 16-byte slot of the duplicate check while
    // the index file's text is held: about 50 bytes for 8. The 256 MiB index cap bounds it in
    // absolute terms.
    let mut idx = br#"{"weight_map":{"#.to_vec();
    for i in 0..100_000u32 {
        if i > 0 {
            idx.push(b',');
        }
        write!(Bytes(&mut idx), r#""{i:x}":"m""#).unwrap();
    }
    idx.extend_from_slice(b"}}");
    let dir = model_dir(&[("m", &model), ("model.safetensors.index.json", &idx)]);
    let (row, r) = measure_open("index: 100k entries", dir.path(), idx.len());
    assert!(matches!(
        st_kind(&r),
        SafetensorsError::UnindexedTensor { .. } | SafetensorsError::IndexedTensorMissing { .. }
    ));
    check(&row, Bound::Times(STATED_INDEX));
}

/// See `hf_side_files`.
const STATED_INDEX: usize = 7;

// ---------------------------------------------------------------------------------------------
// .pth: pickle and ZIP builders (each test binary owns its helpers)

/// A pickle program under construction (protocol 2 header included).
struct P(Vec<u8>);

impl P {
    fn new() -> Self {
        P(vec![0x80, 2])
    }
    fn op(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn repeat(&mut self, b: &[u8], n: usize) -> &mut Self {
        self.0.reserve(b.len() * n);
        for _ in 0..n {
            self.0.extend_from_slice(b);
        }
        self
    }
    /// BINUNICODE
    fn str(&mut self, s: &[u8]) -> &mut Self {
        self.op(b'X').raw(&(s.len() as u32).to_le_bytes()).raw(s)
    }
    fn stop(&mut self) -> Vec<u8> {
        self.op(b'.');
        std::mem::take(&mut self.0)
    }
}

fn le16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn le32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn le64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// A stored ZIP of `entries` with a ZIP64 end record whose file count is `claimed` when given
/// (else the real count), and `cd_padding` zero bytes after the central directory's records
/// (counted in its declared size).
fn zip_with(entries: &[(String, Vec<u8>)], claimed: Option<u64>, cd_padding: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offsets = Vec::new();
    for (name, data) in entries {
        offsets.push(out.len() as u64);
        le32(&mut out, 0x0403_4b50);
        le16(&mut out, 20);
        le16(&mut out, 0x0800); // UTF-8 names
        le16(&mut out, 0); // stored
        le32(&mut out, 0); // time, date
        le32(&mut out, 0); // crc (not checked for stored data)
        le32(&mut out, data.len() as u32);
        le32(&mut out, data.len() as u32);
        le16(&mut out, name.len() as u16);
        le16(&mut out, 0);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
    }
    let cd_start = out.len() as u64;
    for ((name, data), off) in entries.iter().zip(offsets) {
        le32(&mut out, 0x0201_4b50);
        le16(&mut out, 45);
        le16(&mut out, 20);
        le16(&mut out, 0x0800);
        le16(&mut out, 0);
        le32(&mut out, 0);
        le32(&mut out, 0);
        le32(&mut out, data.len() as u32);
        le32(&mut out, data.len() as u32);
        le16(&mut out, name.len() as u16);
        le16(&mut out, 0); // extra
        le16(&mut out, 0); // comment
        le16(&mut out, 0); // disk
        le16(&mut out, 0); // internal attributes
        le32(&mut out, 0); // external attributes
        le32(&mut out, off as u32);
        out.extend_from_slice(name.as_bytes());
    }
    out.resize(out.len() + cd_padding, 0);
    let cd_len = out.len() as u64 - cd_start;
    let n = claimed.unwrap_or(entries.len() as u64);
    let eocd64 = out.len() as u64;
    le32(&mut out, 0x0606_4b50);
    le64(&mut out, 44);
    le16(&mut out, 45);
    le16(&mut out, 45);
    le32(&mut out, 0);
    le32(&mut out, 0);
    le64(&mut out, n);
    le64(&mut out, n);
    le64(&mut out, cd_len);
    le64(&mut out, cd_start);
    le32(&mut out, 0x0706_4b50);
    le32(&mut out, 0);
    le64(&mut out, eocd64);
    le32(&mut out, 1);
    le32(&mut out, 0x0605_4b50);
    le16(&mut out, 0);
    le16(&mut out, 0);
    le16(&mut out, u16::MAX);
    le16(&mut out, u16::MAX);
    le32(&mut out, u32::MAX);
    le32(&mut out, u32::MAX);
    le16(&mut out, 0);
    out
}

/// The records of a `.pth` whose `data.pkl` is `pkl`, with no storages.
fn pth_entries(pkl: &[u8]) -> Vec<(String, Vec<u8>)> {
    vec![
        ("archive/data.pkl".into(), pkl.to_vec()),
        ("archive/byteorder".into(), b"little".to_vec()),
        ("archive/version".into(), b"3\n".to_vec()),
    ]
}

/// Measure `parse_state_dict` on `bytes` (built beforehand).
fn measure_pth(name: &str, bytes: &[u8]) -> (Row, Result<usize, PthError>) {
    let (peak, result, cost) = measure(|| parse_state_dict(bytes, 0));
    let outcome = match &result {
        Ok(t) => format!("ok, {} tensors", t.len()),
        Err(e) => clip(&format!("{e:?}")),
    };
    let row = Row {
        name: name.into(),
        len: bytes.len(),
        peak,
        cost,
        outcome,
    };
    (row, result.map(|t| t.len()))
}

/// Measure a hostile pickle inside a valid `.pth`, check it against `bound`, and return its
/// error.
fn pickle_case(name: &str, pkl: &[u8], bound: Bound) -> PthError {
    let (row, r) = measure_pth(name, &zip_with(&pth_entries(pkl), None, 0));
    check(&row, bound);
    r.expect_err("hostile pickle was accepted")
}

fn is_limit(e: &PthError, resource: &str) -> bool {
    matches!(e, PthError::LimitExceeded { what, .. } if *what == resource)
}

fn not_a_state_dict(e: &PthError) -> bool {
    matches!(e, PthError::NotAStateDict { .. })
}

#[test]
fn pth_deep_nesting_and_stack() {
    assert_eq!(MAX_STACK, 10_000, "the cases below assume this stack limit");
    let too_deep = |e: &PthError| matches!(e, PthError::TooDeep { .. });
    let e = pickle_case(
        "1M MARK + EMPTY_LIST",
        &P::new().repeat(b"(]", 1_000_000).stop(),
        Bound::FileSize,
    );
    assert!(too_deep(&e), "{e:?}");
    let e = pickle_case(
        "1M EMPTY_LIST",
        &P::new().repeat(b"]", 1_000_000).stop(),
        Bound::FileSize,
    );
    assert!(too_deep(&e), "{e:?}");
    // x = [x] a million times through the memo, with a stack of two.
    let e = pickle_case(
        "1M x = [x] through the memo",
        &P::new()
            .raw(b"]q\x000")
            .repeat(b"]h\x00aq\x000", 1_000_000)
            .raw(b"h\x00")
            .stop(),
        Bound::FileSize,
    );
    assert!(too_deep(&e), "{e:?}");
    // t = (t, t) a million times: shared, never copied; the nesting limit stops it.
    let e = pickle_case(
        "1M t = (t, t) through the memo",
        &P::new()
            .raw(b")q\x00")
            .repeat(b"h\x00h\x00\x86q\x000", 1_000_000)
            .raw(b"h\x00")
            .stop(),
        Bound::FileSize,
    );
    assert!(too_deep(&e), "{e:?}");
    let e = pickle_case(
        "10M DUP of a list",
        &P::new().op(b']').repeat(b"2", 10_000_000).stop(),
        Bound::FileSize,
    );
    assert!(too_deep(&e), "{e:?}");
    // Ten million steps that keep nothing.
    let e = pickle_case(
        "500k DUP + POP of a list",
        &P::new().op(b']').repeat(b"20", 500_000).stop(),
        Bound::FileSize,
    );
    assert!(not_a_state_dict(&e), "{e:?}");
    let e = pickle_case(
        "200k LONG_BINGET + POP",
        &P::new()
            .raw(b"]q\x00")
            .repeat(b"j\x00\x00\x00\x000", 200_000)
            .stop(),
        Bound::FileSize,
    );
    assert!(not_a_state_dict(&e), "{e:?}");
}

#[test]
fn pth_self_reference() {
    let shared = |e: &PthError| matches!(e, PthError::BadValue { what, .. } if what.contains("also referenced"));
    let e = pickle_case(
        "APPENDS of a list into itself, 10k times",
        &P::new()
            .raw(b"]q\x00(")
            .repeat(b"h\x00", MAX_STACK - 3)
            .op(b'e')
            .stop(),
        Bound::FileSize,
    );
    assert!(shared(&e), "{e:?}");
    let e = pickle_case(
        "SETITEMS of a dict into itself, 10k times",
        &P::new()
            .raw(b"}q\x00(")
            .repeat(b"h\x00", MAX_STACK - 4)
            .op(b'u')
            .stop(),
        Bound::FileSize,
    );
    assert!(shared(&e), "{e:?}");
}

#[test]
fn pth_huge_lengths() {
    for (name, op, len) in [
        ("BINUNICODE of 2^31 bytes", b'X', 1u64 << 31),
        ("BINUNICODE of 2^32 - 1 bytes", b'X', u64::from(u32::MAX)),
        ("BINBYTES of 2^31 bytes", b'B', 1 << 31),
        ("BINUNICODE8 of 2^62 bytes", 0x8d, 1 << 62),
        ("BINBYTES8 of 2^64 - 1 bytes", 0x8e, u64::MAX),
        ("FRAME of 2^63 bytes", 0x95, 1 << 63),
    ] {
        let mut p = P::new();
        p.op(op);
        if op == b'X' || op == b'B' {
            p.raw(&(len as u32).to_le_bytes());
        } else {
            p.raw(&len.to_le_bytes());
        }
        p.repeat(b"x", 1 << 20);
        let e = pickle_case(name, &p.stop(), Bound::FileSize);
        assert!(matches!(e, PthError::Truncated { .. }), "{name}: {e:?}");
    }
    // A real 16 MiB string: one copy.
    let e = pickle_case(
        "one 16 MiB BINUNICODE",
        &P::new().str(&vec![b's'; BIG]).stop(),
        Bound::FileSize,
    );
    assert!(not_a_state_dict(&e), "{e:?}");
    // A 16 MiB GLOBAL name: refused by name, never copied whole.
    let e = pickle_case(
        "16 MiB GLOBAL module",
        &P::new().op(b'c').repeat(b"m", BIG).raw(b"\nname\n").stop(),
        Bound::FileSize,
    );
    assert!(matches!(e, PthError::ForbiddenGlobal { .. }), "{e:?}");
}

#[test]
fn pth_memo() {
    // Sparse indices near 2^32: the memo does not make an array of them.
    let mut p = P::new();
    p.op(b'N');
    for i in 0..1000u32 {
        p.op(b'r').raw(&(u32::MAX - i * 65_521).to_le_bytes());
    }
    let e = pickle_case("1000 LONG_BINPUT near 2^32", &p.stop(), Bound::FileSize);
    assert!(not_a_state_dict(&e), "{e:?}");

    let e = pickle_case(
        "100k BINPUT to one slot",
        &P::new().op(b']').repeat(b"q\x07", 100_000).stop(),
        Bound::FileSize,
    );
    assert!(not_a_state_dict(&e), "{e:?}");

    // Distinct slots, one byte each with MEMOIZE: a vector of `Value`s (see `STATED_PICKLE`),
    // just past a doubling, then up to the cap and one more. MAX_MEMO bounds it in absolute
    // terms: 48 MiB.
    let e = pickle_case(
        "2^19 + 1 MEMOIZE",
        &P::new()
            .op(b'N')
            .repeat(b"\x94", (MAX_MEMO >> 1) + 1)
            .stop(),
        Bound::Times(STATED_PICKLE),
    );
    assert!(not_a_state_dict(&e), "{e:?}");
    let e = pickle_case(
        "2^20 + 1 MEMOIZE",
        &P::new().op(b'N').repeat(b"\x94", MAX_MEMO + 1).stop(),
        Bound::Times(STATED_PICKLE),
    );
    assert!(is_limit(&e, "memo entries"), "{e:?}");
    // Out of order, the memo is a hash map: 48-byte slots (index and `Value`) at a load factor
    // between 7/16 and 7/8, rebuilt twice as large when full, both tables counted: up to 150
    // bytes an entry, for the 5 bytes of a LONG_BINPUT.
    let mut p = P::new();
    p.op(b'N');
    for i in (0..200_000u32).rev() {
        p.op(b'r').raw(&i.to_le_bytes());
    }
    let e = pickle_case("200k LONG_BINPUT, descending", &p.stop(), Bound::Times(32));
    assert!(not_a_state_dict(&e), "{e:?}");

    // One list in ever more slots: every in-place mutation re-points all of them, so their
    // number is capped (before, 64k slots and 1k APPENDs took seconds, and the work grew with
    // the file: 100 s for 3 MB in a release build).
    let e = pickle_case(
        "one list in 64k memo slots",
        &P::new()
            .op(b']')
            .repeat(b"\x94", 1 << 16)
            .repeat(b"Na", 1000)
            .stop(),
        Bound::FileSize,
    );
    assert!(is_limit(&e, "memo slots holding one container"), "{e:?}");
    // At the cap: each APPEND re-points 8 slots.
    let e = pickle_case(
        "one list in 8 memo slots, 20k APPENDs",
        &P::new()
            .op(b']')
            .repeat(b"\x94", MAX_MEMO_ALIASES)
            .repeat(b"Na", 20_000)
            .stop(),
        Bound::Times(STATED_PICKLE),
    );
    assert!(not_a_state_dict(&e), "{e:?}");
}

/// Bytes of memory per byte of pickle at most, when every byte counts. One opcode byte (DUP,
/// NONE, MEMOIZE, EMPTY_TUPLE, …) can add a 32-byte `Value` to a vector that grows by doubling
/// (a list's or dict's items, the memo); a doubling moves the vector, and the move is counted
/// as both blocks: 3 x 32 = 96 bytes an entry at that moment. The values a pickle copies rather
/// than shares cost less per byte (see `pth_copied_values`). `MAX_ITEMS` and `MAX_MEMO` bound
/// all of it in absolute terms, at about 400 and 48 MiB.
const STATED_PICKLE: usize = 100;

#[test]
fn pth_container_growth() {
    // Lists and dicts grown one DUP at a time, in batches the stack allows (9990 items: the
    // vectors' capacities go 9990 x 2^k), to just past a doubling: 33 batches.
    let batch = MAX_STACK - 10;
    let grow = |container: u8, close: u8, rounds: usize| {
        let mut p = P::new();
        p.op(container);
        for _ in 0..rounds {
            p.raw(b"(N").repeat(b"2", batch - 1).op(close);
        }
        p.stop()
    };
    let e = pickle_case(
        "APPENDS by DUP, 330k items",
        &grow(b']', b'e', 33),
        Bound::Times(STATED_PICKLE),
    );
    assert!(not_a_state_dict(&e), "{e:?}");
    let e = pickle_case(
        "SETITEMS by DUP, 330k items",
        &grow(b'}', b'u', 33),
        Bound::Times(STATED_PICKLE),
    );
    assert!(not_a_state_dict(&e), "{e:?}");
    // Tuples kept alive by the memo.
    let mut p = P::new();
    for _ in 0..33 {
        p.raw(b"(N").repeat(b"2", batch - 1).raw(b"t\x940");
    }
    let e = pickle_case(
        "memoized tuples by DUP, 330k items",
        &p.raw(b"N").stop(),
        Bound::Times(STATED_PICKLE),
    );
    assert!(not_a_state_dict(&e), "{e:?}");
    // Past the cap.
    let rounds = usize::try_from(MAX_ITEMS).unwrap() / batch + 1;
    let e = pickle_case(
        "APPENDS by DUP, past MAX_ITEMS",
        &grow(b']', b'e', rounds),
        Bound::Times(STATED_PICKLE),
    );
    assert!(is_limit(&e, "container items"), "{e:?}");
}

/// The opening of a pickle that memoizes, in slots 2, 3 and 4: `'storage'`, the class
/// `torch.FloatStorage` and `'cpu'`; and the rebuild function in slot 6.
fn torch_globals() -> P {
    let mut p = P::new();
    p.str(b"storage").raw(b"q\x020");
    p.raw(b"ctorch\nFloatStorage\nq\x030");
    p.str(b"cpu").raw(b"q\x040");
    p.raw(b"ctorch._utils\n_rebuild_tensor_v2\nq\x060");
    p
}

#[test]
fn pth_copied_values() {
    // Storage keys are copied by each persistent id: 100 ids of one 1 MiB key were 100 MiB
    // before keys were capped at MAX_STORAGE_KEY bytes.
    let mut p = torch_globals();
    p.op(b']').str(&vec![b'k'; 1 << 20]).raw(b"q\x010");
    p.repeat(b"(h\x02h\x03h\x01h\x04K\x01tQa", 100);
    let e = pickle_case(
        "1 MiB storage key in 100 persistent ids",
        &p.stop(),
        Bound::FileSize,
    );
    assert!(
        matches!(&e, PthError::BadValue { what, .. } if what.starts_with("storage key of")),
        "{e:?}"
    );
    // The longest key allowed, in 30k persistent ids of 14 bytes each: a storage of 64 bytes
    // plus its key's 256, and a list item of 32 bytes (96 while the list doubles): under 30
    // times the bytes.
    let mut p = torch_globals();
    p.op(b']').str(&[b'k'; MAX_STORAGE_KEY]).raw(b"q\x010");
    p.repeat(b"(h\x02h\x03h\x01h\x04K\x01tQa", 30_000);
    let e = pickle_case(
        "256-byte storage key in 30k persistent ids",
        &p.stop(),
        Bound::Times(32),
    );
    assert!(not_a_state_dict(&e), "{e:?}");

    // Views are copied by each REDUCE: 1000 rebuilds of one 9000-dimension view were 263 MB
    // from 24 KB (10,000 times) before views were capped at MAX_DIMS dimensions.
    let view = |dims: usize, rebuilds: usize| {
        let mut p = torch_globals();
        p.op(b']');
        p.raw(b"((h\x02h\x03").str(b"0").raw(b"h\x04K\x01tQK\x00(");
        p.repeat(b"K\x01", dims);
        p.raw(b"tq\x07h\x07\x89)tq\x050");
        p.repeat(b"h\x06h\x05Ra", rebuilds);
        p.stop()
    };
    let e = pickle_case(
        "1000 rebuilds of a 9000-dim view",
        &view(9000, 1000),
        Bound::FileSize,
    );
    assert!(is_limit(&e, "tensor dimensions"), "{e:?}");
    // The most dimensions allowed, 30k times over (6 bytes each): a view of 128 bytes plus
    // 2 x 16 x 8 of shape and strides, and a list item of 32 bytes (96 while the list doubles):
    // at most 480 bytes for 6, within STATED_PICKLE.
    let e = pickle_case(
        "30k rebuilds of a 16-dim view",
        &view(MAX_DIMS, 30_000),
        Bound::Times(STATED_PICKLE),
    );
    assert!(not_a_state_dict(&e), "{e:?}");
}

#[test]
fn pth_zip_directory() {
    let pkl = P::new().op(b'}').stop();
    // Counts that cannot fit before the end record are refused before anything is reserved.
    for (name, n) in [
        ("ZIP64 directory claiming 2^32 entries", 1u64 << 32),
        ("ZIP64 directory claiming 2^64 - 1 entries", u64::MAX),
    ] {
        let (row, r) = measure_pth(name, &zip_with(&pth_entries(&pkl), Some(n), 0));
        check(&row, Bound::FileSize);
        assert!(matches!(r, Err(PthError::Zip(_))), "{r:?}");
    }
    // As many entries as the file could hold, four present: the `zip` crate reserves its entry
    // table for the claimed count, about 180 bytes per entry claimed. It believes a count only
    // if the directory has room for 46 bytes per entry and starts at least one byte per entry
    // into the file, so that is under 4 bytes per byte of file.
    let pad = 8 << 20;
    let mut entries = pth_entries(&pkl);
    entries.push(("archive/data/0".into(), vec![0; pad]));
    let n = (pad / 46) as u64;
    let (row, r) = measure_pth(
        "ZIP64 directory claiming 182k entries, 4 present",
        &zip_with(&entries, Some(n), pad),
    );
    check(&row, Bound::Times(STATED_ZIP));
    assert!(matches!(r, Err(PthError::Zip(_))), "{r:?}");

    // Many real tiny entries (94 bytes each at least: two headers and the name twice): the `zip`
    // crate's table, then the archive's map and name list, about 310 bytes an entry.
    let mut many = pth_entries(&pkl);
    for i in 0..30_000u32 {
        many.push((format!("archive/{i:x}"), Vec::new()));
    }
    let (row, r) = measure_pth("30k empty ZIP entries", &zip_with(&many, None, 0));
    check(&row, Bound::Times(STATED_ZIP));
    assert_eq!(r, Ok(0));
}

/// See `pth_zip_directory`.
const STATED_ZIP: usize = 4;

#[test]
fn pth_real_files() {
    for rel in ["meta-mp1/consolidated.00.pth", "meta-extras/odd.pth"] {
        let path = fixture(rel);
        let bytes = std::fs::read(&path).unwrap();
        let (row, r) = measure_pth(rel, &bytes);
        check(&row, Bound::FileSize);
        assert!(r.unwrap() > 0);
        // Through PthFile::open too (the file mapped, not read).
        let (peak, r, cost) = measure(|| PthFile::open(&path));
        let row = Row {
            name: format!("{rel} (PthFile::open)"),
            len: bytes.len(),
            peak,
            cost,
            outcome: format!("ok, {} tensors", r.unwrap().tensors().len()),
        };
        check(&row, Bound::FileSize);
    }
}
