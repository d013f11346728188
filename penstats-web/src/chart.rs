//! Small line charts as SVG geometry: the page template draws each run of a series as one
//! `<polyline>` with the points computed here. The time axis spans the history window, now at
//! the right edge; the value axis runs from 0 to the highest value shown, which the chart's
//! label states.
//!
//! Only numbers come out of here, and the template escapes them anyway.

use std::fmt::Write;

use crate::history::Runs;

/// The drawing area, in SVG user units (the page scales it with CSS).
pub const WIDTH: f64 = 160.0;
pub const HEIGHT: f64 = 36.0;
/// Keeps a line at 0 fully visible (half the stroke width), and the peak label above the
/// highest point.
const MARGIN: f64 = 1.0;
const TOP: f64 = 12.0;

/// One polyline: a CSS class (which colours it) and its `points` attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub class: &'static str,
    pub points: String,
}

/// A chart ready for the template.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub lines: Vec<Line>,
    /// The value at the top edge, formatted: `peak 12`, `peak 3.4 KiB/s`.
    pub peak: String,
    /// Whether there is any point at all (an empty chart says "no data yet").
    pub has_data: bool,
}

/// How values are written on a chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    BytesPerSecond,
}

impl Unit {
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::Count => format!("{}", value.round()),
            Unit::BytesPerSecond => format!("{}/s", bytes(value)),
        }
    }

    /// The smallest top of the value axis, so an idle server draws a flat line at the bottom
    /// instead of noise scaled up to the full height.
    fn floor(self) -> f64 {
        match self {
            Unit::Count => 1.0,
            Unit::BytesPerSecond => 1024.0,
        }
    }
}

/// A byte count with a binary unit: `512 B`, `1.5 KiB`, `12 MiB`.
pub fn bytes(value: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = value.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 10.0 {
        format!("{:.0} {}", v, UNITS[unit])
    } else {
        format!("{:.1} {}", v, UNITS[unit])
    }
}

/// Draw `series` (CSS class, runs of `(seconds ago, value)`) over a window of `window` seconds.
pub fn draw(window: f64, unit: Unit, series: &[(&'static str, &Runs)]) -> Chart {
    let values = series
        .iter()
        .flat_map(|(_, runs)| runs.iter().flatten().map(|&(_, v)| v));
    let max = values.clone().fold(0.0_f64, f64::max);
    let has_data = values.count() > 0;
    let peak = max.max(unit.floor());
    let x = |ago: f64| WIDTH * (1.0 - (ago / window).clamp(0.0, 1.0));
    let y = |v: f64| HEIGHT - MARGIN - (v / peak).clamp(0.0, 1.0) * (HEIGHT - MARGIN - TOP);
    let mut lines = Vec::new();
    for (class, runs) in series {
        for run in runs.iter() {
            let mut points = String::new();
            for &(ago, v) in run {
                let _ = write!(points, "{:.1},{:.1} ", x(ago), y(v));
            }
            // A lone point would draw nothing: give it a short flat stroke.
            if let [(ago, v)] = run.as_slice() {
                let _ = write!(points, "{:.1},{:.1} ", (x(*ago) - 2.0).max(0.0), y(*v));
            }
            lines.push(Line {
                class,
                points: points.trim_end().to_string(),
            });
        }
    }
    Chart {
        lines,
        peak: format!("peak {}", unit.format(max)),
        has_data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_span_the_window_with_now_at_the_right() {
        let runs: Runs = vec![vec![(60.0, 0.0), (30.0, 5.0), (0.0, 10.0)]];
        let chart = draw(60.0, Unit::Count, &[("conns", &runs)]);
        assert_eq!(chart.lines.len(), 1);
        assert_eq!(chart.lines[0].class, "conns");
        assert_eq!(chart.lines[0].points, "0.0,35.0 80.0,23.5 160.0,12.0");
        assert_eq!(chart.peak, "peak 10");
        assert!(chart.has_data);
    }

    #[test]
    fn each_run_is_its_own_line_and_a_lone_point_still_shows() {
        let up: Runs = vec![vec![(50.0, 2048.0), (40.0, 2048.0)], vec![(0.0, 1024.0)]];
        let down: Runs = vec![];
        let chart = draw(
            100.0,
            Unit::BytesPerSecond,
            &[("sent", &up), ("received", &down)],
        );
        assert_eq!(chart.lines.len(), 2);
        assert_eq!(chart.lines[1].points, "160.0,23.5 158.0,23.5");
        assert_eq!(chart.peak, "peak 2.0 KiB/s");
    }

    #[test]
    fn an_idle_server_lies_flat_at_the_bottom() {
        let runs: Runs = vec![vec![(10.0, 0.0), (0.0, 0.0)]];
        let chart = draw(10.0, Unit::BytesPerSecond, &[("sent", &runs)]);
        assert_eq!(chart.lines[0].points, "0.0,35.0 160.0,35.0");
        assert_eq!(chart.peak, "peak 0 B/s");
        let empty = draw(10.0, Unit::Count, &[]);
        assert!(!empty.has_data && empty.lines.is_empty());
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(0.0), "0 B");
        assert_eq!(bytes(1023.0), "1023 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(12.0 * 1024.0 * 1024.0), "12 MiB");
        assert_eq!(bytes(-5.0), "0 B");
    }
}
