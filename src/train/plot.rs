//! A PNG of the training curves: loss (train, val) and accuracy (train top-1,
//! val top-1, val top-5) against epoch, side by side.
//!
//! plotters draws into an in-memory RGB buffer, which the `png` crate
//! encodes. Text needs a TrueType font, found at run time ([`FONT_PATHS`], or
//! the file named by `QAT_PLOT_FONT`); without one the curves, axes and grid
//! are still drawn, only the titles, tick labels and legend are left out, so
//! plotting never fails for lack of a font. On Debian the font comes from
//! `fonts-dejavu-core`.
//!
//! Both axes are linear. Tick values are chosen here (1, 2 or 5 times a power
//! of ten apart) and written compactly (`TickFormat`: `0.25`, `85`,
//! `1.5e6`), and the y label area is sized from the widest label actually
//! drawn, so no magnitude of loss pushes labels out of their panel. The
//! ranges are padded on every side, so every point, a single epoch's
//! included, is drawn inside the plot area rather than on an axis.

use super::metrics::EpochRecord;
use crate::{Error, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 480;
/// Blank space around each panel, in pixels.
const MARGIN: u32 = 15;
/// Font sizes (pixels) of panel titles, axis descriptions, and tick labels
/// and legend entries.
const TITLE_FONT: u32 = 22;
const DESC_FONT: u32 = 14;
const LABEL_FONT: u32 = 13;
/// Tick mark length; plotters keeps labels twice that far from the axis.
const TICK: i32 = 5;
/// Most ticks per axis.
const MAX_X_TICKS: usize = 13;
const MAX_Y_TICKS: usize = 10;
/// Points closer than this (pixels) get no markers, only the line.
const MIN_MARKER_SPACING: f64 = 10.0;
/// Values beyond this magnitude are left out like non-finite ones: padding
/// the axis around them could overflow f64.
const MAX_PLOTTED: f64 = 1e300;

/// Where to look for a sans-serif TrueType font, in order.
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Plots `records` (in order; x is the record's position, 1-based, which is
/// the epoch number for a single run) to a PNG at `path`. The file is
/// written atomically ([`crate::checkpoint::write_atomic`]: a temporary file
/// beside it, renamed over it), so a reader or a kill never sees a torn
/// image, and the temporary file is removed on error. Non-finite values (a
/// diverged epoch) and values beyond ±1e300 are left out of the curves.
pub fn plot_metrics(records: &[EpochRecord], path: &Path) -> Result<()> {
    let rgb = render(records, text_font_registered())
        .map_err(|e| Error::Data(format!("{}: plotting failed: {e}", path.display())))?;
    crate::checkpoint::write_atomic(path, &encode_png(&rgb, WIDTH, HEIGHT)?)
}

/// Registers the first readable font of `QAT_PLOT_FONT` or [`FONT_PATHS`]
/// with plotters, once per process; whether one was found.
fn text_font_registered() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let from_env = std::env::var("QAT_PLOT_FONT").ok();
        from_env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied())
            .any(|p| {
                let Ok(bytes) = std::fs::read(p) else {
                    return false;
                };
                // plotters keeps fonts for the life of the process; this runs
                // once, so leaking one file's bytes is the simple way.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
    })
}

/// An 8-bit RGB PNG of `rgb` (`width * height * 3` bytes, row-major).
fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let err = |e: png::EncodingError| Error::Usage(format!("encoding the plot as PNG: {e}"));
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(err)?;
    // Checks that `rgb` is exactly one 8-bit RGB frame of this size.
    writer.write_image_data(rgb).map_err(err)?;
    writer.finish().map_err(err)?;
    Ok(out)
}

/// One curve: its legend label, colour and points.
struct Curve {
    label: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

fn curve(
    records: &[EpochRecord],
    label: &'static str,
    color: RGBColor,
    y: fn(&EpochRecord) -> f64,
) -> Curve {
    let points = records
        .iter()
        .enumerate()
        .map(|(i, r)| ((i + 1) as f64, y(r)))
        .filter(|(_, y)| y.is_finite() && y.abs() <= MAX_PLOTTED)
        .collect();
    Curve {
        label,
        color,
        points,
    }
}

/// What one panel shows.
struct Panel<'a> {
    title: &'a str,
    y_desc: &'a str,
    curves: &'a [Curve],
    /// The range the values normally lie in: the y ticks stay within it
    /// (the axis is padded beyond it, so that a point at 100% is not drawn
    /// on the frame, but gets no tick above 100).
    y_bounds: (f64, f64),
    /// Whether the y range always includes 0 (losses).
    y_from_zero: bool,
    legend_at: SeriesLabelPosition,
}

type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The RGB pixels of the figure, `WIDTH * HEIGHT * 3` bytes.
fn render(records: &[EpochRecord], text: bool) -> DrawResult<Vec<u8>> {
    if records.is_empty() {
        return Err("no epochs to plot".into());
    }
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(WIDTH / 2);
        let n = records.len();
        let loss = [
            curve(records, "train loss", BLUE, |r| r.train_loss),
            curve(records, "val loss", RED, |r| r.val_loss),
        ];
        let acc = [
            curve(records, "train top-1", BLUE, |r| r.train_top1),
            curve(records, "val top-1", RED, |r| r.val_top1),
            curve(records, "val top-5", RGBColor(0, 150, 0), |r| r.val_top5),
        ];
        let loss = Panel {
            title: "Loss",
            y_desc: "loss",
            curves: &loss,
            y_bounds: (0.0, f64::INFINITY),
            y_from_zero: true,
            legend_at: SeriesLabelPosition::UpperRight,
        };
        let acc = Panel {
            title: "Accuracy",
            y_desc: "accuracy (%)",
            curves: &acc,
            y_bounds: (0.0, 100.0),
            y_from_zero: false,
            legend_at: SeriesLabelPosition::LowerRight,
        };
        draw_panel(&left, n, &loss, text)?;
        draw_panel(&right, n, &acc, text)?;
        root.present()?;
    }
    Ok(buf)
}

/// The y range of `curves`, and the part of it that gets ticks. The range is
/// their values padded by 5% of the span on both sides, with 0 included
/// when `from_zero`; a span under 1% of the values' magnitude (one epoch, a
/// flat curve) is widened to that first, within `bounds`. Ticks stay within
/// `bounds` (0 to 100 for accuracy: none in the padding) unless values lie
/// outside them. With no values at all both are `bounds` (0..1 where
/// unbounded).
fn y_range(curves: &[Curve], from_zero: bool, bounds: (f64, f64)) -> ((f64, f64), (f64, f64)) {
    let ys = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let (mut lo, mut hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if lo > hi {
        let range = (bounds.0, if bounds.1.is_finite() { bounds.1 } else { 1.0 });
        return (range, range);
    }
    if from_zero {
        (lo, hi) = (lo.min(0.0), hi.max(0.0));
    }
    let (data_lo, data_hi) = (lo, hi);
    let magnitude = lo.abs().max(hi.abs());
    let min_span = if magnitude > 0.0 {
        0.01 * magnitude
    } else {
        1.0
    };
    if hi - lo < min_span {
        let mid = lo / 2.0 + hi / 2.0;
        (lo, hi) = (mid - min_span / 2.0, mid + min_span / 2.0);
        // Widened past a bound the values respect (99.9% widened beyond
        // 100%): shift back, rather than show an empty band.
        if hi > bounds.1 && data_hi <= bounds.1 {
            (lo, hi) = (bounds.1 - min_span, bounds.1);
        } else if lo < bounds.0 && data_lo >= bounds.0 {
            (lo, hi) = (bounds.0, bounds.0 + min_span);
        }
    }
    let pad = 0.05 * (hi - lo);
    let range = (lo - pad, hi + pad);
    let tick_lo = if data_lo >= bounds.0 {
        range.0.max(bounds.0)
    } else {
        range.0
    };
    let tick_hi = if data_hi <= bounds.1 {
        range.1.min(bounds.1)
    } else {
        range.1
    };
    (range, (tick_lo, tick_hi))
}

/// The x range for `epochs` points at 1..=epochs, padded by half an epoch (or
/// 3% of the span, if more) on both sides.
fn x_range(epochs: usize) -> (f64, f64) {
    let n = epochs.max(1) as f64;
    let pad = (0.03 * (n - 1.0)).max(0.5);
    (1.0 - pad, n + pad)
}

/// Ticks on `[lo, hi]`: the multiples of a step of 1, 2 or 5 times a power of
/// ten (at least `min_step`), at most `max` of them; and the step.
fn ticks(lo: f64, hi: f64, max: usize, min_step: f64) -> (Vec<f64>, f64) {
    // Halves, so that the span of two huge values does not overflow.
    let half_span = hi / 2.0 - lo / 2.0;
    let usable = half_span.is_finite() && half_span > 0.0 && max >= 2;
    if !usable {
        return (Vec::new(), min_step);
    }
    let raw = 2.0 * (half_span / (max - 1) as f64);
    let exp = raw.log10().floor();
    let unit = 10f64.powf(exp);
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * unit)
        .find(|&s| s >= raw * (1.0 - 1e-12))
        .unwrap_or(10.0 * unit)
        .max(min_step);
    let (first, last) = ((lo / step).ceil(), (hi / step).floor());
    let ticks = (0..)
        .map(|k| (first + k as f64) * step)
        .take_while(|&t| t <= last * step)
        .take(max)
        .collect();
    (ticks, step)
}

/// How an axis writes its tick values, decided once for all of them so that
/// they read alike: fixed-point with as many decimals as the step needs
/// (`0.25`, `85`), or, for ticks of 1e4 or more or a step under 1e-3,
/// scientific with as many mantissa digits as the step needs (`1.5e6`,
/// `2.0e-5`). Zero is always `0`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct TickFormat {
    scientific: bool,
    decimals: usize,
    /// Values smaller than this are written as `0` (rounding noise of `k * step`).
    zero: f64,
}

/// Ten's exponent of `x != 0` (`floor(log10 |x|)`), robust to `x` being a
/// hair under a power of ten.
fn exponent(x: f64) -> i32 {
    (x.abs().log10() + 1e-9).floor() as i32
}

impl TickFormat {
    fn new(ticks: &[f64], step: f64) -> TickFormat {
        let zero = step * 1e-6;
        let nonzero = || ticks.iter().filter(|t| t.abs() >= zero);
        let largest = nonzero().fold(0.0f64, |m, t| m.max(t.abs()));
        let step_exp = exponent(step);
        if largest >= 1e4 || step < 1e-3 {
            let decimals = nonzero()
                .map(|&t| (exponent(t) - step_exp).max(0))
                .max()
                .unwrap_or(0) as usize;
            TickFormat {
                scientific: true,
                decimals,
                zero,
            }
        } else {
            TickFormat {
                scientific: false,
                decimals: (-step_exp).max(0) as usize,
                zero,
            }
        }
    }

    fn format(&self, v: f64) -> String {
        let d = self.decimals;
        if v.abs() < self.zero {
            "0".into()
        } else if self.scientific {
            format!("{v:.d$e}")
        } else {
            format!("{v:.d$}")
        }
    }
}

/// One panel's ticks and labels.
struct Axes {
    x_range: (f64, f64),
    x_ticks: Vec<f64>,
    y_range: (f64, f64),
    y_ticks: Vec<f64>,
    y_labels: Vec<String>,
    y_format: TickFormat,
}

fn axes(epochs: usize, p: &Panel) -> Axes {
    let x_range = x_range(epochs);
    // Integer epochs only, from 1 up.
    let (x_ticks, _) = ticks(x_range.0.max(1.0), x_range.1, MAX_X_TICKS, 1.0);
    let (y_range, (tick_lo, tick_hi)) = y_range(p.curves, p.y_from_zero, p.y_bounds);
    let (y_ticks, y_step) = ticks(tick_lo, tick_hi, MAX_Y_TICKS, 0.0);
    let y_format = TickFormat::new(&y_ticks, y_step);
    let y_labels = y_ticks.iter().map(|&t| y_format.format(t)).collect();
    Axes {
        x_range,
        x_ticks,
        y_range,
        y_ticks,
        y_labels,
        y_format,
    }
}

/// A linear plotters axis over `range` whose tick marks (labelled, with bold
/// grid lines) and light grid lines are given, not computed by plotters.
struct Linear {
    range: (f64, f64),
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl Ranged for Linear {
    // Labels come from the chart's formatters.
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, (from, to): (i32, i32)) -> i32 {
        let t = (v - self.range.0) / (self.range.1 - self.range.0);
        // `as` saturates, so a point far outside still maps somewhere (and
        // is clipped by the plotting area).
        from + (f64::from(to - from) * t).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.0..self.range.1
    }
}

/// The widths (pixels) of the y and x label areas: room for the axis
/// description, the widest (tallest) tick label and the gap plotters leaves
/// between labels and axis.
fn label_areas(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    y_labels: &[String],
    y_desc: &str,
) -> DrawResult<(u32, u32)> {
    let label_style = TextStyle::from(("sans-serif", LABEL_FONT).into_font());
    let desc_style = TextStyle::from(("sans-serif", DESC_FONT).into_font());
    let mut label_w = 0;
    for l in y_labels {
        label_w = label_w.max(area.estimate_text_size(l, &label_style)?.0);
    }
    let label_h = area.estimate_text_size("0123456789", &label_style)?.1;
    let y_desc_h = area.estimate_text_size(y_desc, &desc_style)?.1;
    let x_desc_h = area.estimate_text_size("epoch", &desc_style)?.1;
    let label_dist = 2 * TICK as u32;
    let y_area = y_desc_h + 8 + label_w + label_dist + 2;
    let x_area = label_dist + label_h + 6 + x_desc_h + 2;
    Ok((y_area, x_area))
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    epochs: usize,
    p: &Panel,
    text: bool,
) -> DrawResult<()> {
    let ax = axes(epochs, p);
    let mut builder = ChartBuilder::on(area);
    builder.margin(MARGIN);
    // Without a font, no label is drawn: the ticks become light grid lines
    // (plotters labels only the bold ones), and the label areas hold just
    // the axis lines.
    let (bold_x, light_x, bold_y, light_y) = if text {
        let (y_area, x_area) = label_areas(area, &ax.y_labels, p.y_desc)?;
        builder
            .caption(p.title, ("sans-serif", TITLE_FONT))
            .x_label_area_size(x_area)
            .y_label_area_size(y_area);
        (ax.x_ticks, Vec::new(), ax.y_ticks, Vec::new())
    } else {
        builder.x_label_area_size(5).y_label_area_size(5);
        (Vec::new(), ax.x_ticks, Vec::new(), ax.y_ticks)
    };
    let x = Linear {
        range: ax.x_range,
        bold: bold_x,
        light: light_x,
    };
    let y = Linear {
        range: ax.y_range,
        bold: bold_y,
        light: light_y,
    };
    let mut chart = builder.build_cartesian_2d(x, y)?;
    let y_format = ax.y_format;
    let x_format = |x: &f64| format!("{x:.0}");
    let y_format = |y: &f64| y_format.format(*y);
    let mut mesh = chart.configure_mesh();
    mesh.set_all_tick_mark_size(TICK)
        .label_style(("sans-serif", LABEL_FONT))
        .axis_desc_style(("sans-serif", DESC_FONT))
        .x_label_formatter(&x_format)
        .y_label_formatter(&y_format);
    if text {
        mesh.x_desc("epoch").y_desc(p.y_desc);
    }
    mesh.draw()?;
    let plot_width = chart.plotting_area().dim_in_pixel().0;
    let point_spacing = f64::from(plot_width) / (ax.x_range.1 - ax.x_range.0);
    for c in p.curves {
        let style = c.color.stroke_width(2);
        let series = chart.draw_series(LineSeries::new(c.points.iter().copied(), style))?;
        if text {
            series
                .label(c.label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        }
        // Markers where they do not crowd, and always for a lone point,
        // which the line alone does not show.
        if c.points.len() > 1 && point_spacing < MIN_MARKER_SPACING {
            continue;
        }
        chart.draw_series(
            c.points
                .iter()
                .map(|&p| Circle::new(p, 3, c.color.filled())),
        )?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(p.legend_at.clone())
            .label_font(("sans-serif", LABEL_FONT))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

// The integration tests' skip log, so that a check left out for lack of a
// font is counted like the others.
#[cfg(test)]
#[path = "../../tests/common/skip.rs"]
mod test_skip;

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` epochs of plausible curves, losses scaled by `loss_scale`.
    fn records_scaled(n: usize, loss_scale: f64) -> Vec<EpochRecord> {
        (0..n)
            .map(|i| {
                let t = i as f64;
                EpochRecord {
                    epoch: i + 1,
                    mode: "fp32".into(),
                    lr: 0.1,
                    train_loss: loss_scale * 1.5 / (1.0 + t),
                    train_top1: 60.0 + 30.0 * (1.0 - (-t / 3.0).exp()),
                    val_loss: loss_scale * (1.3 / (1.0 + t) + 0.1),
                    val_top1: 58.0 + 30.0 * (1.0 - (-t / 3.0).exp()),
                    val_top5: 90.0 + 9.0 * (1.0 - (-t / 2.0).exp()),
                    images_per_sec: 1000.0,
                    epoch_seconds: 60.0,
                }
            })
            .collect()
    }

    fn records(n: usize) -> Vec<EpochRecord> {
        records_scaled(n, 1.0)
    }

    /// Decodes with the `png` crate: (width, height, RGB bytes); asserts
    /// 8-bit RGB.
    fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut buf).unwrap();
        assert_eq!(frame.color_type, png::ColorType::Rgb);
        assert_eq!(frame.bit_depth, png::BitDepth::Eight);
        buf.truncate(frame.buffer_size());
        (frame.width, frame.height, buf)
    }

    fn pixel(rgb: &[u8], x: u32, y: u32) -> [u8; 3] {
        let i = 3 * (y * WIDTH + x) as usize;
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    }

    /// The columns of the loss panel (left half) holding a pure-blue pixel
    /// (train loss: line or marker; the legend's sample too, with text).
    fn blue_columns(rgb: &[u8]) -> Vec<u32> {
        (0..WIDTH / 2)
            .filter(|&x| (0..HEIGHT).any(|y| pixel(rgb, x, y) == [0, 0, 255]))
            .collect()
    }

    #[test]
    fn png_encoding_decodes_to_the_same_pixels() {
        let (w, h) = (5u32, 3u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| i as u8).collect();
        assert_eq!(
            decode(&encode_png(&rgb, w, h).unwrap()),
            (w, h, rgb.clone())
        );
        let err = encode_png(&rgb, w + 1, h).unwrap_err();
        assert!(err.to_string().contains("PNG"), "{err}");
    }

    #[test]
    fn plot_writes_a_decodable_png_atomically() {
        let dir = std::env::temp_dir().join(format!("qat-plot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("curves.png");
        plot_metrics(&records(12), &path).unwrap();
        // Redrawing replaces the file.
        plot_metrics(&records(13), &path).unwrap();
        let (w, h, rgb) = decode(&std::fs::read(&path).unwrap());
        assert_eq!((w, h), (WIDTH, HEIGHT));
        // Not a blank canvas.
        assert!(rgb.iter().filter(|&&b| b != 255 && b != 0).count() > 1000);
        let names = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&dir), ["curves.png"]);
        // A failed write (the target is a folder, so the rename fails)
        // leaves no temporary file behind.
        let blocked = dir.join("blocked.png");
        std::fs::create_dir(&blocked).unwrap();
        assert!(plot_metrics(&records(3), &blocked).is_err());
        assert_eq!(names(&dir), ["blocked.png", "curves.png"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tick_labels_are_compact() {
        let labels = |ticks: &[f64], step: f64| -> Vec<String> {
            let f = TickFormat::new(ticks, step);
            ticks.iter().map(|&t| f.format(t)).collect()
        };
        assert_eq!(
            labels(&[0.0, 0.2, 0.4, 1.4], 0.2),
            ["0", "0.2", "0.4", "1.4"]
        );
        // Rounding noise of k * step does not show.
        assert_eq!(labels(&[3.0 * 0.1, 1e-17], 0.1), ["0.3", "0"]);
        assert_eq!(labels(&[60.0, 85.0, 100.0], 5.0), ["60", "85", "100"]);
        assert_eq!(labels(&[99.6, 99.8], 0.05), ["99.60", "99.80"]);
        assert_eq!(labels(&[5000.0, 9000.0], 1000.0), ["5000", "9000"]);
        // Large: scientific, as many digits as the step needs, alike.
        assert_eq!(
            labels(&[0.0, 5e5, 1e6, 1.5e6], 5e5),
            ["0", "5.0e5", "1.0e6", "1.5e6"]
        );
        assert_eq!(labels(&[1e4, 2e4], 1e4), ["1e4", "2e4"]);
        assert_eq!(labels(&[1.2e30, 1.4e30], 2e29), ["1.2e30", "1.4e30"]);
        assert_eq!(labels(&[-1.4e30, -2e29], 2e29), ["-1.4e30", "-2.0e29"]);
        assert_eq!(labels(&[1.0e6, 1.0001e6], 100.0), ["1.0000e6", "1.0001e6"]);
        // Small steps: scientific too.
        assert_eq!(
            labels(&[0.0, 5e-6, 1e-5, 1.5e-5], 5e-6),
            ["0", "5.0e-6", "1.0e-5", "1.5e-5"]
        );
        assert_eq!(labels(&[0.001, 0.002], 0.001), ["0.001", "0.002"]);
    }

    #[test]
    fn ticks_are_round_and_within_the_range() {
        assert_eq!(
            ticks(-0.08, 1.65, 10, 0.0),
            (
                vec![
                    0.0,
                    0.2,
                    0.4,
                    0.6000000000000001,
                    0.8,
                    1.0,
                    1.2000000000000002,
                    1.4000000000000001,
                    1.6
                ],
                0.2
            )
        );
        let (t, step) = ticks(55.0, 100.0, 10, 0.0);
        assert_eq!(
            (t.first(), t.last(), step),
            (Some(&55.0), Some(&100.0), 5.0)
        );
        // Epochs: integers from 1, at most 13.
        assert_eq!(ticks(1.0, 1.5, 13, 1.0).0, [1.0]);
        assert_eq!(
            ticks(1.0, 8.5, 13, 1.0).0,
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
        );
        let (t, step) = ticks(1.0, 92.67, 13, 1.0);
        assert_eq!(
            (t.first(), t.last(), t.len(), step),
            (Some(&10.0), Some(&90.0), 9, 10.0)
        );
        // Huge and degenerate ranges.
        let (t, _) = ticks(-5e298, 1.05e300, 10, 0.0);
        assert!(!t.is_empty() && t.len() <= 10 && t.iter().all(|v| v.is_finite()));
        assert!(ticks(1.0, 1.0, 10, 0.0).0.is_empty());
        assert!(ticks(0.0, f64::INFINITY, 10, 0.0).0.is_empty());
    }

    #[test]
    fn ranges_keep_every_point_off_the_axes() {
        // One epoch: the point sits mid-way along x, and inside the y range.
        let (lo, hi) = x_range(1);
        assert!(lo < 0.6 && hi > 1.4, "{lo}..{hi}");
        let (lo, hi) = x_range(8);
        assert!(lo <= 0.5 && hi >= 8.5, "{lo}..{hi}");
        let one = records(1);
        let loss = [curve(&one, "l", BLUE, |r| r.train_loss)];
        let ((lo, hi), (tlo, thi)) = y_range(&loss, true, (0.0, f64::INFINITY));
        assert!(lo < 0.0 && hi > 1.5 * 1.04, "{lo}..{hi}");
        assert_eq!((tlo, thi), (0.0, hi));
        // Accuracy at 100%: headroom above it, but no tick beyond 100.
        let mut r = records(2);
        r[1].val_top5 = 100.0;
        let acc = [curve(&r, "a", BLUE, |r| r.val_top5)];
        let ((_, hi), (_, thi)) = y_range(&acc, false, (0.0, 100.0));
        assert!(hi > 100.0 && thi == 100.0, "{hi} {thi}");
        // A flat curve gets a span.
        let flat = [Curve {
            label: "f",
            color: BLUE,
            points: vec![(1.0, 99.9), (2.0, 99.9)],
        }];
        let ((lo, hi), (_, thi)) = y_range(&flat, false, (0.0, 100.0));
        assert!(
            lo < 99.1 && hi > 100.0 && hi < 100.1 && thi == 100.0,
            "{lo}..{hi}"
        );
    }

    #[test]
    fn one_epoch_is_drawn_inside_the_plot_area() {
        // Without text the train loss marker is the only blue in the loss
        // panel: it must sit in the middle, well away from either axis.
        let rgb = render(&records(1), false).unwrap();
        let cols = blue_columns(&rgb);
        assert!(!cols.is_empty());
        assert!(
            cols.iter().all(|&x| (250..350).contains(&x)),
            "blue at columns {cols:?}"
        );
        let rows: Vec<u32> = (0..HEIGHT)
            .filter(|&y| (0..WIDTH / 2).any(|x| pixel(&rgb, x, y) == [0, 0, 255]))
            .collect();
        assert!(rows
            .iter()
            .all(|&y| y > MARGIN + 5 && y < HEIGHT - MARGIN - 5));
        if text_font_registered() {
            // With text, the marker is mid-panel too (the legend's blue
            // sample is in the upper right corner, beyond column 450).
            let rgb = render(&records(1), true).unwrap();
            let cols: Vec<u32> = blue_columns(&rgb)
                .into_iter()
                .filter(|&x| x < 450)
                .collect();
            assert!(!cols.is_empty());
            assert!(cols.iter().all(|&x| (250..400).contains(&x)), "{cols:?}");
        }
    }

    #[test]
    fn huge_losses_keep_their_labels_inside_the_panel() {
        if !text_font_registered() {
            eprintln!("no font: tick labels are not drawn, nothing to check");
            return;
        }
        let mut spike = records(8);
        spike[3].val_loss = 1e30;
        for (name, r) in [
            ("1e6", records_scaled(8, 1e6)),
            ("1e30", records_scaled(8, 1e30)),
            ("one epoch of 1e30", records_scaled(1, 1e30)),
            ("spike", spike),
            ("1e299", records_scaled(3, 1e299)),
        ] {
            let rgb = render(&r, true).unwrap();
            // Labels that do not fit their area spill into the panel's left
            // margin (or past the image's edge): keep those columns blank.
            for panel_x in [0, WIDTH / 2] {
                for x in panel_x..panel_x + MARGIN - 3 {
                    for y in 0..HEIGHT {
                        assert_eq!(pixel(&rgb, x, y), [255; 3], "{name}: ink at ({x}, {y})");
                    }
                }
            }
            // The first epoch's train loss marker is away from the y axis.
            let cols = blue_columns(&rgb);
            assert!(cols.iter().any(|&x| x > 100 && x < 450), "{name}: {cols:?}");
        }
        let p = Panel {
            title: "Loss",
            y_desc: "loss",
            curves: &[curve(&records_scaled(8, 1e30), "l", BLUE, |r| r.train_loss)],
            y_bounds: (0.0, f64::INFINITY),
            y_from_zero: true,
            legend_at: SeriesLabelPosition::UpperRight,
        };
        assert_eq!(axes(8, &p).y_labels.last().unwrap(), "1.4e30");
    }

    #[test]
    fn plots_without_a_font_and_with_odd_records() {
        // No text at all: what happens on a machine without fonts.
        let plain = render(&records(5), false).unwrap();
        assert_eq!(plain.len(), (WIDTH * HEIGHT * 3) as usize);
        if text_font_registered() {
            assert_ne!(render(&records(5), true).unwrap(), plain);
        } else {
            super::test_skip::skip(
                "plot text (train::plot unit test)",
                "no TrueType font found (apt-get install fonts-dejavu-core, or set \
                 QAT_PLOT_FONT to a .ttf file; scripts/test.sh installs it)",
            );
        }
        let text = text_font_registered();
        for n in [1, 2, 8, 90] {
            render(&records(n), text).unwrap();
            render(&records(n), false).unwrap();
        }
        // A diverged epoch with NaN/inf values.
        let mut r = records(4);
        r[2].train_loss = f64::NAN;
        r[3].val_loss = f64::INFINITY;
        r[3].val_top1 = f64::NAN;
        render(&r, text).unwrap();
        // Every value non-finite (or too large to plot): empty curves,
        // still a figure.
        let mut r = records(2);
        for x in &mut r {
            x.train_loss = f64::NAN;
            x.val_loss = f64::MAX;
        }
        render(&r, text).unwrap();
        let err = plot_metrics(&[], Path::new("unused.png")).unwrap_err();
        assert!(err.to_string().contains("no epochs"), "{err}");
    }
}
