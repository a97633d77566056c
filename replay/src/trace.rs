//! memory.csv parsing and the step planner (pure, unit-tested).

use anyhow::{bail, Context, Result};

/// One sample of a trace: seconds since start, memory in MB (10^6 bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t_s: f64,
    pub mem_mb: f64,
}

/// Parses a trace's memory.csv (`t_s,mem_mb,cpu_pct` with a header line).
/// Extra columns are ignored; blank lines are skipped; times must not
/// go backwards; memory must be finite and >= 0.
pub fn parse_memory_csv(text: &str) -> Result<Vec<Sample>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .context("empty file: expected a 't_s,mem_mb,...' header")?;
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let ti = cols.iter().position(|c| *c == "t_s");
    let mi = cols.iter().position(|c| *c == "mem_mb");
    let (Some(ti), Some(mi)) = (ti, mi) else {
        bail!("line 1: header '{header}' lacks the t_s and mem_mb columns");
    };
    let mut out: Vec<Sample> = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |idx: usize, name: &str| -> Result<f64> {
            let s = f
                .get(idx)
                .with_context(|| format!("line {n}: missing {name}"))?;
            let v: f64 = s
                .parse()
                .with_context(|| format!("line {n}: {name} '{s}' is not a number"))?;
            if !v.is_finite() || v < 0.0 {
                bail!("line {n}: {name} {v} must be finite and >= 0");
            }
            Ok(v)
        };
        let t_s = get(ti, "t_s")?;
        let mem_mb = get(mi, "mem_mb")?;
        if let Some(prev) = out.last() {
            if t_s < prev.t_s {
                bail!("line {n}: t_s {t_s} goes backwards (previous {})", prev.t_s);
            }
        }
        out.push(Sample { t_s, mem_mb });
    }
    if out.is_empty() {
        bail!("no samples after the header");
    }
    Ok(out)
}

/// One step of the replay: at `at_s` (compressed time) hold `bytes`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub at_s: f64,
    pub bytes: u64,
}

/// Plans the steps: time divided by `speed`, memory scaled by `scale`,
/// rounded to whole 4 KiB pages. Consecutive samples with the same size
/// collapse into one step.
pub fn plan(samples: &[Sample], speed: f64, scale: f64) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::with_capacity(samples.len());
    let t0 = samples.first().map(|s| s.t_s).unwrap_or(0.0);
    for s in samples {
        let bytes = (s.mem_mb * scale * 1e6) as u64 / PAGE * PAGE;
        if steps.last().is_some_and(|l| l.bytes == bytes) {
            continue;
        }
        steps.push(Step {
            at_s: (s.t_s - t0) / speed,
            bytes,
        });
    }
    steps
}

pub const PAGE: u64 = 4096;

/// Scale factor so that the trace's peak is at most `max_mb` (1.0 if it
/// already fits or no cap is given).
pub fn scale_for_cap(samples: &[Sample], max_mb: Option<f64>) -> f64 {
    let peak = samples.iter().map(|s| s.mem_mb).fold(0.0, f64::max);
    match max_mb {
        Some(cap) if peak > cap && peak > 0.0 => cap / peak,
        _ => 1.0,
    }
}

/// Nearest-rank percentile of `v` (sorted ascending); 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trace_and_header() {
        let s = parse_memory_csv("t_s,mem_mb,cpu_pct\n0.00,11.96,117.65\n1.04,185.50,66.25\n\n")
            .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1],
            Sample {
                t_s: 1.04,
                mem_mb: 185.5
            }
        );
        // column order comes from the header
        let s = parse_memory_csv("mem_mb,t_s\n5,0\n").unwrap();
        assert_eq!(
            s[0],
            Sample {
                t_s: 0.0,
                mem_mb: 5.0
            }
        );
    }

    #[test]
    fn rejects_bad_input_with_line_numbers() {
        assert!(parse_memory_csv("").is_err());
        let e = parse_memory_csv("a,b\n1,2\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = parse_memory_csv("t_s,mem_mb\n0,1\n1,x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("mem_mb"), "{e}");
        let e = parse_memory_csv("t_s,mem_mb\n2,1\n1,1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("backwards"), "{e}");
        let e = parse_memory_csv("t_s,mem_mb\n0,-1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(">= 0"), "{e}");
        assert!(parse_memory_csv("t_s,mem_mb\n").is_err());
        assert!(parse_memory_csv("t_s,mem_mb\n0\n").is_err());
    }

    #[test]
    fn plan_compresses_time_and_collapses_repeats() {
        let s = vec![
            Sample {
                t_s: 10.0,
                mem_mb: 1.0,
            },
            Sample {
                t_s: 11.0,
                mem_mb: 1.0,
            },
            Sample {
                t_s: 20.0,
                mem_mb: 2.0,
            },
            Sample {
                t_s: 30.0,
                mem_mb: 0.5,
            },
        ];
        let p = plan(&s, 10.0, 1.0);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].at_s, 0.0);
        assert_eq!(p[1].at_s, 1.0);
        assert_eq!(p[2].at_s, 2.0);
        assert_eq!(p[0].bytes, 1_000_000 / PAGE * PAGE);
        assert_eq!(p[1].bytes % PAGE, 0);
        let half = plan(&s, 1.0, 0.5);
        assert_eq!(half[1].bytes, 1_000_000 / PAGE * PAGE);
    }

    #[test]
    fn cap_and_percentiles() {
        let s = vec![Sample {
            t_s: 0.0,
            mem_mb: 400.0,
        }];
        assert_eq!(scale_for_cap(&s, Some(200.0)), 0.5);
        assert_eq!(scale_for_cap(&s, Some(800.0)), 1.0);
        assert_eq!(scale_for_cap(&s, None), 1.0);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }
}

/// Property tests (issue 13): the trace parser never panics, and what it
/// accepts plans into steps that keep time order.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn parser_never_panics(text in any::<String>()) {
            let _ = parse_memory_csv(&text);
        }

        #[test]
        fn parser_never_panics_on_csv_shaped_input(
            header in "(t_s|mem_mb|cpu_pct|x)(,(t_s|mem_mb|cpu_pct|x)){0,3}",
            rows in proptest::collection::vec("[-0-9.eEinfNa, ]{0,30}", 0..40)
        ) {
            let text = format!("{header}\n{}", rows.join("\n"));
            if let Ok(samples) = parse_memory_csv(&text) {
                prop_assert!(samples.windows(2).all(|w| w[0].t_s <= w[1].t_s));
                prop_assert!(samples.iter().all(|s| s.mem_mb.is_finite() && s.mem_mb >= 0.0));
                let cap = scale_for_cap(&samples, Some(100.0));
                let steps = plan(&samples, 10.0, cap);
                prop_assert!(steps.windows(2).all(|w| w[0].at_s <= w[1].at_s));
                prop_assert!(steps.iter().all(|s| s.bytes % PAGE == 0));
            }
        }

        #[test]
        fn valid_traces_roundtrip(
            pts in proptest::collection::vec((0.0f64..1e4, 0.0f64..1e5), 1..50)
        ) {
            let mut t = 0.0;
            let mut text = String::from("t_s,mem_mb,cpu_pct\n");
            for (dt, m) in &pts {
                t += dt;
                text.push_str(&format!("{t},{m},1\n"));
            }
            let samples = parse_memory_csv(&text).unwrap();
            prop_assert_eq!(samples.len(), pts.len());
        }
    }
}
