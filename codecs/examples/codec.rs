//! Raw-file front end to qforge's codecs, for the Python interop tests.
//!
//! ```text
//! codec encode   <F8_E4M3|F8_E4M3_SAT|F8_E5M2|F8_E5M2_SAT|BF16|F16> IN OUT
//! codec quantize <Q8_0|Q4_0|Q4_1|Q5_0|Q5_1|Q2_K|Q3_K|Q4_K|Q5_K|Q6_K> IN OUT --row N [--imatrix FILE]
//! codec decode   <DTYPE|E2M1|E8M0> IN OUT
//! codec ct       <NVFP4|MXFP4|FP8_CHANNEL|FP8_BLOCK> IN OUT --row K [--arith bf16|f32]
//! codec mlx      <4|8> IN OUT --row K --group G [--arith bf16|f32]
//! ```
//!
//! `encode` also takes `E2M1` and `E8M0` (one code per byte, ml_dtypes' rules) and `quantize`
//! takes `MXFP4` (ggml blocks). `ct` quantizes a row-major `[n, K]` matrix with
//! compressed-tensors' arithmetic (default `--arith bf16`: the input holds BF16 values) and writes
//! OUT (`weight_packed` bytes, or FP8 codes), OUT.scale (`weight_scale`: FP8/E8M0 bytes for the
//! FP4 formats, f32 for FP8), OUT.deq (the dequantized values, f32) and, for NVFP4, OUT.gs (the
//! f32 global scale from the input's amax). `mlx` writes OUT (the `uint32` words, LE),
//! OUT.scale, OUT.bias and OUT.deq (f32).
//!
//! IN for `encode`/`quantize` is raw little-endian f32 (the imatrix file too); OUT of `encode`
//! is one code per value (2 bytes LE for BF16/F16), of `quantize` the ggml blocks in GGUF
//! layout. `decode` turns bytes of any decodable dtype (the `_SAT` names decode like their base
//! format) back into little-endian f32. Exit status 2 for usage errors, 1 for data errors.

use std::process::ExitCode;

use qforge_codecs::fp8::Fp8Encoding;
use qforge_codecs::int4::Int4Arith;
use qforge_codecs::{decode_to_f32, float, fp4, fp8_ct, ggml_quant, DType};

const USAGE: &str = "usage: codec encode <F8_E4M3|F8_E4M3_SAT|F8_E5M2|F8_E5M2_SAT|BF16|F16> IN OUT
       codec quantize <Q8_0|Q4_0|Q4_1|Q5_0|Q5_1|Q2_K|Q3_K|Q4_K|Q5_K|Q6_K> IN OUT --row N [--imatrix FILE]
       codec decode <DTYPE|E2M1|E8M0> IN OUT
       codec ct <NVFP4|MXFP4|FP8_CHANNEL|FP8_BLOCK> IN OUT --row K [--arith bf16|f32]
       codec mlx <4|8> IN OUT --row K --group G [--arith bf16|f32]";

enum Failure {
    Usage(String),
    Data(String),
}

fn read_f32(path: &str) -> Result<Vec<f32>, Failure> {
    let bytes = std::fs::read(path).map_err(|e| Failure::Data(format!("reading {path}: {e}")))?;
    if bytes.len() % 4 != 0 {
        return Err(Failure::Data(format!(
            "{path}: {} bytes is not a whole number of f32 values",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn write(path: &str, bytes: &[u8]) -> Result<(), Failure> {
    std::fs::write(path, bytes).map_err(|e| Failure::Data(format!("writing {path}: {e}")))
}

fn encode(name: &str, input: &str, output: &str) -> Result<(), Failure> {
    let x = read_f32(input)?;
    let fp8 = match name.to_ascii_uppercase().as_str() {
        "F8_E4M3" => Some(Fp8Encoding::E4M3),
        "F8_E4M3_SAT" => Some(Fp8Encoding::E4M3Sat),
        "F8_E5M2" => Some(Fp8Encoding::E5M2),
        "F8_E5M2_SAT" => Some(Fp8Encoding::E5M2Sat),
        _ => None,
    };
    let out: Vec<u8> = match (fp8, name.to_ascii_uppercase().as_str()) {
        (Some(enc), _) => {
            let mut out = vec![0u8; x.len()];
            enc.encode_f32_slice(&x, &mut out);
            out
        }
        (None, "BF16") => x
            .iter()
            .flat_map(|&v| float::f32_to_bf16_bits(v).to_le_bytes())
            .collect(),
        (None, "F16") => x
            .iter()
            .flat_map(|&v| float::f32_to_f16_bits(v).to_le_bytes())
            .collect(),
        (None, "E2M1") => x.iter().map(|&v| fp4::encode_e2m1(v)).collect(),
        (None, "E8M0") => x.iter().map(|&v| fp4::encode_e8m0(v)).collect(),
        _ => return Err(Failure::Usage(format!("encode: unknown format {name}"))),
    };
    write(output, &out)
}

fn quantize(name: &str, input: &str, output: &str, opts: &[String]) -> Result<(), Failure> {
    if name.eq_ignore_ascii_case("MXFP4") {
        let q = fp4::quantize_mxfp4_ggml(&read_f32(input)?)
            .map_err(|e| Failure::Data(format!("{e}")))?;
        return write(output, &q);
    }
    let dtype = DType::from_name(name)
        .filter(|d| ggml_quant::supports(*d))
        .ok_or_else(|| Failure::Usage(format!("quantize: unsupported type {name}")))?;
    let mut row = None;
    let mut imatrix = None;
    let mut it = opts.iter();
    while let Some(o) = it.next() {
        let val = it
            .next()
            .ok_or_else(|| Failure::Usage(format!("{o} needs a value")))?;
        match o.as_str() {
            "--row" => {
                row = Some(
                    val.parse::<usize>()
                        .map_err(|_| Failure::Usage(format!("--row: not a number: {val}")))?,
                );
            }
            "--imatrix" => imatrix = Some(read_f32(val)?),
            _ => return Err(Failure::Usage(format!("unknown option {o}"))),
        }
    }
    let row = row.ok_or_else(|| Failure::Usage("quantize needs --row N".into()))?;
    let x = read_f32(input)?;
    let q = ggml_quant::quantize_to_vec(dtype, &x, row, imatrix.as_deref())
        .map_err(|e| Failure::Data(format!("{e}")))?;
    write(output, &q)
}

fn decode(name: &str, input: &str, output: &str) -> Result<(), Failure> {
    let scalar: Option<fn(u8) -> f32> = match name.to_ascii_uppercase().as_str() {
        "E2M1" => Some(fp4::e2m1_to_f32),
        "E8M0" => Some(fp4::e8m0_to_f32),
        _ => None,
    };
    if let Some(f) = scalar {
        let bytes =
            std::fs::read(input).map_err(|e| Failure::Data(format!("reading {input}: {e}")))?;
        let raw: Vec<u8> = bytes.iter().flat_map(|&b| f(b).to_le_bytes()).collect();
        return write(output, &raw);
    }
    let base = name
        .strip_suffix("_SAT")
        .or_else(|| name.strip_suffix("_sat"))
        .unwrap_or(name);
    let dtype = DType::from_name(base)
        .ok_or_else(|| Failure::Usage(format!("decode: unknown dtype {name}")))?;
    let bytes = std::fs::read(input).map_err(|e| Failure::Data(format!("reading {input}: {e}")))?;
    let (bs, bb) = (dtype.block_size(), dtype.block_bytes());
    if bytes.len() as u64 % bb != 0 {
        return Err(Failure::Data(format!(
            "{input}: {} bytes is not a whole number of {dtype} blocks ({bb} bytes)",
            bytes.len()
        )));
    }
    let n = usize::try_from(bytes.len() as u64 / bb * bs)
        .map_err(|_| Failure::Data("too many elements".into()))?;
    let mut out = vec![0f32; n];
    decode_to_f32(dtype, &bytes, &mut out).map_err(|e| Failure::Data(format!("{e}")))?;
    let raw: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
    write(output, &raw)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `ct`: compressed-tensors' quantizers (see the module docs for the files written).
/// `--row K`, `--group G` and `--arith bf16|f32` of `ct` and `mlx`.
fn block_opts(opts: &[String]) -> Result<(Option<usize>, Option<usize>, Int4Arith), Failure> {
    let (mut row, mut group, mut arith) = (None, None, Int4Arith::Bf16);
    let mut it = opts.iter();
    while let Some(o) = it.next() {
        let val = it
            .next()
            .ok_or_else(|| Failure::Usage(format!("{o} needs a value")))?;
        let num = || {
            val.parse::<usize>()
                .map_err(|_| Failure::Usage(format!("{o}: not a number: {val}")))
        };
        match (o.as_str(), val.as_str()) {
            ("--row", _) => row = Some(num()?),
            ("--group", _) => group = Some(num()?),
            ("--arith", "bf16") => arith = Int4Arith::Bf16,
            ("--arith", "f32") => arith = Int4Arith::F32,
            _ => return Err(Failure::Usage(format!("bad option {o} {val}"))),
        }
    }
    Ok((row, group, arith))
}

/// `mlx`: MLX affine quantization (see the module docs for the files written).
fn mlx(bits: &str, input: &str, output: &str, opts: &[String]) -> Result<(), Failure> {
    let (row, group, arith) = block_opts(opts)?;
    let (Some(k), Some(g)) = (row, group) else {
        return Err(Failure::Usage("mlx needs --row K and --group G".into()));
    };
    let bits = bits
        .parse::<u8>()
        .map_err(|_| Failure::Usage(format!("mlx: bits {bits} is not a number")))?;
    let data = |e: qforge_codecs::Error| Failure::Data(format!("{e}"));
    let m = qforge_codecs::mlx::quantize_mlx_affine(&read_f32(input)?, k, bits, g, arith)
        .map_err(data)?;
    let deq = qforge_codecs::mlx::dequantize_mlx_affine(&m, arith).map_err(data)?;
    write(&format!("{output}.deq"), &f32_bytes(&deq))?;
    write(&format!("{output}.scale"), &f32_bytes(&m.scales))?;
    write(&format!("{output}.bias"), &f32_bytes(&m.biases))?;
    let words: Vec<u8> = m.packed.iter().flat_map(|w| w.to_le_bytes()).collect();
    write(output, &words)
}

fn ct(name: &str, input: &str, output: &str, opts: &[String]) -> Result<(), Failure> {
    let (row, _, arith) = block_opts(opts)?;
    let k = row.ok_or_else(|| Failure::Usage("ct needs --row K".into()))?;
    let x = read_f32(input)?;
    let data = |e: qforge_codecs::Error| Failure::Data(format!("{e}"));
    let side = |ext: &str, bytes: &[u8]| write(&format!("{output}.{ext}"), bytes);
    match name.to_ascii_uppercase().as_str() {
        "NVFP4" => {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let gs = fp4::nvfp4_global_scale(amax, arith);
            let p = fp4::quantize_nvfp4(&x, k, gs, arith).map_err(data)?;
            side(
                "deq",
                &f32_bytes(&fp4::dequantize_nvfp4(&p, gs).map_err(data)?),
            )?;
            side("gs", &gs.to_le_bytes())?;
            side("scale", &p.scales)?;
            write(output, &p.packed)
        }
        "MXFP4" => {
            let p = fp4::quantize_mxfp4_ct(&x, k, arith).map_err(data)?;
            side(
                "deq",
                &f32_bytes(&fp4::dequantize_mxfp4_ct(&p, arith).map_err(data)?),
            )?;
            side("scale", &p.scales)?;
            write(output, &p.packed)
        }
        "FP8_CHANNEL" => {
            let (q, s) = fp8_ct::quantize_fp8_channel_ct(&x, k, arith).map_err(data)?;
            side("scale", &f32_bytes(&s))?;
            write(output, &q)
        }
        "FP8_BLOCK" => {
            let b = fp8_ct::quantize_fp8_block_ct(&x, k, fp8_ct::CT_BLOCK, arith).map_err(data)?;
            side(
                "deq",
                &f32_bytes(&fp8_ct::dequantize_fp8_block_ct(&b, arith).map_err(data)?),
            )?;
            side("scale", &f32_bytes(&b.scales))?;
            write(output, &b.codes)
        }
        _ => Err(Failure::Usage(format!("ct: unknown format {name}"))),
    }
}

fn run(args: &[String]) -> Result<(), Failure> {
    match args {
        [op, name, input, output, rest @ ..] => match op.as_str() {
            "encode" if rest.is_empty() => encode(name, input, output),
            "quantize" => quantize(name, input, output, rest),
            "decode" if rest.is_empty() => decode(name, input, output),
            "ct" => ct(name, input, output, rest),
            "mlx" => mlx(name, input, output, rest),
            _ => Err(Failure::Usage(format!(
                "unknown operation or extra arguments: {op}"
            ))),
        },
        _ => Err(Failure::Usage("expected <op> <dtype> IN OUT".into())),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("codec: {m}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Data(m)) => {
            eprintln!("codec: {m}");
            ExitCode::from(1)
        }
    }
}
