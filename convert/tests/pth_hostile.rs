//! Hostile `.pth` inputs: every ZIP, pickle and state-dict failure mode maps to its exact
//! [`PthError`] variant, nothing is ever executed, and no input makes the reader panic.
//!
//! ZIP archives and pickle streams are built here byte by byte (tiny builders below), so each
//! test states exactly which field is wrong.

use std::path::Path;

use proptest::prelude::*;
use qforge_codecs::DType;
use qforge_convert::pth::pickle::{self, Value};
use qforge_convert::pth::{parse_state_dict, PthError, PthFile, PthTensor};
use qforge_convert::{Checkpoint, Error, TensorLayout};

// ---------------------------------------------------------------------------------------------
// pickle builder

/// A pickle program under construction (protocol 2 header included).
#[derive(Clone)]
struct P(Vec<u8>);

impl P {
    fn new() -> Self {
        P(vec![0x80, 2])
    }
    /// No PROTO header.
    fn bare() -> Self {
        P(Vec::new())
    }
    fn op(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(b'c')
            .raw(module.as_bytes())
            .op(b'\n')
            .raw(name.as_bytes())
            .op(b'\n')
    }
    fn str(&mut self, s: &str) -> &mut Self {
        let len = u32::try_from(s.len()).unwrap();
        self.op(b'X').raw(&len.to_le_bytes()).raw(s.as_bytes())
    }
    fn short_str(&mut self, s: &str) -> &mut Self {
        self.op(0x8c)
            .op(u8::try_from(s.len()).unwrap())
            .raw(s.as_bytes())
    }
    fn int(&mut self, v: u64) -> &mut Self {
        if let Ok(b) = u8::try_from(v) {
            self.op(b'K').op(b)
        } else if let Ok(h) = u16::try_from(v) {
            self.op(b'M').raw(&h.to_le_bytes())
        } else if let Ok(i) = i32::try_from(v) {
            self.op(b'J').raw(&i.to_le_bytes())
        } else {
            // LONG1 with 9 bytes: always non-negative
            self.op(0x8a).op(9).raw(&v.to_le_bytes()).op(0)
        }
    }
    fn ints(&mut self, v: &[u64]) -> &mut Self {
        self.op(b'(');
        for &x in v {
            self.int(x);
        }
        self.op(b't')
    }
    fn empty_ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict").op(b')').op(b'R')
    }
    fn stop(&mut self) -> Vec<u8> {
        self.op(b'.');
        self.0.clone()
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

/// One tensor of a state dict built by [`state_dict_pickle`].
#[derive(Clone)]
struct T {
    name: &'static str,
    /// `BFloat16Storage`, `FloatStorage`, …, or `UntypedStorage` (then `dtype` is required)
    storage: &'static str,
    key: &'static str,
    numel: u64,
    offset: u64,
    size: Vec<u64>,
    stride: Vec<u64>,
    /// v3 dtype name (`float8_e4m3fn`)
    dtype: Option<&'static str>,
}

fn t(name: &'static str, storage: &'static str, key: &'static str, numel: u64, size: &[u64]) -> T {
    let mut stride = vec![1u64; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * size[i + 1];
    }
    T {
        name,
        storage,
        key,
        numel,
        offset: 0,
        size: size.to_vec(),
        stride,
        dtype: None,
    }
}

/// The pickle torch.save writes for a state dict (an OrderedDict with a `_metadata` BUILD when
/// `ordered`, else a plain dict).
fn state_dict_pickle(ts: &[T], ordered: bool) -> Vec<u8> {
    let mut p = P::new();
    if ordered {
        p.empty_ordered_dict();
    } else {
        p.op(b'}');
    }
    p.op(b'q').op(0).op(b'(');
    for t in ts {
        p.str(t.name);
        let v3 = t.dtype.is_some();
        p.global(
            "torch._utils",
            if v3 {
                "_rebuild_tensor_v3"
            } else {
                "_rebuild_tensor_v2"
            },
        );
        p.op(b'(').op(b'(').str("storage");
        if t.storage == "UntypedStorage" {
            p.global("torch.storage", "UntypedStorage");
        } else {
            p.global("torch", t.storage);
        }
        p.str(t.key).str("cpu").int(t.numel).op(b't').op(b'Q');
        p.int(t.offset)
            .ints(&t.size)
            .ints(&t.stride)
            .op(0x89)
            .empty_ordered_dict();
        if let Some(d) = t.dtype {
            p.global("torch", d);
        }
        p.op(b't').op(b'R');
    }
    p.op(b'u');
    if ordered {
        // state = {'_metadata': OrderedDict()}
        p.op(b'}')
            .str("_metadata")
            .empty_ordered_dict()
            .op(b's')
            .op(b'b');
    }
    p.stop()
}

// ---------------------------------------------------------------------------------------------
// ZIP builder

#[derive(Clone)]
struct Entry {
    name: String,
    data: Vec<u8>,
    /// compression method written in both headers
    method: u16,
    /// a different name for the local header
    local_name: Option<String>,
    /// a size to declare instead of `data.len()` (data written is still `data`)
    declared: Option<u64>,
    /// zero bytes to leave before this entry's local header (sparse in files)
    gap: u64,
}

fn entry(name: &str, data: &[u8]) -> Entry {
    Entry {
        name: name.into(),
        data: data.to_vec(),
        method: 0,
        local_name: None,
        declared: None,
        gap: 0,
    }
}

/// A ZIP image as chunks at absolute offsets (gaps are zeros / holes).
struct Image {
    chunks: Vec<(u64, Vec<u8>)>,
    len: u64,
}

impl Image {
    fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; usize::try_from(self.len).unwrap()];
        for (at, c) in &self.chunks {
            let at = usize::try_from(*at).unwrap();
            out[at..at + c.len()].copy_from_slice(c);
        }
        out
    }
    fn write_sparse(&self, path: &Path) {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(path).unwrap();
        for (at, c) in &self.chunks {
            f.seek(SeekFrom::Start(*at)).unwrap();
            f.write_all(c).unwrap();
        }
        f.set_len(self.len).unwrap();
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

/// Assemble a ZIP the way torch's writer lays it out: each data start padded to 64 bytes with an
/// `FB` extra field. With `zip64`, every size and offset goes through ZIP64 extra fields and a
/// ZIP64 end-of-central-directory record (as for shards over 4 GiB), whatever the values.
fn zip_image(entries: &[Entry], zip64: bool) -> Image {
    let mut chunks = Vec::new();
    let mut pos = 0u64;
    let mut offsets = Vec::new();
    for e in entries {
        pos += e.gap;
        offsets.push(pos);
        let size = e.declared.unwrap_or(e.data.len() as u64);
        let name = e.local_name.as_deref().unwrap_or(&e.name);
        let mut h = Vec::new();
        le32(&mut h, 0x0403_4b50);
        le16(&mut h, if zip64 { 45 } else { 20 });
        le16(&mut h, 0x0800); // UTF-8 names
        le16(&mut h, e.method);
        le16(&mut h, 0);
        le16(&mut h, 0x21);
        le32(&mut h, 0); // crc (not checked by readers of stored data)
        let small = if zip64 {
            u32::MAX
        } else {
            u32::try_from(size).unwrap_or(u32::MAX)
        };
        le32(&mut h, small);
        le32(&mut h, small);
        let mut extra = Vec::new();
        if zip64 {
            le16(&mut extra, 1);
            le16(&mut extra, 16);
            le64(&mut extra, size);
            le64(&mut extra, size);
        }
        let unpadded = pos + 30 + name.len() as u64 + extra.len() as u64;
        let mut pad = (64 - unpadded % 64) % 64;
        if pad != 0 && pad < 4 {
            pad += 64;
        }
        if pad != 0 {
            le16(&mut extra, 0x4246); // "FB"
            le16(&mut extra, u16::try_from(pad - 4).unwrap());
            extra.extend(std::iter::repeat_n(b'Z', usize::try_from(pad - 4).unwrap()));
        }
        le16(&mut h, u16::try_from(name.len()).unwrap());
        le16(&mut h, u16::try_from(extra.len()).unwrap());
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(&extra);
        h.extend_from_slice(&e.data);
        let len = h.len() as u64;
        chunks.push((pos, h));
        pos += len;
    }
    let cd_start = pos;
    let mut cd = Vec::new();
    for (e, &off) in entries.iter().zip(&offsets) {
        let size = e.declared.unwrap_or(e.data.len() as u64);
        le32(&mut cd, 0x0201_4b50);
        le16(&mut cd, 45);
        le16(&mut cd, if zip64 { 45 } else { 20 });
        le16(&mut cd, 0x0800);
        le16(&mut cd, e.method);
        le16(&mut cd, 0);
        le16(&mut cd, 0x21);
        le32(&mut cd, 0);
        let big = zip64 || size >= u64::from(u32::MAX) || off >= u64::from(u32::MAX);
        let mut extra = Vec::new();
        if big {
            le32(&mut cd, u32::MAX);
            le32(&mut cd, u32::MAX);
            le16(&mut extra, 1);
            le16(&mut extra, 24);
            le64(&mut extra, size);
            le64(&mut extra, size);
            le64(&mut extra, off);
        } else {
            le32(&mut cd, u32::try_from(size).unwrap());
            le32(&mut cd, u32::try_from(size).unwrap());
        }
        le16(&mut cd, u16::try_from(e.name.len()).unwrap());
        le16(&mut cd, u16::try_from(extra.len()).unwrap());
        le16(&mut cd, 0);
        le16(&mut cd, 0);
        le16(&mut cd, 0);
        le32(&mut cd, 0);
        le32(
            &mut cd,
            if big {
                u32::MAX
            } else {
                u32::try_from(off).unwrap()
            },
        );
        cd.extend_from_slice(e.name.as_bytes());
        cd.extend_from_slice(&extra);
    }
    let cd_len = cd.len() as u64;
    let n = entries.len() as u64;
    let mut tail = cd;
    let big = zip64 || cd_start >= u64::from(u32::MAX);
    if big {
        let eocd64 = cd_start + cd_len;
        le32(&mut tail, 0x0606_4b50);
        le64(&mut tail, 44);
        le16(&mut tail, 45);
        le16(&mut tail, 45);
        le32(&mut tail, 0);
        le32(&mut tail, 0);
        le64(&mut tail, n);
        le64(&mut tail, n);
        le64(&mut tail, cd_len);
        le64(&mut tail, cd_start);
        le32(&mut tail, 0x0706_4b50);
        le32(&mut tail, 0);
        le64(&mut tail, eocd64);
        le32(&mut tail, 1);
    }
    le32(&mut tail, 0x0605_4b50);
    le16(&mut tail, 0);
    le16(&mut tail, 0);
    let n16 = if big {
        u16::MAX
    } else {
        u16::try_from(n).unwrap()
    };
    le16(&mut tail, n16);
    le16(&mut tail, n16);
    le32(
        &mut tail,
        if big {
            u32::MAX
        } else {
            u32::try_from(cd_len).unwrap()
        },
    );
    le32(
        &mut tail,
        if big {
            u32::MAX
        } else {
            u32::try_from(cd_start).unwrap()
        },
    );
    le16(&mut tail, 0);
    let len = cd_start + tail.len() as u64;
    chunks.push((cd_start, tail));
    Image { chunks, len }
}

fn zip_bytes(entries: &[Entry]) -> Vec<u8> {
    zip_image(entries, true).to_vec()
}

/// The records of a `.pth` in folder `archive/`: data.pkl, byteorder, data/<key>…, version.
fn pth_entries(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<Entry> {
    let mut v = vec![
        entry("archive/data.pkl", pkl),
        entry("archive/byteorder", b"little"),
    ];
    for (key, data) in storages {
        v.push(entry(&format!("archive/data/{key}"), data));
    }
    v.push(entry("archive/version", b"3\n"));
    v
}

fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect()
}

/// A valid two-tensor state dict: `w` BF16 [2, 3] contiguous at offset 2 of storage "0"
/// (8 elements), and `t` its transpose-like strided view [3, 2] of storage "1".
fn valid_pth() -> Vec<u8> {
    let mut w = t("w", "BFloat16Storage", "0", 8, &[2, 3]);
    w.offset = 2;
    let mut tr = t("t", "BFloat16Storage", "1", 6, &[3, 2]);
    tr.stride = vec![1, 3];
    let pkl = state_dict_pickle(&[w, tr], true);
    let s0 = bf16_bytes(&[9.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let s1 = bf16_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    zip_bytes(&pth_entries(&pkl, &[("0", s0), ("1", s1)]))
}

fn decode(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / usize::try_from(dtype.block_bytes()).unwrap()];
    qforge_codecs::decode_to_f32(dtype, bytes, &mut out).unwrap();
    out
}

fn values(file: &[u8], t: &PthTensor) -> Vec<f32> {
    decode(t.dtype, &t.bytes(file).unwrap())
}

fn load_err(p: &[u8]) -> PthError {
    match pickle::load(p) {
        Ok(v) => panic!("expected an error, got a {}", v.type_name()),
        Err(e) => e,
    }
}

fn pth_err(bytes: &[u8]) -> PthError {
    parse_state_dict(bytes, 0).expect_err("hostile .pth was accepted")
}

// ---------------------------------------------------------------------------------------------
// the valid baseline

#[test]
fn valid_state_dict_parses_with_views_and_zip64() {
    let bytes = valid_pth();
    let ts = parse_state_dict(&bytes, 7).unwrap();
    assert_eq!(ts.len(), 2);
    assert_eq!(
        (ts[0].name.as_str(), ts[0].dtype, ts[0].shape.as_slice()),
        ("w", DType::BF16, &[2u64, 3][..])
    );
    let TensorLayout::Contiguous(span) = &ts[0].layout else {
        panic!("w should be contiguous")
    };
    assert_eq!(
        (span.file, span.len, span.offset % 64),
        (7, 12, 4),
        "offset 2 elements into a 64-aligned record"
    );
    assert_eq!(values(&bytes, &ts[0]), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert!(matches!(&ts[1].layout, TensorLayout::Strided { strides, .. } if strides == &[1, 3]));
    assert_eq!(values(&bytes, &ts[1]), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    // The same records without ZIP64 read the same.
    let plain = zip_image(
        &pth_entries(
            &state_dict_pickle(&[t("x", "FloatStorage", "0", 1, &[])], false),
            &[("0", 2.5f32.to_le_bytes().to_vec())],
        ),
        false,
    )
    .to_vec();
    let ts = parse_state_dict(&plain, 0).unwrap();
    assert_eq!((ts[0].shape.len(), values(&plain, &ts[0])), (0, vec![2.5]));
}

#[test]
fn protocol_4_opcodes_and_v3_fp8_are_understood() {
    // FRAME, SHORT_BINUNICODE, STACK_GLOBAL, MEMOIZE, NEWOBJ (OrderedDict), BINGET of a MEMOIZE slot.
    let mut p = P::bare();
    p.short_str("collections")
        .op(0x94)
        .short_str("OrderedDict")
        .op(0x94)
        .op(0x93)
        .op(0x94); // memo 0,1,2
    p.op(b')').op(0x81).op(0x94); // NEWOBJ OrderedDict() -> memo 3
    p.short_str("f8");
    p.global("torch._utils", "_rebuild_tensor_v3").op(b'(');
    p.op(b'(')
        .short_str("storage")
        .global("torch.storage", "UntypedStorage")
        .short_str("0")
        .short_str("cpu")
        .int(4)
        .op(b't')
        .op(b'Q');
    p.int(0)
        .ints(&[2, 2])
        .ints(&[2, 1])
        .op(0x89)
        .op(b'h')
        .op(2)
        .op(b')')
        .op(b'R'); // hooks = memo[2]() = OrderedDict()
    p.global("torch", "float8_e4m3fn")
        .op(b't')
        .op(b'R')
        .op(b's');
    let body = p.stop();
    let mut pkl = vec![0x80, 4, 0x95];
    pkl.extend_from_slice(&(body.len() as u64).to_le_bytes());
    pkl.extend_from_slice(&body);
    let bytes = zip_bytes(&pth_entries(&pkl, &[("0", vec![0x7e, 0xfe, 0x01, 0x00])]));
    let ts = parse_state_dict(&bytes, 0).unwrap();
    assert_eq!(ts[0].dtype, DType::F8_E4M3);
    assert_eq!(values(&bytes, &ts[0]), [448.0, -448.0, 0.001_953_125, 0.0]);
}

// ---------------------------------------------------------------------------------------------
// forbidden globals and calls

#[test]
fn global_os_system_is_forbidden() {
    let mut p = P::new();
    p.global("os", "system").str("echo pwned").op(0x85).op(b'R');
    assert_eq!(
        load_err(&p.stop()),
        PthError::ForbiddenGlobal {
            module: "os".into(),
            name: "system".into(),
            offset: 2
        }
    );
}

#[test]
fn global_builtins_eval_posix_nt_system_are_forbidden() {
    for (module, name) in [
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("posix", "system"),
        ("nt", "system"),
        ("torch", "load"),
        ("torch._utils", "_rebuild_qtensor"),
    ] {
        let mut p = P::new();
        p.global(module, name).str("1+1").op(0x85).op(b'R');
        assert_eq!(
            load_err(&p.stop()),
            PthError::ForbiddenGlobal {
                module: module.into(),
                name: name.into(),
                offset: 2
            },
            "{module}.{name}"
        );
    }
}

#[test]
fn stack_global_subprocess_popen_is_forbidden() {
    let mut p = P::new();
    p.short_str("subprocess").short_str("Popen");
    let offset = p.len();
    p.op(0x93);
    assert_eq!(
        load_err(&p.stop()),
        PthError::ForbiddenGlobal {
            module: "subprocess".into(),
            name: "Popen".into(),
            offset
        }
    );
}

#[test]
fn inst_names_are_checked_and_never_instantiated() {
    let mut p = P::new();
    p.op(b'(').str("id").op(b'i').raw(b"os\nsystem\n");
    assert_eq!(
        load_err(&p.stop()),
        PthError::ForbiddenGlobal {
            module: "os".into(),
            name: "system".into(),
            offset: 10
        }
    );
    let mut p = P::new();
    p.op(b'(').op(b'i').raw(b"collections\nOrderedDict\n");
    assert_eq!(
        load_err(&p.stop()),
        PthError::ForbiddenCall {
            what: "INST collections.OrderedDict".into(),
            offset: 3
        }
    );
    let mut p = P::new();
    p.op(b'(').global("collections", "OrderedDict").op(b'o');
    let offset = p.len() - 1;
    assert_eq!(
        load_err(&p.stop()),
        PthError::ForbiddenCall {
            what: "OBJ".into(),
            offset
        }
    );
}

#[test]
fn reduce_of_non_callables_is_forbidden() {
    // An allowlisted class that is not a tensor constructor.
    let mut p = P::new();
    p.global("torch", "FloatStorage").op(b')');
    let offset = p.len();
    p.op(b'R');
    assert_eq!(
        load_err(&p.stop()),
        PthError::ForbiddenCall {
            what: "calling torch.FloatStorage".into(),
            offset
        }
    );
    // A string "callable" (what a non-allowlisted name would have become in a lax VM).
    let mut p = P::new();
    p.str("os.system").str("id").op(0x85);
    let offset = p.len();
    p.op(b'R');
    assert_eq!(
        load_err(&p.stop()),
        PthError::ForbiddenCall {
            what: "REDUCE on a str".into(),
            offset
        }
    );
}

#[test]
fn build_and_newobj_abuse_is_forbidden() {
    // BUILD on a tensor-rebuild function (would set attributes on it).
    let mut p = P::new();
    p.global("torch._utils", "_rebuild_tensor_v2").op(b'}');
    let offset = p.len();
    p.op(b'b');
    assert_eq!(
        load_err(&p.stop()),
        PthError::ForbiddenCall {
            what: "BUILD on a global".into(),
            offset
        }
    );
    // BUILD on a list.
    let mut p = P::new();
    p.op(b']').op(b'}');
    assert_eq!(
        load_err(&p.op(b'b').stop()),
        PthError::ForbiddenCall {
            what: "BUILD on a list".into(),
            offset: 4
        }
    );
    // NEWOBJ of an allowlisted function.
    let mut p = P::new();
    p.global("torch._utils", "_rebuild_parameter").op(b')');
    let offset = p.len();
    p.op(0x81);
    assert_eq!(
        load_err(&p.stop()),
        PthError::ForbiddenCall {
            what: "NEWOBJ torch._utils._rebuild_parameter".into(),
            offset
        }
    );
    // NEWOBJ_EX is never allowed.
    let mut p = P::new();
    p.global("collections", "OrderedDict").op(b')').op(b'}');
    let offset = p.len();
    p.op(0x92);
    assert_eq!(
        load_err(&p.stop()),
        PthError::ForbiddenCall {
            what: "NEWOBJ_EX".into(),
            offset
        }
    );
}

/// The canary: a pickle that, loaded by Python, would run `touch <tmp>/pwned`. The reader must
/// refuse it and the file must not appear.
#[test]
fn canary_os_system_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("pwned");
    let cmd = format!("touch {}", canary.display());
    let mut p = P::new();
    p.global("os", "system").str(&cmd).op(0x85).op(b'R');
    let pkl = p.stop();
    assert_eq!(
        load_err(&pkl),
        PthError::ForbiddenGlobal {
            module: "os".into(),
            name: "system".into(),
            offset: 2
        }
    );
    let file = dir.path().join("evil.pth");
    std::fs::write(&file, zip_bytes(&pth_entries(&pkl, &[]))).unwrap();
    match PthFile::open(&file) {
        Err(Error::Pth {
            kind: PthError::ForbiddenGlobal { module, name, .. },
            path,
        }) => {
            assert_eq!(
                (module.as_str(), name.as_str(), path),
                ("os", "system", file.clone())
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!canary.exists(), "the pickle's payload ran");
}

// ---------------------------------------------------------------------------------------------
// malformed pickle streams

#[test]
fn deep_nesting_is_bounded() {
    // 100k MARK + EMPTY_LIST: the stack limit trips long before.
    let mut p = P::new();
    for _ in 0..100_000 {
        p.op(b'(').op(b']');
    }
    assert!(matches!(load_err(&p.stop()), PthError::TooDeep { .. }));
    // Nesting built with a shallow stack: x = [x] 100k times through the memo.
    let mut p = P::new();
    p.op(b']').op(b'q').op(0).op(b'0');
    for _ in 0..100_000 {
        p.op(b']').op(b'h').op(0).op(b'a').op(b'q').op(0).op(b'0');
    }
    p.op(b'h').op(0);
    assert!(matches!(load_err(&p.stop()), PthError::TooDeep { .. }));
}

#[test]
fn shared_values_are_not_deep_copied() {
    // t = (t, t) 64 times would be 2^64 leaves if BINGET copied.
    let mut p = P::new();
    p.op(b')').op(b'q').op(0);
    for _ in 0..64 {
        p.op(b'h')
            .op(0)
            .op(b'h')
            .op(0)
            .op(0x86)
            .op(b'q')
            .op(0)
            .op(b'0');
    }
    let v = pickle::load(&p.stop()).unwrap();
    assert!(matches!(v, Value::Tuple(_)));
}

#[test]
fn stack_underflow_and_missing_mark() {
    let mut p = P::new();
    assert_eq!(
        load_err(&p.op(b'a').stop()),
        PthError::StackUnderflow { offset: 2 }
    );
    let mut p = P::new();
    assert_eq!(
        load_err(&p.int(1).op(0x86).stop()),
        PthError::StackUnderflow { offset: 4 }
    );
    // Pops may not reach below the current MARK.
    let mut p = P::new();
    assert_eq!(
        load_err(&p.op(b']').op(b'(').int(1).op(b'a').stop()),
        PthError::StackUnderflow { offset: 6 }
    );
    let mut p = P::new();
    assert_eq!(
        load_err(&p.op(b']').op(b'e').stop()),
        PthError::MissingMark { offset: 3 }
    );
    let mut p = P::new();
    assert_eq!(
        load_err(&p.op(b'(').op(b'.').stop()),
        PthError::StackUnderflow { offset: 3 }
    );
    // Empty program.
    assert_eq!(load_err(b""), PthError::Truncated { offset: 0 });
}

#[test]
fn every_truncation_of_a_valid_pickle_is_an_error() {
    let mut w = t("w", "BFloat16Storage", "0", 8, &[2, 3]);
    w.offset = 300; // exercise BININT2
    let full = state_dict_pickle(
        &[w, t("big", "FloatStorage", "1", 1 << 40, &[1 << 40])],
        true,
    );
    assert!(pickle::load(&full).is_ok());
    for cut in 0..full.len() {
        match pickle::load(&full[..cut]) {
            Err(PthError::Truncated { .. }) => {}
            other => panic!("prefix of {cut} bytes: {other:?}"),
        }
    }
}

#[test]
fn memo_miss() {
    let mut p = P::new();
    assert_eq!(
        load_err(&p.op(b'h').op(5).stop()),
        PthError::MemoMissing {
            index: 5,
            offset: 2
        }
    );
    let mut p = P::new();
    assert_eq!(
        load_err(&p.op(b'j').raw(&u32::MAX.to_le_bytes()).stop()),
        PthError::MemoMissing {
            index: u32::MAX,
            offset: 2
        }
    );
}

#[test]
fn huge_lengths_are_checked_against_the_input() {
    let mut p = P::new();
    assert_eq!(
        load_err(&p.op(b'X').raw(&u32::MAX.to_le_bytes()).raw(b"abc").stop()),
        PthError::Truncated { offset: 2 }
    );
    let mut p = P::new();
    assert_eq!(
        load_err(&p.op(0x8d).raw(&u64::MAX.to_le_bytes()).raw(b"abc").stop()),
        PthError::Truncated { offset: 2 }
    );
    let mut p = P::new();
    assert_eq!(
        load_err(&p.op(0x8e).raw(&(1u64 << 62).to_le_bytes()).stop()),
        PthError::Truncated { offset: 2 }
    );
    let mut p = P::new();
    assert_eq!(
        load_err(&p.op(0x95).raw(&u64::MAX.to_le_bytes()).stop()),
        PthError::Truncated { offset: 2 }
    );
    let mut p = P::new();
    assert!(matches!(
        load_err(&p.op(0x8b).raw(&i32::MAX.to_le_bytes()).stop()),
        PthError::BadValue { offset: 2, .. }
    ));
    // GLOBAL without its newline.
    let mut p = P::new();
    assert_eq!(
        load_err(&p.op(b'c').raw(b"os").0),
        PthError::Truncated { offset: 2 }
    );
}

#[test]
fn unsupported_opcodes_and_bad_operands() {
    let mut p = P::new();
    assert_eq!(
        load_err(&p.op(b'S').raw(b"'x'\n").stop()),
        PthError::UnsupportedOpcode {
            opcode: b'S',
            offset: 2
        }
    );
    assert!(matches!(
        load_err(&[0x80, 9, b'N', b'.']),
        PthError::BadValue { offset: 0, .. }
    ));
    let mut p = P::new();
    assert!(matches!(
        load_err(
            &p.op(b'X')
                .raw(&2u32.to_le_bytes())
                .raw(&[0xff, 0xfe])
                .stop()
        ),
        PthError::BadValue { offset: 2, .. }
    ));
    let mut p = P::new();
    assert!(matches!(
        load_err(&p.int(1).int(2).op(0x93).stop()),
        PthError::BadValue { .. }
    ));
    let mut p = P::new();
    assert!(matches!(
        load_err(&p.op(b'(').int(1).op(b'd').stop()),
        PthError::BadValue { .. }
    ));
}

#[test]
fn storage_and_tensor_arguments_are_type_checked() {
    // A persistent id that is not a storage tuple.
    let mut p = P::new();
    assert!(matches!(
        load_err(&p.str("storage").op(b'Q').stop()),
        PthError::BadValue { offset: 14, .. }
    ));
    // A complex storage class: allowlisted name, no element format.
    let mut p = P::new();
    p.op(b'(')
        .str("storage")
        .global("torch", "ComplexFloatStorage")
        .str("0")
        .str("cpu")
        .int(4)
        .op(b't')
        .op(b'Q');
    assert_eq!(
        load_err(&p.stop()),
        PthError::UnknownStorage {
            name: "torch.ComplexFloatStorage".into()
        }
    );
    // A v3 tensor of a dtype qforge cannot hold.
    let mut bad = t("c", "UntypedStorage", "0", 8, &[1]);
    bad.dtype = Some("complex64");
    assert_eq!(
        load_err(&state_dict_pickle(&[bad], false)),
        PthError::UnsupportedDType {
            name: "torch.complex64".into()
        }
    );
    // Negative size.
    let mut p = P::new();
    p.global("torch._utils", "_rebuild_tensor_v2")
        .op(b'(')
        .op(b'(')
        .str("storage")
        .global("torch", "FloatStorage")
        .str("0")
        .str("cpu")
        .int(1)
        .op(b't')
        .op(b'Q');
    p.int(0)
        .op(b'(')
        .op(b'J')
        .raw(&(-1i32).to_le_bytes())
        .op(b't')
        .ints(&[1])
        .op(0x89)
        .empty_ordered_dict()
        .op(b't')
        .op(b'R');
    assert!(matches!(load_err(&p.stop()), PthError::BadValue { .. }));
}

// ---------------------------------------------------------------------------------------------
// malformed ZIP containers and state dicts

#[test]
fn compressed_entry_is_rejected() {
    let pkl = state_dict_pickle(&[], false);
    let mut entries = pth_entries(&pkl, &[]);
    entries[0].method = 8;
    assert_eq!(
        pth_err(&zip_bytes(&entries)),
        PthError::NotStored {
            entry: "archive/data.pkl".into(),
            method: 8
        }
    );
}

#[test]
fn entry_past_eof_is_rejected() {
    let pkl = state_dict_pickle(&[t("w", "FloatStorage", "0", 1, &[1])], false);
    let mut entries = pth_entries(&pkl, &[("0", vec![0; 4])]);
    entries[2].declared = Some(1 << 40);
    assert_eq!(
        pth_err(&zip_bytes(&entries)),
        PthError::EntryOutOfBounds {
            entry: "archive/data/0".into()
        }
    );
    // Offsets that overflow u64 arithmetic.
    entries[2].declared = Some(u64::MAX - 10);
    assert_eq!(
        pth_err(&zip_bytes(&entries)),
        PthError::EntryOutOfBounds {
            entry: "archive/data/0".into()
        }
    );
}

#[test]
fn zip_structure_errors() {
    let pkl = state_dict_pickle(&[], false);
    // Local name differs from the central one.
    let mut entries = pth_entries(&pkl, &[]);
    entries[1].local_name = Some("archive/byteordeX".into());
    assert_eq!(
        pth_err(&zip_bytes(&entries)),
        PthError::NameMismatch {
            entry: "archive/byteorder".into()
        }
    );
    // A record outside the archive folder.
    let mut entries = pth_entries(&pkl, &[]);
    entries.push(entry("other/data.pkl", b"."));
    assert_eq!(
        pth_err(&zip_bytes(&entries)),
        PthError::OutsideFolder {
            entry: "other/data.pkl".into(),
            prefix: "archive/".into()
        }
    );
    // Not a ZIP at all, and an empty one.
    assert!(matches!(pth_err(b"\x80\x02}."), PthError::Zip(_)));
    assert!(matches!(pth_err(&zip_bytes(&[])), PthError::Zip(_)));
    // The prefix is taken from the first entry, whatever it is.
    let entries: Vec<Entry> = pth_entries(&pkl, &[])
        .into_iter()
        .map(|mut e| {
            e.name = e.name.replace("archive/", "consolidated.07/");
            e
        })
        .collect();
    assert_eq!(parse_state_dict(&zip_bytes(&entries), 0).unwrap(), vec![]);
}

#[test]
fn missing_records() {
    let entries = vec![
        entry("archive/byteorder", b"little"),
        entry("archive/version", b"3\n"),
    ];
    assert_eq!(
        pth_err(&zip_bytes(&entries)),
        PthError::MissingEntry {
            entry: "data.pkl".into()
        }
    );
    let pkl = state_dict_pickle(
        &[
            t("w", "FloatStorage", "0", 1, &[1]),
            t("v", "FloatStorage", "1", 1, &[1]),
        ],
        false,
    );
    let entries = pth_entries(&pkl, &[("0", vec![0; 4])]);
    assert_eq!(
        pth_err(&zip_bytes(&entries)),
        PthError::MissingEntry {
            entry: "data/1".into()
        }
    );
}

#[test]
fn storage_smaller_than_view() {
    // The record is as long as the persistent id says, but the view needs more.
    let mut w = t("w", "BFloat16Storage", "0", 6, &[2, 3]);
    w.offset = 1;
    let pkl = state_dict_pickle(&[w], false);
    let bytes = zip_bytes(&pth_entries(&pkl, &[("0", vec![0; 12])]));
    assert_eq!(
        pth_err(&bytes),
        PthError::ViewOutOfBounds { tensor: "w".into() }
    );
    // The record is shorter than the persistent id says.
    let pkl = state_dict_pickle(&[t("w", "BFloat16Storage", "0", 6, &[2, 3])], false);
    let bytes = zip_bytes(&pth_entries(&pkl, &[("0", vec![0; 10])]));
    assert_eq!(
        pth_err(&bytes),
        PthError::StorageSize {
            key: "0".into(),
            expected: 12,
            got: 10
        }
    );
    // Strides that overflow.
    let mut w = t("w", "FloatStorage", "0", 4, &[2, 2]);
    w.stride = vec![u64::MAX / 2, 1];
    let bytes = zip_bytes(&pth_entries(
        &state_dict_pickle(&[w], false),
        &[("0", vec![0; 16])],
    ));
    assert_eq!(
        pth_err(&bytes),
        PthError::ViewOutOfBounds { tensor: "w".into() }
    );
    // A broadcast view (stride 0) that would expand 4 bytes into 4 GB.
    let mut w = t("w", "FloatStorage", "0", 1, &[1 << 30]);
    w.stride = vec![0];
    let bytes = zip_bytes(&pth_entries(
        &state_dict_pickle(&[w], false),
        &[("0", vec![0; 4])],
    ));
    assert_eq!(
        pth_err(&bytes),
        PthError::ExpandedView { tensor: "w".into() }
    );
}

#[test]
fn big_endian_byteorder_is_rejected() {
    let pkl = state_dict_pickle(&[], false);
    let mut entries = pth_entries(&pkl, &[]);
    entries[1].data = b"big".to_vec();
    assert_eq!(pth_err(&zip_bytes(&entries)), PthError::BigEndian);
    entries[1].data = b"middle".to_vec();
    assert_eq!(
        pth_err(&zip_bytes(&entries)),
        PthError::UnknownByteOrder {
            value: "middle".into()
        }
    );
    // Absent: little-endian assumed (very old files).
    entries.remove(1);
    assert_eq!(parse_state_dict(&zip_bytes(&entries), 0).unwrap(), vec![]);
}

#[test]
fn not_a_state_dict() {
    let mut p = P::new();
    let bytes = zip_bytes(&pth_entries(&p.op(b']').stop(), &[]));
    assert_eq!(
        pth_err(&bytes),
        PthError::NotAStateDict {
            reason: "data.pkl holds a list, not a dict".into()
        }
    );
    let mut p = P::new();
    let bytes = zip_bytes(&pth_entries(
        &p.op(b'}').str("w").int(3).op(b's').stop(),
        &[],
    ));
    assert_eq!(
        pth_err(&bytes),
        PthError::NotAStateDict {
            reason: "value of \"w\" is a int, not a tensor".into()
        }
    );
    let pkl = state_dict_pickle(
        &[
            t("w", "FloatStorage", "0", 1, &[1]),
            t("w", "FloatStorage", "0", 1, &[1]),
        ],
        false,
    );
    let bytes = zip_bytes(&pth_entries(&pkl, &[("0", vec![0; 4])]));
    assert_eq!(
        pth_err(&bytes),
        PthError::NotAStateDict {
            reason: "key \"w\" appears twice".into()
        }
    );
}

/// A real ZIP64 layout: a storage record whose local header sits past 4 GiB (a sparse file, so
/// it costs no disk), read through the memory map.
#[cfg(target_pointer_width = "64")]
#[test]
fn zip64_offsets_past_4_gib() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.pth");
    let pkl = state_dict_pickle(&[t("w", "BFloat16Storage", "0", 4, &[2, 2])], true);
    let mut entries = pth_entries(&pkl, &[("0", bf16_bytes(&[1.0, -2.0, 3.5, 0.25]))]);
    entries[2].gap = 5 << 30;
    let image = zip_image(&entries, false); // ZIP64 only where the values need it
    assert!(image.len > 5 << 30);
    image.write_sparse(&path);
    let f = PthFile::open(&path).unwrap();
    let w = f.tensor("w").unwrap();
    let TensorLayout::Contiguous(span) = &w.layout else {
        panic!("contiguous")
    };
    assert!(span.offset > 5 << 30 && span.offset % 64 == 0);
    assert_eq!(f.to_f32(w).unwrap(), [1.0, -2.0, 3.5, 0.25]);
}

// ---------------------------------------------------------------------------------------------
// Meta model-parallel merges of hostile shards

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn meta_shards_must_be_numbered_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("meta-mp2"), dir.path());
    std::fs::rename(
        dir.path().join("consolidated.01.pth"),
        dir.path().join("consolidated.02.pth"),
    )
    .unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(Error::NotAModel { .. })
    ));
}

#[test]
fn meta_shards_with_different_tensors_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("meta-mp2"), dir.path());
    let pkl = state_dict_pickle(
        &[t("norm.weight", "BFloat16Storage", "0", 32, &[32])],
        false,
    );
    std::fs::write(
        dir.path().join("consolidated.01.pth"),
        zip_bytes(&pth_entries(&pkl, &[("0", vec![0; 64])])),
    )
    .unwrap();
    match Checkpoint::open(dir.path()) {
        Err(Error::ShardMismatch { tensor, reason, .. }) => {
            assert_eq!(tensor, "tok_embeddings.weight");
            assert_eq!(
                reason,
                "present in consolidated.00.pth but not in consolidated.01.pth"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn meta_replicated_norms_must_match() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("meta-mp2"), dir.path());
    let shard = dir.path().join("consolidated.01.pth");
    let f = PthFile::open(&shard).unwrap();
    let TensorLayout::Contiguous(span) = f.tensor("norm.weight").unwrap().layout.clone() else {
        panic!("contiguous")
    };
    drop(f);
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[usize::try_from(span.offset).unwrap()] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    match Checkpoint::open(dir.path()) {
        Err(Error::ShardMismatch { tensor, .. }) => assert_eq!(tensor, "norm.weight"),
        other => panic!("unexpected {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// fuzzing

fn fuzz_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    // 2000 cases by default; PROPTEST_CASES=… for a longer soak.
    #![proptest_config(ProptestConfig { cases: fuzz_cases(), ..ProptestConfig::default() })]

    /// Random byte flips, truncations and insertions anywhere in a valid .pth never panic, and
    /// whatever is accepted still has every tensor's bytes inside the file.
    #[test]
    fn mutated_pth_never_panics(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8)) {
        let mut bytes = valid_pth();
        for (at, byte, kind) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes[i] ^= 1 << (byte % 8),
                2 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
        }
        if let Ok(ts) = parse_state_dict(&bytes, 0) {
            for t in &ts {
                let _ = t.bytes(&bytes);
            }
        }
    }

    /// The same for mutations of the pickle alone (re-zipped, so the ZIP layer passes and the
    /// interpreter sees every change).
    #[test]
    fn mutated_pickle_never_panics(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8)) {
        let mut w = t("w", "BFloat16Storage", "0", 8, &[2, 3]);
        w.offset = 2;
        let mut pkl = state_dict_pickle(&[w, t("v", "FloatStorage", "1", 2, &[2])], true);
        for (at, byte, kind) in edits {
            if pkl.is_empty() {
                break;
            }
            let i = at.index(pkl.len());
            match kind {
                0 => pkl[i] = byte,
                1 => pkl[i] ^= 1 << (byte % 8),
                2 => pkl.truncate(i),
                _ => pkl.insert(i, byte),
            }
        }
        let _ = pickle::load(&pkl);
        let bytes = zip_bytes(&pth_entries(&pkl, &[("0", vec![0; 16]), ("1", vec![0; 8])]));
        if let Ok(ts) = parse_state_dict(&bytes, 0) {
            for t in &ts {
                let _ = t.bytes(&bytes);
            }
        }
    }

    /// Random programs over the opcodes the interpreter implements (plus a few it refuses), with
    /// random operand bytes: every run ends in a value or an error, never a panic or a hang.
    #[test]
    fn random_opcode_streams_never_panic(tokens in proptest::collection::vec((0usize..48, proptest::collection::vec(any::<u8>(), 0..6)), 0..200)) {
        const OPS: &[u8] = b"(.012JKMNQRXabcd}ehijl]oqrstu)GBCSIVgp\x80\x81\x85\x86\x87\x88\x89\x8a\x8b\x8c\x93\x94\x95";
        let mut p = vec![0x80, 2];
        for (op, operand) in tokens {
            p.push(OPS[op % OPS.len()]);
            p.extend_from_slice(&operand);
        }
        let _ = pickle::load(&p);
    }
}
