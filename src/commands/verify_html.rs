//! `report.html`: the verification report as one self-contained page (inline CSS and SVG, no
//! network, no JavaScript): the budget verdict on top, the figures, the per-layer hidden-state
//! error and the per-chunk perplexity of both models as charts. Built from the JSON report
//! `qforge verify --report` writes, so the two always say the same. Every string that comes
//! from the command line, the model or the report is HTML-escaped ([`esc`]); numbers that are
//! not finite are shown as text and left out of the charts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Colours of the verdict banner (also what the rendering test looks for in the screenshot).
pub const PASS_RGB: (u8, u8, u8) = (0x1a, 0x7f, 0x37);
/// Red of a failed budget.
pub const FAIL_RGB: (u8, u8, u8) = (0xcf, 0x22, 0x2e);
/// Grey when no budget was given.
pub const NONE_RGB: (u8, u8, u8) = (0x57, 0x60, 0x6a);
const BASE_RGB: &str = "#0969da";
const QUANT_RGB: &str = "#bc4c00";

/// Where `report.html` goes for a JSON report at `json`: beside it, same stem.
pub fn html_path(json: &Path) -> PathBuf {
    json.with_extension("html")
}

/// `s` with `&`, `<`, `>`, `"` and `'` replaced by entities (safe in text and in quoted
/// attributes).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A JSON value as display text: strings as they are, numbers with `prec` decimals, the rest
/// (null, non-finite) as `–`.
fn num(v: &Value, prec: usize) -> String {
    match v.as_f64() {
        Some(x) if x.is_finite() => format!("{x:.prec$}"),
        _ => v.as_str().map_or_else(|| "–".to_owned(), str::to_owned),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "–".to_owned(),
        v => v.to_string(),
    }
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

fn rgb((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// The whole page for a verify report (`qforge verify --report`'s JSON).
pub fn render(report: &Value) -> String {
    let r = &report["result"];
    let failures: Vec<String> = report["failures"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let budgets = &report["budgets"];
    let any_budget = budgets
        .as_object()
        .is_some_and(|m| m.values().any(|v| !v.is_null()));
    let (class, colour, verdict) = if !failures.is_empty() {
        ("fail", FAIL_RGB, "FAIL: over budget".to_owned())
    } else if any_budget {
        ("pass", PASS_RGB, "PASS: within every budget".to_owned())
    } else {
        ("none", NONE_RGB, "no budget given".to_owned())
    };
    let mut h = String::new();
    let title = format!("qforge verify: {}", text(&report["quantized"]));
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>\n\
         body{{font-family:sans-serif;margin:0;color:#1f2328;background:#fff}}\n\
         main{{padding:0 24px 24px}}\n\
         .verdict{{color:#fff;padding:18px 24px;font-size:22px;font-weight:bold}}\n\
         .verdict ul{{margin:6px 0 0;font-size:16px;font-weight:normal}}\n\
         .pass{{background:{}}} .fail{{background:{}}} .none{{background:{}}}\n\
         table{{border-collapse:collapse;margin:12px 0}}\n\
         td,th{{border:1px solid #d0d7de;padding:3px 10px;text-align:right}}\n\
         th{{background:#f6f8fa}} td.l,th.l{{text-align:left}}\n\
         figure{{margin:16px 0}} figcaption{{font-weight:bold;margin-bottom:4px}}\n\
         </style>\n</head>\n<body>\n",
        esc(&title),
        rgb(PASS_RGB),
        rgb(FAIL_RGB),
        rgb(NONE_RGB),
    );
    let _ = writeln!(
        h,
        "<div class=\"verdict {class}\" id=\"verdict\" data-colour=\"{}\">{}",
        rgb(colour),
        esc(&verdict)
    );
    if !failures.is_empty() {
        h.push_str("<ul>\n");
        for f in &failures {
            let _ = writeln!(h, "<li>{}</li>", esc(f));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</div>\n<main>\n");
    summary(&mut h, report);
    let worst = r["worst_layer"].as_u64();
    let layers: Vec<(f64, f64, bool)> = r["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                l["layer"].as_f64().unwrap_or(f64::NAN),
                l["rel_error"].as_f64().unwrap_or(f64::NAN),
                l["layer"].as_u64() == worst,
            )
        })
        .collect();
    h.push_str(
        "<figure id=\"layers\"><figcaption>Hidden-state error after each layer, \
         ‖h<sub>q</sub> − h<sub>b</sub>‖ / ‖h<sub>b</sub>‖ (the layer that added the most \
         in red)</figcaption>\n",
    );
    h.push_str(&bar_chart(&layers, "layer", "relative error"));
    h.push_str("</figure>\n");
    let base = floats(&r["base"]["chunk_ppl"]);
    let quant = floats(&r["quant"]["chunk_ppl"]);
    h.push_str(
        "<figure id=\"chunks\"><figcaption>Perplexity of each chunk (its own scored tokens, \
         not cumulative)</figcaption>\n",
    );
    h.push_str(&line_chart(
        &[("base", BASE_RGB, &base), ("quantized", QUANT_RGB, &quant)],
        "chunk",
        "perplexity",
    ));
    h.push_str("</figure>\n</main>\n</body>\n</html>\n");
    h
}

fn summary(h: &mut String, report: &Value) {
    let r = &report["result"];
    let b = &report["budgets"];
    h.push_str("<table id=\"summary\">\n");
    for (k, v) in [
        ("base", text(&report["base"])),
        ("quantized", text(&report["quantized"])),
        ("text", text(&report["data"])),
        (
            "chunks × ctx",
            format!("{} × {}", text(&report["chunks"]), text(&report["ctx"])),
        ),
    ] {
        let _ = writeln!(
            h,
            "<tr><th class=\"l\">{}</th><td class=\"l\" colspan=\"3\">{}</td></tr>",
            esc(k),
            esc(&v)
        );
    }
    h.push_str("<tr><th class=\"l\"></th><th>base</th><th>quantized</th><th>budget</th></tr>\n");
    let rows = [
        (
            "perplexity",
            num(&r["base"]["ppl"], 4),
            num(&r["quant"]["ppl"], 4),
            String::new(),
        ),
        (
            "PPL drift",
            String::new(),
            match r["ppl_drift_pct"].as_f64() {
                Some(d) if d.is_finite() => format!("{d:+.3} %"),
                _ => "–".to_owned(),
            },
            budget(&b["max_ppl_drift_pct"], "≤ ", " %"),
        ),
        (
            "mean KLD",
            String::new(),
            num(&r["kld_mean"], 6),
            budget(&b["max_kld"], "≤ ", ""),
        ),
        (
            "KLD p99 / max",
            String::new(),
            format!("{} / {}", num(&r["kld_p99"], 6), num(&r["kld_max"], 6)),
            String::new(),
        ),
        (
            "top-1 agreement",
            String::new(),
            format!("{} %", num(&r["top1_pct"], 2)),
            budget(&b["min_top1_pct"], "≥ ", " %"),
        ),
    ];
    for (k, x, y, z) in rows {
        let _ = writeln!(
            h,
            "<tr><th class=\"l\">{}</th><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(k),
            esc(&x),
            esc(&y),
            esc(&z)
        );
    }
    h.push_str("</table>\n");
}

fn budget(v: &Value, pre: &str, post: &str) -> String {
    if v.is_null() {
        "–".to_owned()
    } else {
        format!("{pre}{}{post}", text(v))
    }
}

const W: f64 = 720.0;
const H: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 40.0;

/// A "nice" axis maximum (1, 2, 2.5 or 5 × 10^k) at or above `max`.
fn nice_max(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let e = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * e)
        .find(|&v| v >= max)
        .unwrap_or(10.0 * e)
}

/// The frame, the y ticks (0..=top, five steps) and the axis labels of a chart.
fn frame(s: &mut String, top: f64, x_label: &str, y_label: &str) {
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    let _ = writeln!(
        s,
        "<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#ffffff\"/>"
    );
    let ph = H - TOP - BOTTOM;
    for i in 0..=5 {
        let v = top * f64::from(i) / 5.0;
        let y = TOP + ph - ph * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#d0d7de\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            esc(&tick(v, top))
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text x=\"14\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1})\">{}</text>",
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 6.0,
        esc(x_label),
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_label)
    );
}

fn tick(v: f64, top: f64) -> String {
    // enough decimals to tell the five steps of a 1/2/2.5/5 × 10^k axis apart
    let decimals = if top >= 100.0 {
        0
    } else {
        (2.0 - top.log10().floor()).clamp(1.0, 12.0) as usize
    };
    format!("{v:.decimals$}")
}

fn no_data(s: &mut String) {
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no finite values</text>",
        W / 2.0,
        H / 2.0
    );
}

/// Bars of `(x label, value, highlighted)`; non-finite values get no bar.
fn bar_chart(bars: &[(f64, f64, bool)], x_label: &str, y_label: &str) -> String {
    let mut s = String::new();
    let max = bars
        .iter()
        .map(|b| b.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let top = nice_max(max);
    frame(&mut s, top, x_label, y_label);
    if bars.iter().all(|b| !b.1.is_finite()) {
        no_data(&mut s);
    }
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let slot = pw / bars.len().max(1) as f64;
    let label_every = (bars.len() / 16).max(1);
    for (i, &(x, v, hi)) in bars.iter().enumerate() {
        let cx = LEFT + slot * i as f64;
        if v.is_finite() && v >= 0.0 {
            let bh = ph * (v / top).min(1.0);
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\">\
                 <title>{} {}: {v:.6}</title></rect>",
                cx + slot * 0.1,
                TOP + ph - bh,
                slot * 0.8,
                if hi {
                    rgb(FAIL_RGB)
                } else {
                    BASE_RGB.to_owned()
                },
                esc(x_label),
                esc(&num(&Value::from(x), 0)),
            );
        }
        if i % label_every == 0 {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                cx + slot / 2.0,
                TOP + ph + 14.0,
                esc(&num(&Value::from(x), 0))
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Lines (one per series, points at x = 0, 1, …) with a legend; non-finite points break the
/// line.
fn line_chart(series: &[(&str, &str, &[f64])], x_label: &str, y_label: &str) -> String {
    let mut s = String::new();
    let max = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let top = nice_max(max);
    frame(&mut s, top, x_label, y_label);
    let n = series.iter().map(|(_, _, v)| v.len()).max().unwrap_or(0);
    if series
        .iter()
        .all(|(_, _, v)| v.iter().all(|x| !x.is_finite()))
    {
        no_data(&mut s);
    }
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x_at = |i: usize| LEFT + pw * (i as f64 + 0.5) / n.max(1) as f64;
    let label_every = (n / 16).max(1);
    for i in (0..n).step_by(label_every) {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{i}</text>",
            x_at(i),
            TOP + ph + 14.0
        );
    }
    for (k, (name, colour, v)) in series.iter().enumerate() {
        let mut d = String::new();
        let mut pen_up = true;
        for (i, &y) in v.iter().enumerate() {
            if !(y.is_finite() && y >= 0.0) {
                pen_up = true;
                continue;
            }
            let py = TOP + ph - ph * (y / top).min(1.0);
            let _ = write!(
                d,
                "{}{:.1} {py:.1} ",
                if pen_up { "M" } else { "L" },
                x_at(i)
            );
            pen_up = false;
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{py:.1}\" r=\"3\" fill=\"{colour}\">\
                 <title>{} chunk {i}: {y:.4}</title></circle>",
                x_at(i),
                esc(name)
            );
        }
        if !d.is_empty() {
            let _ = writeln!(
                s,
                "<path d=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
                d.trim_end()
            );
        }
        let ly = TOP + 10.0 + 16.0 * k as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            W - RIGHT - 110.0,
            ly - 10.0,
            W - RIGHT - 92.0,
            ly,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escapes_every_special_character() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    /// A failed report whose paths and messages carry markup: the page escapes all of it.
    fn hostile_report() -> Value {
        json!({
            "base": "models/<script>alert(1)</script>",
            "quantized": "q\"&'<img src=x onerror=alert(2)>.gguf",
            "data": "a&b.txt", "ctx": 512, "chunks": 3,
            "result": {
                "base": {"ppl": 12.5, "chunk_ppl": [11.0, 13.25, 12.0]},
                "quant": {"ppl": 13.0, "chunk_ppl": [11.5, 14.0, 12.25]},
                "ppl_drift_pct": 4.0, "kld_mean": 0.0321, "kld_p99": 0.25, "kld_max": 1.5,
                "top1_pct": 88.5,
                "layers": [
                    {"layer": 0, "rel_error": 0.01, "added": 0.01},
                    {"layer": 1, "rel_error": 0.05, "added": 0.04},
                    {"layer": 2, "rel_error": 0.06, "added": 0.01}
                ],
                "worst_layer": 1
            },
            "budgets": {"max_ppl_drift_pct": 1.5, "max_kld": null, "min_top1_pct": 90.0},
            "passed": false,
            "failures": ["perplexity drift +4.000% exceeds 1.5% <b>", "top-1 agreement 88.50% is below 90%"]
        })
    }

    #[test]
    fn failed_report_page() {
        let h = render(&hostile_report());
        for raw in ["<script", "<img", "<b>", "onerror=alert(2)>"] {
            assert!(!h.contains(raw), "{raw} unescaped");
        }
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(h.contains("class=\"verdict fail\""));
        assert_eq!(h.matches("<svg").count(), 2);
        assert_eq!(h.matches("<svg").count(), h.matches("</svg>").count());
        // one bar per layer, the worst one red
        assert_eq!(h.matches("<rect").count(), 2 + 3 + 2);
        assert_eq!(h.matches("fill=\"#cf222e\"><title>layer 1:").count(), 1);
        insta::assert_snapshot!("verify-report-html-failed", h);
    }

    #[test]
    fn nice_axis_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
        assert_eq!(nice_max(0.0123), 0.02);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(21.0), 25.0);
        assert_eq!(nice_max(100.0), 100.0);
        assert_eq!(tick(0.02, 0.1), "0.020");
        assert_eq!(tick(12.5, 25.0), "12.5");
        assert_eq!(tick(0.0, 1.0), "0.00");
        assert_eq!(tick(200.0, 500.0), "200");
    }

    #[test]
    fn non_finite_values_are_left_out_of_the_charts() {
        let report = json!({
            "base": "b", "quantized": "q", "data": "t", "ctx": 8, "chunks": 2,
            "result": {
                "base": {"ppl": 2.0, "chunk_ppl": [2.0, null]},
                "quant": {"ppl": null, "chunk_ppl": [null, null]},
                "ppl_drift_pct": null, "kld_mean": 0.1, "kld_p99": 0.2, "kld_max": 0.3,
                "top1_pct": 50.0, "layers": [{"layer": 0, "rel_error": null, "added": null}],
                "worst_layer": 0
            },
            "budgets": {"max_ppl_drift_pct": null, "max_kld": null, "min_top1_pct": null},
            "passed": true, "failures": []
        });
        let h = render(&report);
        assert!(h.contains("no budget given"));
        assert!(h.contains("no finite values"));
        assert!(!h.contains("NaN") && !h.contains("inf"), "{h}");
    }
}
