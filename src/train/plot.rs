//! A PNG of the training curves: loss (train, val) and accuracy (train top-1,
//! val top-1, val top-5) against epoch, side by side.
//!
//! plotters draws into an in-memory RGB buffer, which `encode_png` turns
//! into a PNG with `flate2` (no image crate). Text needs a TrueType font,
//! found at run time ([`FONT_PATHS`], or the file named by `QAT_PLOT_FONT`);
//! without one the curves, axes and grid are still drawn, only the titles,
//! tick labels and legend are left out, so plotting never fails for lack of
//! a font. On Debian the font comes from `fonts-dejavu-core`.

use super::metrics::EpochRecord;
use crate::{bail, Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 480;

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
/// the epoch number for a single run) to a PNG at `path`, written atomically.
/// Non-finite values (a diverged epoch) are left out of the curves.
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
        .filter(|(_, y)| y.is_finite())
        .collect();
    Curve {
        label,
        color,
        points,
    }
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
        let (lo, hi) = y_range(&loss, 0.0, f64::INFINITY);
        panel(
            &left,
            n,
            &loss,
            (lo.min(0.0), hi),
            "Loss",
            "loss",
            text,
            SeriesLabelPosition::UpperRight,
        )?;
        let (lo, hi) = y_range(&acc, 0.0, 100.0);
        panel(
            &right,
            n,
            &acc,
            (lo, hi),
            "Accuracy",
            "accuracy (%)",
            text,
            SeriesLabelPosition::LowerRight,
        )?;
        root.present()?;
    }
    Ok(buf)
}

/// The range of every curve's values with a 5% margin, clamped to
/// `[floor, ceil]`, and never empty.
fn y_range(curves: &[Curve], floor: f64, ceil: f64) -> (f64, f64) {
    let ys = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if lo > hi {
        return (floor, if ceil.is_finite() { ceil } else { 1.0 });
    }
    let margin = ((hi - lo) * 0.05).max(1e-3 * hi.abs().max(1.0));
    ((lo - margin).max(floor), (hi + margin).min(ceil))
}

#[allow(clippy::too_many_arguments)]
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    epochs: usize,
    curves: &[Curve],
    (y_lo, y_hi): (f64, f64),
    title: &str,
    y_desc: &str,
    text: bool,
    legend_at: SeriesLabelPosition,
) -> DrawResult<()> {
    // One epoch still gets a visible x range.
    let x_range = 1.0..(epochs as f64).max(2.0);
    let mut builder = ChartBuilder::on(area);
    builder.margin(15);
    if text {
        builder
            .caption(title, ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(60);
    } else {
        builder.x_label_area_size(5).y_label_area_size(5);
    }
    let mut chart = builder.build_cartesian_2d(x_range, y_lo..y_hi)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("epoch")
            .y_desc(y_desc)
            .x_labels(epochs.clamp(2, 10))
            .x_label_formatter(&|x| format!("{x:.0}"));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    for c in curves {
        let style = c.color.stroke_width(2);
        let series = chart.draw_series(LineSeries::new(c.points.iter().copied(), style))?;
        if text {
            series
                .label(c.label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        }
        // Markers, so that a single epoch is visible too.
        chart.draw_series(
            c.points
                .iter()
                .map(|&p| Circle::new(p, 3, c.color.filled())),
        )?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(legend_at)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

/// A minimal PNG encoder: 8-bit RGB, no interlace, filter 0 on every row,
/// one zlib-compressed IDAT chunk.
fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let row = width as usize * 3;
    if rgb.len() != row * height as usize {
        bail!(
            Usage,
            "encode_png: {} bytes is not {width}x{height} RGB",
            rgb.len()
        );
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let zlib_err = |e| Error::io("<png encoder>", e);
    for line in rgb.chunks_exact(row.max(1)).take(height as usize) {
        z.write_all(&[0]).map_err(zlib_err)?;
        z.write_all(line).map_err(zlib_err)?;
    }
    let idat = z.finish().map_err(zlib_err)?;

    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), deflate, filter method 0, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (b"IHDR", &ihdr[..]),
        (b"IDAT", &idat[..]),
        (b"IEND", &[][..]),
    ] {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = png.len();
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        let crc = crc32fast::hash(&png[start..]);
        png.extend_from_slice(&crc.to_be_bytes());
    }
    Ok(png)
}

// The integration tests' skip log, so that a check left out for lack of a
// font is counted like the others.
#[cfg(test)]
#[path = "../../tests/common/skip.rs"]
mod test_skip;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn records(n: usize) -> Vec<EpochRecord> {
        (0..n)
            .map(|i| {
                let t = i as f64;
                EpochRecord {
                    epoch: i + 1,
                    mode: "fp32".into(),
                    lr: 0.1,
                    train_loss: 1.5 / (1.0 + t),
                    train_top1: 60.0 + 30.0 * (1.0 - (-t / 3.0).exp()),
                    val_loss: 1.4 / (1.0 + t) + 0.1,
                    val_top1: 58.0 + 30.0 * (1.0 - (-t / 3.0).exp()),
                    val_top5: 90.0 + 9.0 * (1.0 - (-t / 2.0).exp()),
                    images_per_sec: 1000.0,
                    epoch_seconds: 60.0,
                }
            })
            .collect()
    }

    /// Checks signature, chunk CRCs and IHDR, and inflates IDAT; returns
    /// (width, height, raw scanlines).
    fn parse_png(png: &[u8]) -> (u32, u32, Vec<u8>) {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let mut at = 8;
        let (mut w, mut h, mut idat) = (0, 0, Vec::new());
        let mut kinds = Vec::new();
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let body = &png[at + 4..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc32fast::hash(body), crc);
            let (kind, data) = body.split_at(4);
            if kind == b"IHDR" {
                w = u32::from_be_bytes(data[..4].try_into().unwrap());
                h = u32::from_be_bytes(data[4..8].try_into().unwrap());
                assert_eq!(&data[8..], &[8, 2, 0, 0, 0]);
            }
            if kind == b"IDAT" {
                idat.extend_from_slice(data);
            }
            kinds.push(String::from_utf8(kind.to_vec()).unwrap());
            at += 12 + len;
        }
        assert_eq!(kinds, ["IHDR", "IDAT", "IEND"]);
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .unwrap();
        (w, h, raw)
    }

    #[test]
    fn png_encoder_round_trips() {
        let (w, h) = (5u32, 3u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| i as u8).collect();
        let (pw, ph, raw) = parse_png(&encode_png(&rgb, w, h).unwrap());
        assert_eq!((pw, ph), (w, h));
        let rows: Vec<u8> = raw
            .chunks(1 + 3 * w as usize)
            .flat_map(|r| {
                assert_eq!(r[0], 0);
                r[1..].to_vec()
            })
            .collect();
        assert_eq!(rows, rgb);
        assert!(encode_png(&rgb, w + 1, h).is_err());
    }

    #[test]
    fn plot_writes_a_png_of_the_right_size() {
        let dir = std::env::temp_dir().join(format!("qat-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.png");
        plot_metrics(&records(12), &path).unwrap();
        let png = std::fs::read(&path).unwrap();
        let (w, h, raw) = parse_png(&png);
        assert_eq!((w, h), (WIDTH, HEIGHT));
        assert_eq!(raw.len(), (HEIGHT * (1 + 3 * WIDTH)) as usize);
        // Not a blank canvas.
        assert!(raw.iter().filter(|&&b| b != 255 && b != 0).count() > 1000);
        std::fs::remove_dir_all(&dir).unwrap();
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
        // One epoch, and a diverged epoch with NaN/inf values.
        let text = text_font_registered();
        render(&records(1), text).unwrap();
        let mut r = records(4);
        r[2].train_loss = f64::NAN;
        r[3].val_loss = f64::INFINITY;
        r[3].val_top1 = f64::NAN;
        render(&r, text).unwrap();
        // Every value non-finite: empty curves, still a figure.
        let mut r = records(2);
        for x in &mut r {
            x.train_loss = f64::NAN;
            x.val_loss = f64::NAN;
        }
        render(&r, text).unwrap();
        let err = plot_metrics(&[], Path::new("unused.png")).unwrap_err();
        assert!(err.to_string().contains("no epochs"), "{err}");
    }
}
