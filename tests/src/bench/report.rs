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
    /// rounds of `key / direct` (the two series measured in the same rounds)
    /// and that median's 95% interval.
    pub fn entry(&self, key: &str, direct: Option<&str>) -> Option<Entry> {
        let s = self.series.get(key)?;
        let ratios: Vec<f64> = match direct.and_then(|d| self.series.get(d)) {
            Some(d) => s.values.iter().zip(&d.values).filter(|(_, d)| **d > 0.0).map(|(v, d)| v / d).collect(),
            None => Vec::new(),
        };
        Some(Entry {
            median: median(&s.values)?,
            min: s.values.iter().copied().fold(f64::INFINITY, f64::min),
            max: s.values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            unit: s.unit.to_string(),
            ratio_to_direct: median(&ratios),
            ratio_interval: median_interval(&ratios),
        })
    }
}

/// A 95% confidence interval for the median of `values`, taken as
/// independent draws of one distribution, whatever it is: the k-th smallest
/// and the k-th largest value, for the largest k that leaves at most 2.5% on
/// each side (the count of values below the true median is binomial,
/// n and ½). None for fewer than 6 values, which cannot give one.
pub fn median_interval(values: &[f64]) -> Option<[f64; 2]> {
    let v = sorted_finite(values);
    let n = v.len();
    // P(exactly i of n below the median), from i = 0 up.
    let mut p = 0.5f64.powi(i32::try_from(n).ok()?);
    let (mut tail, mut k) = (0.0, 0);
    while k < n / 2 && tail + p <= 0.025 {
        tail += p;
        p *= (n - k) as f64 / (k + 1) as f64;
        k += 1;
    }
    (k > 0).then(|| [v[k - 1], v[n - k]])
}

/// The median; the mean of the middle two for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let v = sorted_finite(values);
    let n = v.len();
    if n == 0 {
        return None;
    }
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// The numbers among `values` (no NaN or infinity), in ascending order.
fn sorted_finite(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
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
    /// The 95% interval of `ratio_to_direct` (see `median_interval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_interval: Option<[f64; 2]>,
}

impl Entry {
    /// A single derived number (no range, no ratio).
    pub fn single(value: f64, unit: &str) -> Entry {
        Entry { median: value, min: value, max: value, unit: unit.to_string(), ratio_to_direct: None, ratio_interval: None }
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
/// ratio, and the ratio's 95% interval where any line has one; a blank line
/// between sections.
pub fn table(sections: &[Vec<Line>]) -> String {
    let intervals = sections.iter().flatten().any(|l| l.entry.ratio_interval.is_some());
    let mut header: Vec<String> = ["scenario", "metric", "median", "min", "max", "ratio"].map(String::from).into();
    if intervals {
        header.push("ratio, 95% interval".into());
    }
    let cells = |l: &Line| -> Vec<String> {
        let e = &l.entry;
        let mut row = vec![
            l.scenario.clone(),
            format!("{} ({})", l.metric, e.unit),
            num(e.median),
            num(e.min),
            num(e.max),
            e.ratio_to_direct.map_or("-".to_string(), |r| format!("{r:.3}")),
        ];
        if intervals {
            row.push(e.ratio_interval.map_or("-".to_string(), |[lo, hi]| format!("{lo:.3}-{hi:.3}")));
        }
        row
    };
    let rows: Vec<Vec<Vec<String>>> = sections.iter().map(|s| s.iter().map(cells).collect()).collect();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows.iter().flatten() {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let render = |r: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in r.iter().zip(&width).enumerate() {
            let w = *w;
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
    fn the_median_interval_leaves_at_most_two_and_a_half_percent_each_side() {
        let v = |n: u32| -> Vec<f64> { (1..=n).rev().map(f64::from).collect() };
        // 20 values: P(at most 5 below the median) = 2.07%, at most 6: 5.77%.
        assert_eq!(median_interval(&v(20)), Some([6.0, 15.0]));
        // 40 values: at most 13 below, 1.92%; at most 14, 4.03%.
        assert_eq!(median_interval(&v(40)), Some([14.0, 27.0]));
        // 6 values: none below, 1.56%; 5 values: 3.13%, too many for 95%.
        assert_eq!(median_interval(&v(6)), Some([1.0, 6.0]));
        assert_eq!(median_interval(&v(5)), None);
        assert_eq!(median_interval(&[]), None);
        // Values that are not numbers are left out.
        let mut with_nan = v(6);
        with_nan.push(f64::NAN);
        assert_eq!(median_interval(&with_nan), Some([1.0, 6.0]));
    }

    #[test]
    fn a_ratio_comes_with_its_interval_and_the_table_shows_it() {
        let mut r = Results::default();
        for i in 0..20 {
            r.push("path", "x/s", 90.0 + f64::from(i));
            r.push("direct", "x/s", 100.0);
        }
        r.push("alone", "x/s", 1.0);
        let e = r.entry("path", Some("direct")).unwrap();
        assert_eq!(e.ratio_interval, Some([0.95, 1.04]));
        assert!((e.ratio_to_direct.unwrap() - 0.995).abs() < 1e-9);
        assert_eq!(r.entry("alone", None).unwrap().ratio_interval, None);
        let line = |key: &str, e: Entry| Line { key: key.into(), scenario: key.into(), metric: "rate".into(), entry: e };
        let text = table(&[vec![line("path", e), line("alone", r.entry("alone", None).unwrap())]]);
        assert!(text.lines().next().unwrap().ends_with("ratio, 95% interval"), "{text}");
        assert!(text.contains("0.950-1.040"), "{text}");
        let plain = table(&[vec![line("alone", r.entry("alone", None).unwrap())]]);
        assert!(!plain.contains("interval"), "{plain}");
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v[..1], 0.99), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
