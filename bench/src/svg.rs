//! Bar charts of results files as standalone SVG: one bar per target (the median), with a
//! whisker from the smallest to the largest run.

use crate::report::{Report, fmt_num};
use std::fmt::Write as _;

/// One bar.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Label under the bar.
    pub label: String,
    /// Height.
    pub value: f64,
    /// Whisker bottom.
    pub min: f64,
    /// Whisker top.
    pub max: f64,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 3] = ["#d9480f", "#495057", "#1c7ed6"];

/// A vertical bar chart titled `title`, with `note` under the title.
pub fn bar_chart(title: &str, note: &str, bars: &[Bar]) -> String {
    let (width, height) = (160 + 140 * bars.len().max(1), 340);
    let (left, top, bottom) = (70.0, 70.0, 290.0);
    let top_value = bars
        .iter()
        .map(|b| b.max.max(b.value))
        .fold(0.0f64, f64::max)
        .max(1e-12)
        * 1.15;
    let y = |v: f64| bottom - (v / top_value) * (bottom - top);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="26" font-size="16" text-anchor="middle" font-weight="bold">{}</text>"#,
        width / 2,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="46" font-size="11" text-anchor="middle" fill="#555">{}</text>"##,
        width / 2,
        escape(note)
    );
    for i in 0..=4 {
        let v = top_value * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end" fill="#555">{}</text>"##,
            width - 20,
            left - 6.0,
            y(v) + 3.0,
            fmt_num(v),
            y = y(v)
        );
    }
    for (i, bar) in bars.iter().enumerate() {
        let x = left + 30.0 + 140.0 * i as f64;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="80" height="{:.1}" fill="{color}"/>"#,
            y(bar.value),
            (bottom - y(bar.value)).max(0.0)
        );
        if bar.max > bar.min {
            let cx = x + 40.0;
            let _ = writeln!(
                svg,
                r#"<line x1="{cx:.1}" x2="{cx:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/><line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/><line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/>"#,
                y(bar.min),
                y(bar.max),
                cx - 8.0,
                cx + 8.0,
                y(bar.min),
                y(bar.min),
                cx - 8.0,
                cx + 8.0,
                y(bar.max),
                y(bar.max)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            x + 40.0,
            y(bar.max.max(bar.value)) - 6.0,
            escape(&fmt_num(bar.value))
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle">{}</text>"#,
            x + 40.0,
            bottom + 20.0,
            escape(&bar.label)
        );
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{left}" x2="{}" y1="{bottom}" y2="{bottom}" stroke="black"/>"#,
        width - 20
    );
    svg.push_str("</svg>\n");
    svg
}

/// The chart of `metric` in `report`: one bar per target with successful runs.
pub fn report_chart(report: &Report, metric: &str) -> Option<String> {
    let bars: Vec<Bar> = report
        .summary
        .iter()
        .filter_map(|(target, stats)| {
            let s = stats.get(metric)?;
            Some(Bar {
                label: target.to_string(),
                value: s.median,
                min: s.min,
                max: s.max,
            })
        })
        .collect();
    if bars.is_empty() {
        return None;
    }
    let runs = report
        .summary
        .values()
        .filter_map(|s| s.get(metric))
        .map(|s| s.n)
        .max()
        .unwrap_or(0);
    let note = format!(
        "{} · {} · median of {runs} run(s), whiskers min–max",
        report.scenario,
        params_note(report)
    );
    Some(bar_chart(metric, &note, &bars))
}

fn params_note(report: &Report) -> String {
    let p = &report.params;
    let get = |k: &str| p.get(k).map(|v| v.to_string()).unwrap_or_default();
    match report.scenario.as_str() {
        "fanout" => format!("{} subscribers × {} msg/s", get("subscribers"), get("rate")),
        "connections" => format!("{} connections", get("connections")),
        "ingest" => format!(
            "{} publishers × {} in flight",
            get("publishers"),
            get("inflight")
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_well_formed_svg_with_every_bar() {
        let bars = vec![
            Bar {
                label: "roomcast".into(),
                value: 10.0,
                min: 9.0,
                max: 11.0,
            },
            Bar {
                label: "a<b".into(),
                value: 20.0,
                min: 20.0,
                max: 20.0,
            },
        ];
        let svg = bar_chart("t", "n", &bars);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains(">roomcast<") && svg.contains("a&lt;b"));
        assert_eq!(svg.matches("<rect").count(), 3);
    }
}
