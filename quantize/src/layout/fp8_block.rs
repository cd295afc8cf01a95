//! The compressed-tensors tensors of one linear under llm-compressor's `FP8_BLOCK` preset
//! (quantization/quant_scheme.py `FP8_BLOCK`: FP8 E4M3 weights with one scale per 128×128
//! block, `strategy: block`, `block_structure: [128, 128]`; activations FP8 dynamic per token
//! group of 128 at run time). compressed-tensors' `FloatQuantizationCompressor`
//! (compressors/quantized_compressors/fp8_quantized.py) writes `weight` (F8_E4M3, the full
//! `[rows, cols]` shape) and `weight_scale` (model dtype, `[ceil(rows/128), ceil(cols/128)]`,
//! partial edge blocks as `maybe_pad_tensor_for_block_quant` makes them). The arithmetic is
//! `qforge_codecs::fp8_ct`'s (llm-compressor's: `W / scale` rounded to the model dtype
//! before the FP8 cast).

use qforge_codecs::fp8_ct::{self, CT_BLOCK};
use qforge_codecs::DType;

use super::fp4::Source;
use super::{codec_err, shape2};
use qforge_convert::export::{encode_float, OutTensor, Producer};
use qforge_convert::names::TensorId;
use qforge_convert::write::safetensors::TensorSpec;
use qforge_convert::Result;

/// The scale grid of a `[rows, cols]` weight: `[ceil(rows/128), ceil(cols/128)]`.
pub fn scale_shape(rows: usize, cols: usize) -> [usize; 2] {
    [rows.div_ceil(CT_BLOCK[0]), cols.div_ceil(CT_BLOCK[1])]
}

/// The output tensors of quantized linear `id`; scales are stored in `scale_dtype` (the model
/// dtype, in which they are exact).
pub(super) fn tensors<'a>(
    src: Source<'a>,
    id: TensorId,
    module: &str,
    scale_dtype: DType,
) -> Vec<OutTensor<'a>> {
    let (rows, k) = shape2(src.ckpt, id);
    let quant = move || -> Result<fp8_ct::Fp8Blocks> {
        let v = src.rows(id)?;
        fp8_ct::quantize_fp8_block_ct(&v, k, CT_BLOCK, src.arith)
            .map_err(|e| codec_err(src.ckpt, id, e))
    };
    let [sr, sc] = scale_shape(rows, k);
    vec![
        OutTensor {
            spec: TensorSpec {
                name: format!("{module}.weight"),
                dtype: DType::F8_E4M3,
                shape: vec![rows as u64, k as u64],
            },
            produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                buf.extend(quant()?.codes);
                Ok(())
            })),
        },
        OutTensor {
            spec: TensorSpec {
                name: format!("{module}.weight_scale"),
                dtype: scale_dtype,
                shape: vec![sr as u64, sc as u64],
            },
            produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                encode_float(&quant()?.scales, scale_dtype, buf).expect("float dtype checked");
                Ok(())
            })),
        },
    ]
}
