//! PNG charts for the report: line charts (loss and accuracy curves) and bar charts, drawn
//! with embedded-graphics' bitmap fonts so no system fonts or plotting stack are needed.

use embedded_graphics::mono_font::{ascii::FONT_6X10, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};
use image::RgbImage;

const W: u32 = 900;
const H: u32 = 520;
const LEFT: i32 = 70;
const RIGHT: i32 = 220;
const TOP: i32 = 40;
const BOTTOM: i32 = 50;

/// Tableau-like colors, one per series.
const PALETTE: [Rgb888; 8] = [
    Rgb888::new(31, 119, 180),
    Rgb888::new(255, 127, 14),
    Rgb888::new(44, 160, 44),
    Rgb888::new(214, 39, 40),
    Rgb888::new(148, 103, 189),
    Rgb888::new(140, 86, 75),
    Rgb888::new(227, 119, 194),
    Rgb888::new(127, 127, 127),
];

struct Canvas(RgbImage);

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Self::Error> {
        let (w, h) = self.0.dimensions();
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < w && (p.y as u32) < h {
                self.0
                    .put_pixel(p.x as u32, p.y as u32, image::Rgb([c.r(), c.g(), c.b()]));
            }
        }
        Ok(())
    }
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn text(c: &mut Canvas, s: &str, x: i32, y: i32, align: Alignment) {
    let style = MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK);
    let _ = Text::with_alignment(s, Point::new(x, y), style, align).draw(c);
}

fn line(c: &mut Canvas, a: (i32, i32), b: (i32, i32), color: Rgb888, width: u32) {
    let _ = Line::new(Point::new(a.0, a.1), Point::new(b.0, b.1))
        .into_styled(PrimitiveStyle::with_stroke(color, width))
        .draw(c);
}

/// Round tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(mag * 10.0);
    let first = (lo / step).ceil() * step;
    (0..=10)
        .map(|i| first + i as f64 * step)
        .take_while(|v| *v <= hi + 1e-9 * span)
        .collect()
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn frame(c: &mut Canvas, title: &str, x_label: &str, y_label: &str) {
    text(c, title, W as i32 / 2 - RIGHT / 2, 20, Alignment::Center);
    text(
        c,
        x_label,
        LEFT + (W as i32 - LEFT - RIGHT) / 2,
        H as i32 - 12,
        Alignment::Center,
    );
    text(c, y_label, 8, TOP - 10, Alignment::Left);
    let (x0, y0, x1, y1) = (LEFT, TOP, W as i32 - RIGHT, H as i32 - BOTTOM);
    line(c, (x0, y1), (x1, y1), Rgb888::BLACK, 1);
    line(c, (x0, y0), (x0, y1), Rgb888::BLACK, 1);
}

/// A line chart of `series` written as PNG bytes.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> RgbImage {
    let mut c = Canvas(RgbImage::from_pixel(W, H, image::Rgb([255, 255, 255])));
    frame(&mut c, title, x_label, y_label);
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut xl, mut xh, mut yl, mut yh) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (xl, xh, yl, yh) = (xl.min(x), xh.max(x), yl.min(y), yh.max(y));
    }
    if xl > xh {
        text(&mut c, "no data", W as i32 / 2, H as i32 / 2, Alignment::Center);
        return c.0;
    }
    if xh == xl {
        xh = xl + 1.0;
    }
    let pad = ((yh - yl) * 0.05).max(1e-6);
    let (yl, yh) = (yl - pad, yh + pad);
    let (x0, y0, x1, y1) = (LEFT, TOP, W as i32 - RIGHT, H as i32 - BOTTOM);
    let px = |x: f64| x0 + ((x - xl) / (xh - xl) * (x1 - x0) as f64).round() as i32;
    let py = |y: f64| y1 - ((y - yl) / (yh - yl) * (y1 - y0) as f64).round() as i32;
    for t in ticks(yl, yh) {
        line(&mut c, (x0 - 4, py(t)), (x0, py(t)), Rgb888::BLACK, 1);
        line(&mut c, (x0 + 1, py(t)), (x1, py(t)), Rgb888::new(230, 230, 230), 1);
        text(&mut c, &fmt_tick(t), x0 - 6, py(t) + 3, Alignment::Right);
    }
    for t in ticks(xl, xh) {
        line(&mut c, (px(t), y1), (px(t), y1 + 4), Rgb888::BLACK, 1);
        text(&mut c, &fmt_tick(t), px(t), y1 + 15, Alignment::Center);
    }
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let valid: Vec<(i32, i32)> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| (px(x), py(y)))
            .collect();
        for w in valid.windows(2) {
            line(&mut c, w[0], w[1], color, 2);
        }
        if let [only] = valid[..] {
            let _ = Rectangle::new(Point::new(only.0 - 2, only.1 - 2), Size::new(5, 5))
                .into_styled(PrimitiveStyle::with_fill(color))
                .draw(&mut c);
        }
        let ly = TOP + 10 + 16 * i as i32;
        line(&mut c, (x1 + 12, ly), (x1 + 32, ly), color, 3);
        text(&mut c, &s.name, x1 + 38, ly + 3, Alignment::Left);
    }
    c.0
}

/// A bar chart of labelled values (0 at the baseline).
pub fn bar_chart(title: &str, y_label: &str, bars: &[(String, f64)]) -> RgbImage {
    let mut c = Canvas(RgbImage::from_pixel(W, H, image::Rgb([255, 255, 255])));
    frame(&mut c, title, "", y_label);
    let (x0, y0, x1, y1) = (LEFT, TOP, W as i32 - RIGHT, H as i32 - BOTTOM);
    let yh = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1e-9) * 1.1;
    let py = |y: f64| y1 - (y / yh * (y1 - y0) as f64).round() as i32;
    for t in ticks(0.0, yh) {
        line(&mut c, (x0 - 4, py(t)), (x0, py(t)), Rgb888::BLACK, 1);
        text(&mut c, &fmt_tick(t), x0 - 6, py(t) + 3, Alignment::Right);
    }
    let n = bars.len().max(1) as i32;
    let slot = (x1 - x0) / n;
    for (i, (label, v)) in bars.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let left = x0 + slot * i as i32 + slot / 6;
        let top = py(*v);
        let _ = Rectangle::new(
            Point::new(left, top),
            Size::new((slot * 2 / 3) as u32, (y1 - top).max(0) as u32),
        )
        .into_styled(PrimitiveStyle::with_fill(color))
        .draw(&mut c);
        text(&mut c, &fmt_tick(*v), left + slot / 3, top - 4, Alignment::Center);
        let ly = TOP + 10 + 16 * i as i32;
        let _ = Rectangle::new(Point::new(x1 + 12, ly - 5), Size::new(20, 10))
            .into_styled(PrimitiveStyle::with_fill(color))
            .draw(&mut c);
        text(&mut c, label, x1 + 38, ly + 3, Alignment::Left);
    }
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.13, 0.87);
        assert!(t.len() >= 3 && t[0] >= 0.13 && *t.last().unwrap() <= 0.87);
    }

    #[test]
    fn lines_are_drawn_in_their_series_color() {
        let s = vec![
            Series {
                name: "a".into(),
                points: vec![(0.0, 0.0), (1.0, 1.0)],
            },
            Series {
                name: "b".into(),
                points: vec![(0.0, 1.0), (1.0, 0.0)],
            },
        ];
        let img = line_chart("t", "x", "y", &s);
        let count = |c: Rgb888| img.pixels().filter(|p| p.0 == [c.r(), c.g(), c.b()]).count();
        // Each diagonal spans the plot area (~600 px wide, 2 px thick) plus its legend mark.
        assert!(count(PALETTE[0]) > 800 && count(PALETTE[1]) > 800);
        assert!(img.pixels().any(|p| p.0 == [0, 0, 0]), "axes and labels");
        let bars = bar_chart("t", "%", &[("x".into(), 50.0), ("y".into(), 100.0)]);
        let tall = bars
            .pixels()
            .filter(|p| p.0 == [PALETTE[1].r(), PALETTE[1].g(), PALETTE[1].b()])
            .count();
        let short = bars
            .pixels()
            .filter(|p| p.0 == [PALETTE[0].r(), PALETTE[0].g(), PALETTE[0].b()])
            .count();
        // Bar areas scale with value (the legend swatches add the same to both).
        assert!((tall - 200) as f64 / (short - 200) as f64 > 1.8, "{tall} {short}");
    }
}
