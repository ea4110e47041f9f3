//! The benchmarks' pictures, drawn by gnuplot from a data file and a script
//! written next to it. `draw` is the VIP benchmark's: bars of each VIP path's
//! ratio to direct per metric, and lines of the connection-rate ratio against
//! the services loaded; `draw_with` runs any other script.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

/// One group of bars: a VIP path and its ratio per metric (conn, rr,
/// stream, UDP rr), each with its 95% interval when it has one.
pub struct Bars {
    pub label: String,
    pub ratios: [f64; 4],
    pub intervals: [Option<[f64; 2]>; 4],
}

/// One point of the scale lines: services loaded, the ratio of each of
/// Fizz's paths (balanced at the socket, NAT'd per packet) and iptables'.
pub struct ScalePoint {
    pub services: usize,
    pub socket: f64,
    pub nat: f64,
    pub iptables: f64,
}

/// Writes `<stem>.dat` and `<stem>.gp` in `dir` and runs gnuplot to make
/// `<stem>.png`. Fails (with why) when gnuplot is missing or fails.
pub fn draw(dir: &Path, stem: &str, bars: &[Bars], scale: &[ScalePoint]) -> Result<std::path::PathBuf> {
    let dat = dir.join(format!("{stem}.dat"));
    let script = dir.join(format!("{stem}.gp"));
    let png = dir.join(format!("{stem}.png"));

    let mut data =
        String::from("# path, ratio to direct and its 95% interval (low, high): conn_rate rr stream udp_rr\n");
    for b in bars {
        data += &format!("\"{}\"", b.label);
        for (r, i) in b.ratios.iter().zip(&b.intervals) {
            // A missing ratio is plotted as no bar, a missing interval as
            // none around its bar.
            let [lo, hi] = i.unwrap_or([*r, *r]);
            for v in [*r, lo, hi] {
                data += &if v.is_finite() { format!(" {v:.4}") } else { " NaN".into() };
            }
        }
        data += "\n";
    }
    data += "\n\n# services, conn_rate ratio to direct: fizz_vip fizz_vip_nat iptables_vip\n";
    for p in scale {
        data += &format!("{} {:.4} {:.4} {:.4}\n", p.services, p.socket, p.nat, p.iptables);
    }
    std::fs::write(&dat, data).with_context(|| format!("writing {}", dat.display()))?;

    let gp = format!(
        r#"set terminal pngcairo size 1300,520 font "sans,10"
set output '{png}'
set multiplot layout 1,2 title "Service VIPs relative to the direct path on the same node (median of rounds)"
set title "VIP paths: ratio to direct (whiskers: 95% interval)"
set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set yrange [0:*]
set ylabel "ratio to direct"
set grid ytics
set key below horizontal
set xtics rotate by -12 noenhanced
plot '{dat}' index 0 using 2:3:4:xtic(1) title 'connection rate', \
     '' index 0 using 5:6:7 title 'request/response', \
     '' index 0 using 8:9:10 title 'stream', \
     '' index 0 using 11:12:13 title 'UDP request/response', \
     1 with lines dashtype 2 lc rgb 'black' notitle
set title "Connection rate vs services loaded"
set style data linespoints
set xtics norotate auto
set logscale x
set xrange [0.7:*]
set xlabel "services loaded"
set ylabel "connection rate: ratio to direct"
set key inside bottom left vertical
plot '{dat}' index 1 using 1:2 with linespoints lw 2 pt 9 title 'Fizz VIP (at the socket)', \
     '' index 1 using 1:3 with linespoints lw 2 pt 7 title 'Fizz VIP (NAT per packet)', \
     '' index 1 using 1:4 with linespoints lw 2 pt 5 title 'iptables DNAT (measured rule last)'
unset multiplot
"#,
        png = png.display(),
        dat = dat.display(),
    );
    std::fs::write(&script, gp).with_context(|| format!("writing {}", script.display()))?;
    gnuplot(dir, &script)?;
    Ok(png)
}

/// Writes `<stem>.dat` (`data`) and `<stem>.gp` in `dir`, the script made by
/// `script` from the paths of the PNG and of the data file, and runs gnuplot
/// to make `<stem>.png`. Fails (with why) when gnuplot is missing or fails.
pub fn draw_with(
    dir: &Path,
    stem: &str,
    data: &str,
    script: impl FnOnce(&Path, &Path) -> String,
) -> Result<std::path::PathBuf> {
    let dat = dir.join(format!("{stem}.dat"));
    let gp = dir.join(format!("{stem}.gp"));
    let png = dir.join(format!("{stem}.png"));
    std::fs::write(&dat, data).with_context(|| format!("writing {}", dat.display()))?;
    std::fs::write(&gp, script(&png, &dat)).with_context(|| format!("writing {}", gp.display()))?;
    gnuplot(dir, &gp)?;
    Ok(png)
}

/// Runs gnuplot on `script`.
fn gnuplot(dir: &Path, script: &Path) -> Result<()> {
    let out = match Command::new("gnuplot").arg(script).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "gnuplot is not installed (apt-get install gnuplot-nox); the data and script are in {}",
                dir.display()
            )
        }
        Err(e) => bail!("running gnuplot: {e}"),
    };
    if !out.status.success() {
        bail!("gnuplot failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::host::WorkDir;

    #[test]
    fn the_vip_picture_draws_bars_with_and_without_whiskers() {
        let work = WorkDir::new(&fizz_tests::unique("Plot")).unwrap();
        let dir = work.0.as_path();
        let bars = [
            Bars { label: "with".into(), ratios: [0.9, 1.0, 0.95, 1.1], intervals: [Some([0.85, 0.97]); 4] },
            Bars { label: "without".into(), ratios: [0.4, f64::NAN, 0.5, 0.6], intervals: [None; 4] },
        ];
        let scale = [ScalePoint { services: 1, socket: 0.97, nat: 0.95, iptables: 0.9 }];
        let png = match draw(dir, "vip", &bars, &scale) {
            Err(e) if e.to_string().contains("not installed") => {
                eprintln!("skipping: {e}");
                return;
            }
            r => r.unwrap(),
        };
        assert!(std::fs::metadata(&png).unwrap().len() > 0);
        let data = std::fs::read_to_string(work.join("vip.dat")).unwrap();
        assert!(data.contains("\"with\" 0.9000 0.8500 0.9700 1.0000 0.8500 0.9700"), "{data}");
        assert!(data.contains("\"without\" 0.4000 0.4000 0.4000 NaN NaN NaN 0.5000"), "{data}");
    }
}
