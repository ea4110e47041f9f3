//! Collected measurements and their report: medians, ranges and ratios to
//! the matching direct path, an aligned plain-text table, and a JSON file.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

/// Every measurement so far, per series key, in round order.
#[derive(Default)]
pub struct Results {
    series: BTreeMap<String, Series>,
}

struct Series {
    unit: &'static str,
    values: Vec<f64>,
}

impl Results {
    pub fn push(&mut self, key: &str, unit: &'static str, value: f64) {
        self.series.entry(key.to_string()).or_insert(Series { unit, values: Vec::new() }).values.push(value);
    }

    /// The summary of series `key`; with `direct`, also the median over
    /// rounds of `key / direct` (the two series measured in the same rounds).
    pub fn entry(&self, key: &str, direct: Option<&str>) -> Option<Entry> {
        let s = self.series.get(key)?;
        let ratio = direct.and_then(|d| self.series.get(d)).and_then(|d| {
            let r: Vec<f64> = s.values.iter().zip(&d.values).filter(|(_, d)| **d > 0.0).map(|(v, d)| v / d).collect();
            median(&r)
        });
        Some(Entry {
            median: median(&s.values)?,
            min: s.values.iter().copied().fold(f64::INFINITY, f64::min),
            max: s.values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            unit: s.unit.to_string(),
            ratio_to_direct: ratio,
        })
    }
}

/// The median; the mean of the middle two for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// The value below which a fraction `q` of `sorted` lies (nearest rank); NaN when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One series in the report, as written to JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub unit: String,
    pub ratio_to_direct: Option<f64>,
}

impl Entry {
    /// A single derived number (no range, no ratio).
    pub fn single(value: f64, unit: &str) -> Entry {
        Entry { median: value, min: value, max: value, unit: unit.to_string(), ratio_to_direct: None }
    }
}

/// A line of the table: a JSON key, what the table calls it, and its numbers.
pub struct Line {
    pub key: String,
    pub scenario: String,
    pub metric: String,
    pub entry: Entry,
}

/// Formats a number with the precision its size calls for.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Renders the table: scenario, metric (with its unit), median, min, max,
/// ratio; a blank line between sections.
pub fn table(sections: &[Vec<Line>]) -> String {
    let header = ["scenario", "metric", "median", "min", "max", "ratio"].map(String::from);
    let cells = |l: &Line| -> [String; 6] {
        let e = &l.entry;
        [
            l.scenario.clone(),
            format!("{} ({})", l.metric, e.unit),
            num(e.median),
            num(e.min),
            num(e.max),
            e.ratio_to_direct.map_or("-".to_string(), |r| format!("{r:.3}")),
        ]
    };
    let rows: Vec<Vec<[String; 6]>> = sections.iter().map(|s| s.iter().map(cells).collect()).collect();
    let mut width = header.clone().map(|h| h.len());
    for r in rows.iter().flatten() {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let render = |r: &[String; 6]| {
        let mut s = String::new();
        for (i, (c, w)) in r.iter().zip(width).enumerate() {
            // Names to the left, numbers to the right.
            if i < 2 {
                s += &format!("{c:<w$}  ");
            } else {
                s += &format!("{c:>w$}  ");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = render(&header);
    out += &"-".repeat(width.iter().sum::<usize>() + 2 * (width.len() - 1));
    out += "\n";
    for (i, section) in rows.iter().enumerate() {
        if i > 0 {
            out += "\n";
        }
        for r in section {
            out += &render(r);
        }
    }
    out
}

/// Writes the lines' entries as one JSON object keyed by their keys.
pub fn write_json(path: &Path, lines: &[Line]) -> Result<()> {
    let map: BTreeMap<&str, &Entry> =
        lines.iter().filter(|l| !l.key.is_empty()).map(|l| (l.key.as_str(), &l.entry)).collect();
    let text = serde_json::to_string_pretty(&map)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// `target/bench` of the workspace, made when missing.
pub fn out_dir() -> Result<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.canonicalize().unwrap_or(dir))
}

/// A path as printed: without a `tests/..` detour.
pub fn display(p: &Path) -> String {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v[..1], 0.99), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
