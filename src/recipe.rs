//! Pipeline recipes: one TOML file that says what goes in (a model path or a Hugging Face cache
//! reference), an optional conversion and calibration, one or more quantized outputs, and how to
//! verify them (evaluation text and budgets). Unknown keys are errors, so a typo never silently
//! drops a budget. Relative paths are relative to the recipe file. Paths may start with `~/` and
//! name environment variables as `$NAME` or `${NAME}`; `$QFORGE_CACHE` left unset means the
//! cache the scripts use (`$XDG_CACHE_HOME/qforge`, else `~/.cache/qforge`, as
//! scripts/cache-dir.sh sets it), so a recipe can name what `scripts/demo.sh` leaves there.
//!
//! ```toml
//! [input]
//! model = "HuggingFaceTB/SmolLM2-135M-Instruct"   # or ./path/to/model
//!
//! [output]
//! dir = "out"                 # every artifact, the state file and report.json go here
//!
//! [convert]                   # optional: make an HF BF16 base first (e.g. from a GGUF)
//! to = "hf"
//! dtype = "bf16"
//! allow_lossy = true          # BF16 cannot hold every value a GGUF's blocks decode to
//!
//! [[quantize]]
//! name = "fp8"                # the artifact's name in out/ (".gguf" is added for GGUF mixes)
//! scheme = "fp8-rowwise"
//!
//! [verify]                    # optional
//! data = "hamlet.txt"
//! chunks = 4
//! max_ppl_drift = "2%"
//! max_kld = 0.05
//! min_top1 = 90.0
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// A whole recipe.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// What goes in.
    pub input: Input,
    /// Where everything goes.
    pub output: Output,
    /// Optional conversion of the input before quantization.
    #[serde(default)]
    pub convert: Option<ConvertStep>,
    /// Optional calibration (static FP8 scales, importance matrix, GPTQ).
    #[serde(default)]
    pub calibrate: Option<CalibrateStep>,
    /// The quantized artifacts.
    #[serde(default)]
    pub quantize: Vec<QuantizeStep>,
    /// Verification of every artifact against the base.
    #[serde(default)]
    pub verify: Option<VerifyStep>,
}

/// `[input]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// A path (file or directory) or a Hugging Face cache reference `org/name[@revision]`.
    pub model: String,
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Directory for the artifacts, the state file and the report.
    pub dir: PathBuf,
    /// Report file name inside `dir` [default: report.json].
    #[serde(default = "default_report")]
    pub report: String,
}

fn default_report() -> String {
    "report.json".into()
}

/// `[convert]`: the input converted before quantization (and used as the verification base).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertStep {
    /// `hf` (the only target the later steps read back as a base; `gguf` and `meta` work too).
    #[serde(default = "default_to")]
    pub to: String,
    /// `bf16`, `f16` or `f32` [default: keep].
    #[serde(default)]
    pub dtype: Option<String>,
    /// Output name inside the output directory [default: base].
    #[serde(default = "default_base")]
    pub name: String,
    /// Largest safetensors shard (e.g. 5GB).
    #[serde(default)]
    pub shard_size: Option<String>,
    /// Write a conversion that changes what the model computes (e.g. a `dtype` that cannot hold
    /// every value of a GGUF source's decoded blocks), as `qforge convert --allow-lossy`.
    #[serde(default)]
    pub allow_lossy: bool,
}

fn default_to() -> String {
    "hf".into()
}

fn default_base() -> String {
    "base".into()
}

/// `[calibrate]`: runs `qforge calibrate` / `qforge imatrix` once; every quantize step that
/// uses the result gets it: fp8-static, GPTQ (int4/int8) and AWQ (int4) steps as `--calib`,
/// GGUF mixes an imatrix as `--imatrix`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrateStep {
    /// `fp8-static`, `gptq`, `awq` or `imatrix`.
    pub method: String,
    /// Calibration text (a different text from the evaluation text).
    pub data: PathBuf,
    /// Tokens per calibration chunk.
    #[serde(default)]
    pub ctx: Option<usize>,
    /// Number of calibration chunks (samples).
    #[serde(default)]
    pub chunks: Option<usize>,
    /// GPTQ/AWQ scheme (int4-g<N>, int4-row, ...); must match the quantize steps that use it.
    #[serde(default)]
    pub scheme: Option<String>,
    /// AWQ: asymmetric INT4 (zero points); the quantize steps that use it set `asym = true`.
    #[serde(default)]
    pub asym: bool,
    /// fp8-static: the calibration forward's float type, `f32` (default) or `f64`.
    #[serde(default)]
    pub precision: Option<String>,
    /// Output file name inside the output directory [default: calib.json].
    #[serde(default = "default_calib")]
    pub name: String,
}

fn default_calib() -> String {
    "calib.json".into()
}

/// One `[[quantize]]` artifact (the options of `qforge quantize`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeStep {
    /// Artifact name inside the output directory (a GGUF mix gets `.gguf` appended if missing).
    pub name: String,
    /// fp8-rowwise, fp8-static, int4-g<N>, int4-row, gguf:<mix>.
    pub scheme: String,
    /// compressed-tensors, fbgemm or gguf.
    #[serde(default)]
    pub layout: Option<String>,
    /// all-linear, meta-405b or meta-llama4.
    #[serde(default)]
    pub policy: Option<String>,
    /// Modules left unquantized (HF module names or `re:<regex>`).
    #[serde(default)]
    pub ignore: Vec<String>,
    /// INT4 with zero points.
    #[serde(default)]
    pub asym: bool,
    /// Model dtype of unquantized tensors (bf16, f32).
    #[serde(default)]
    pub dtype: Option<String>,
    /// Largest safetensors shard (e.g. 5GB).
    #[serde(default)]
    pub shard_size: Option<String>,
    /// fbgemm activation_scale_ub.
    #[serde(default)]
    pub activation_scale_ub: Option<f32>,
    /// Budgets for this artifact, overriding `[verify]`'s.
    #[serde(default)]
    pub max_ppl_drift: Option<Percent>,
    /// Mean KLD budget override.
    #[serde(default)]
    pub max_kld: Option<f64>,
    /// Top-1 agreement budget override (percent).
    #[serde(default)]
    pub min_top1: Option<f64>,
    /// Skip verification of this artifact.
    #[serde(default)]
    pub verify: Option<bool>,
}

/// `[verify]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyStep {
    /// Evaluation text.
    pub data: PathBuf,
    /// Tokens per chunk [default: 512].
    #[serde(default)]
    pub ctx: Option<usize>,
    /// Chunks evaluated [default: all].
    #[serde(default)]
    pub chunks: Option<usize>,
    /// Largest allowed perplexity increase ("1%" or 1.0).
    #[serde(default)]
    pub max_ppl_drift: Option<Percent>,
    /// Largest allowed mean KL divergence (nats per token).
    #[serde(default)]
    pub max_kld: Option<f64>,
    /// Smallest allowed top-1 agreement, percent.
    #[serde(default)]
    pub min_top1: Option<f64>,
}

/// A percentage written as `"1%"`, `"0.5"` or `1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(v) if v.is_finite() && v >= 0.0 => Ok(Percent(v)),
            Raw::N(v) => Err(serde::de::Error::custom(format!("{v} is not a percentage"))),
            Raw::S(s) => crate::cli::parse_percent(&s)
                .map(Percent)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Recipe {
    /// Parse a recipe from TOML text.
    pub fn parse(text: &str) -> Result<Self> {
        let r: Recipe = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        r.validate()?;
        Ok(r)
    }

    /// Read and parse a recipe file, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading recipe {}", path.display()))?;
        let mut r = Recipe::parse(&text).with_context(|| {
            format!(
                "{}: not a valid recipe\n  hint: see `qforge pipeline --help` and examples/*.toml",
                path.display()
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let at = |what: &str| format!("{}: {what}", path.display());
        let rel = |p: &mut PathBuf, what: &str| -> Result<()> {
            let e = PathBuf::from(expand_vars(&p.to_string_lossy()).with_context(|| at(what))?);
            *p = if e.is_relative() { base.join(e) } else { e };
            Ok(())
        };
        rel(&mut r.output.dir, "[output] dir")?;
        if let Some(c) = &mut r.calibrate {
            rel(&mut c.data, "[calibrate] data")?;
        }
        if let Some(v) = &mut r.verify {
            rel(&mut v.data, "[verify] data")?;
        }
        if crate::modelref::looks_like_path(&r.input.model) {
            let e =
                PathBuf::from(expand_vars(&r.input.model).with_context(|| at("[input] model"))?);
            let p = if e.is_relative() { base.join(e) } else { e };
            r.input.model = p.to_string_lossy().into_owned();
        }
        Ok(r)
    }

    /// Checks serde cannot express: names are plain file names and unique; schemes parse.
    fn validate(&self) -> Result<()> {
        let mut names = std::collections::BTreeSet::new();
        let plain = |n: &str| {
            !n.is_empty() && !n.starts_with('.') && !n.contains(['/', '\\', '\0']) && n != ".."
        };
        let mut check = |n: &str, what: &str| -> Result<()> {
            if !plain(n) {
                bail!(
                    "{what} name {n:?} must be a plain file name (no '/', not starting with '.')"
                );
            }
            if !names.insert(n.to_owned()) {
                bail!("{what} name {n:?} is used twice");
            }
            Ok(())
        };
        check(&self.output.report, "report")?;
        if let Some(c) = &self.convert {
            check(&c.name, "[convert]")?;
            if !matches!(c.to.as_str(), "hf" | "gguf" | "meta") {
                bail!(
                    "[convert] to = {:?}: use \"hf\", \"gguf\" or \"meta\"",
                    c.to
                );
            }
        }
        if let Some(c) = &self.calibrate {
            check(&c.name, "[calibrate]")?;
            if qforge_quantize::scheme::Calibration::from_name(&c.method).is_none() {
                bail!(
                    "[calibrate] method = {:?}: use \"fp8-static\", \"gptq\", \"awq\" or \"imatrix\"",
                    c.method
                );
            }
            if c.asym && c.method != "awq" {
                bail!("[calibrate] asym applies to method = \"awq\"");
            }
            match (c.precision.as_deref(), c.method.as_str()) {
                (None | Some("f32"), _) | (Some("f64"), "fp8-static") => {}
                (Some("f64"), m) => {
                    bail!("[calibrate] precision = \"f64\" applies to fp8-static, not {m:?}")
                }
                (Some(p), _) => bail!("[calibrate] precision = {p:?}: use \"f32\" or \"f64\""),
            }
        }
        for q in &self.quantize {
            check(&Recipe::artifact_name(q), "[[quantize]]")?;
            crate::commands::quantize::parse_scheme(&q.scheme, q.asym)
                .with_context(|| format!("[[quantize]] {:?}", q.name))?;
        }
        if self.quantize.is_empty() && self.convert.is_none() {
            bail!("the recipe makes nothing: add a [[quantize]] or a [convert] section");
        }
        Ok(())
    }

    /// The file or directory name of a quantize step's artifact.
    pub fn artifact_name(q: &QuantizeStep) -> String {
        // the scheme says (llama.cpp names work without `gguf:`)
        let gguf = crate::commands::quantize::parse_scheme(&q.scheme, q.asym)
            .is_ok_and(qforge_quantize::scheme::Scheme::writes_gguf)
            || q.layout.as_deref() == Some("gguf");
        if gguf && !q.name.to_ascii_lowercase().ends_with(".gguf") {
            format!("{}.gguf", q.name)
        } else {
            q.name.clone()
        }
    }
}

/// qforge's cache directory when `$QFORGE_CACHE` is unset: `$XDG_CACHE_HOME/qforge`, else
/// `~/.cache/qforge` (the rule of scripts/cache-dir.sh, which the demo and the tests use).
fn default_cache(var: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    match var("XDG_CACHE_HOME") {
        Some(x) => Some(format!("{x}/qforge")),
        None => var("HOME").map(|h| format!("{h}/.cache/qforge")),
    }
}

/// A recipe path with a leading `~/` and `$NAME` / `${NAME}` replaced from the environment.
/// An unset (or empty) variable is an error naming it, except `QFORGE_CACHE`, which falls back
/// to [`default_cache`]; `$$` is a literal `$`.
pub fn expand_vars(s: &str) -> Result<String> {
    expand_with(s, &|k: &str| {
        std::env::var(k).ok().filter(|v| !v.is_empty())
    })
}

fn expand_with(s: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let lookup = |k: &str| -> Result<String> {
        match var(k) {
            Some(v) => Ok(v),
            None if k == "QFORGE_CACHE" => default_cache(var)
                .ok_or_else(|| anyhow::anyhow!("$QFORGE_CACHE is unset and so is $HOME")),
            None => bail!(
                "${k} is not set\n  hint: export {k}=... before running, or write the path out"
            ),
        }
    };
    let mut out = String::new();
    let mut rest = s;
    if let Some(r) = s.strip_prefix("~/") {
        out.push_str(&lookup("HOME")?);
        out.push('/');
        rest = r;
    }
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(b) = after.strip_prefix('{') {
            let Some(end) = b.find('}') else {
                bail!("{s:?}: `${{` without a closing `}}`");
            };
            (&b[..end], &b[end + 1..])
        } else if let Some(t) = after.strip_prefix('$') {
            out.push('$');
            rest = t;
            continue;
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("{s:?}: `$` must be followed by a variable name (write `$$` for a `$`)");
        }
        out.push_str(&lookup(name)?);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_expand_home_and_variables() {
        let env = |k: &str| match k {
            "HOME" => Some("/h".to_owned()),
            "DATA" => Some("/d".to_owned()),
            _ => None,
        };
        let x = |s: &str| expand_with(s, &env);
        assert_eq!(x("~/m").unwrap(), "/h/m");
        assert_eq!(x("$DATA/t.txt").unwrap(), "/d/t.txt");
        assert_eq!(x("${DATA}x/$$y").unwrap(), "/dx/$y");
        assert_eq!(x("$QFORGE_CACHE/demo").unwrap(), "/h/.cache/qforge/demo");
        assert_eq!(x("plain/path").unwrap(), "plain/path");
        let xdg = |k: &str| (k == "XDG_CACHE_HOME").then(|| "/x".to_owned());
        assert_eq!(expand_with("${QFORGE_CACHE}", &xdg).unwrap(), "/x/qforge");
        for (bad, says) in [
            ("$NOPE/a", "$NOPE is not set"),
            ("${DATA", "without a closing"),
            ("a$/b", "followed by a variable name"),
            ("${}", "followed by a variable name"),
        ] {
            let e = format!("{:#}", x(bad).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    const FULL: &str = r#"
[input]
model = "org/name@main"
[output]
dir = "out"
[convert]
dtype = "bf16"
[[quantize]]
name = "fp8"
scheme = "fp8-rowwise"
[[quantize]]
name = "q4"
scheme = "gguf:q4_k_m"
max_ppl_drift = 5
[verify]
data = "hamlet.txt"
chunks = 2
max_ppl_drift = "1.5%"
"#;

    #[test]
    fn parses_and_names_artifacts() {
        let r = Recipe::parse(FULL).unwrap();
        assert_eq!(r.quantize.len(), 2);
        assert_eq!(Recipe::artifact_name(&r.quantize[1]), "q4.gguf");
        assert_eq!(r.verify.as_ref().unwrap().max_ppl_drift, Some(Percent(1.5)));
        assert_eq!(r.quantize[1].max_ppl_drift, Some(Percent(5.0)));
        assert_eq!(r.output.report, "report.json");
        assert_eq!(r.convert.as_ref().unwrap().name, "base");
    }

    #[test]
    fn calibrate_options_are_checked_against_the_method() {
        let base = "[input]\nmodel = \"m\"\n[output]\ndir = \"o\"\n[[quantize]]\nname = \"q\"\n\
                    scheme = \"int4-g64\"\n[calibrate]\ndata = \"t.txt\"\n";
        let parse = |extra: &str| Recipe::parse(&format!("{base}{extra}"));
        let awq = parse("method = \"awq\"\nscheme = \"int4-g64\"\nasym = true").unwrap();
        let c = awq.calibrate.unwrap();
        assert!(c.asym && c.precision.is_none());
        let f64 = parse("method = \"fp8-static\"\nprecision = \"f64\"").unwrap();
        assert_eq!(f64.calibrate.unwrap().precision.as_deref(), Some("f64"));
        for (bad, says) in [
            (
                "method = \"gptq\"\nprecision = \"f64\"",
                "applies to fp8-static",
            ),
            (
                "method = \"fp8-static\"\nprecision = \"f16\"",
                "use \"f32\" or \"f64\"",
            ),
            ("method = \"gptq\"\nasym = true", "asym applies"),
            ("method = \"smoothquant\"", "method = \"smoothquant\""),
        ] {
            let e = format!("{:#}", parse(bad).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let typo = FULL.replace("max_ppl_drift = \"1.5%\"", "max_ppl_drfit = \"1.5%\"");
        let e = format!("{:#}", Recipe::parse(&typo).unwrap_err());
        assert!(e.contains("unknown field `max_ppl_drfit`"), "{e}");
        let bad = FULL.replace("fp8-rowwise", "fp9");
        assert!(Recipe::parse(&bad).is_err());
        let dup = FULL
            .replace("name = \"q4\"", "name = \"fp8\"")
            .replace("gguf:q4_k_m", "int4-g64");
        assert!(format!("{:#}", Recipe::parse(&dup).unwrap_err()).contains("used twice"));
        let esc = FULL.replace("name = \"fp8\"", "name = \"../x\"");
        assert!(Recipe::parse(&esc).is_err());
        let pct = FULL.replace("\"1.5%\"", "\"lots\"");
        assert!(Recipe::parse(&pct).is_err());
    }

    /// A llama.cpp type name makes a GGUF artifact with or without `gguf:` (the scheme says).
    #[test]
    fn gguf_artifacts_are_named_by_the_scheme() {
        let step = |scheme: &str| -> QuantizeStep {
            toml::from_str(&format!("name = \"m\"\nscheme = \"{scheme}\"")).unwrap()
        };
        assert_eq!(Recipe::artifact_name(&step("gguf:q4_k_m")), "m.gguf");
        assert_eq!(Recipe::artifact_name(&step("Q4_K_M")), "m.gguf");
        assert_eq!(Recipe::artifact_name(&step("fp8-rowwise")), "m");
    }
}
