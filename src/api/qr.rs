//! Rendering pairing QR codes (SVG, PNG) and timestamps for the API.

use qrcode::render::svg;
use qrcode::{Color, QrCode};
use serde::Serialize;

use crate::session::PairingQr;

/// Pixels per QR module in PNG output.
const PNG_SCALE: usize = 8;
/// Quiet zone around the code, in modules (the standard asks for 4).
const QUIET_ZONE: usize = 4;

/// A QR code as the API shows it. Holds a credential: never log it.
#[derive(Clone, Serialize, utoipa::ToSchema)]
pub struct QrView {
    /// A credential: whoever sees it can link a device.
    pub code: String,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub expires_at_ms: i64,
    pub index: u32,
    pub svg: String,
}

impl std::fmt::Debug for QrView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QrView")
            .field("expires_at", &self.expires_at)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot render the QR code: {0}")]
pub struct RenderError(String);

impl QrView {
    pub fn new(qr: &PairingQr) -> Result<Self, RenderError> {
        Ok(Self {
            code: qr.code.clone(),
            expires_at: rfc3339_ms(qr.expires_at_ms),
            expires_at_ms: qr.expires_at_ms,
            index: qr.index,
            svg: render_svg(&qr.code)?,
        })
    }
}

fn encode(code: &str) -> Result<QrCode, RenderError> {
    QrCode::new(code.as_bytes()).map_err(|e| RenderError(e.to_string()))
}

/// An SVG document of the QR code.
pub fn render_svg(code: &str) -> Result<String, RenderError> {
    Ok(encode(code)?
        .render::<svg::Color<'_>>()
        .min_dimensions(264, 264)
        .quiet_zone(true)
        .build())
}

/// A grayscale PNG of the QR code.
pub fn render_png(code: &str) -> Result<Vec<u8>, RenderError> {
    let qr = encode(code)?;
    let modules = qr.width();
    let colors = qr.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * PNG_SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET_ZONE, i / modules + QUIET_ZONE);
        for y in my * PNG_SCALE..(my + 1) * PNG_SCALE {
            let row = y * side;
            pixels[row + mx * PNG_SCALE..row + (mx + 1) * PNG_SCALE].fill(0);
        }
    }
    let side_u32 = u32::try_from(side).map_err(|_| RenderError("image too large".into()))?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side_u32, side_u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .map_err(|e| RenderError(e.to_string()))?;
    writer
        .write_image_data(&pixels)
        .map_err(|e| RenderError(e.to_string()))?;
    writer.finish().map_err(|e| RenderError(e.to_string()))?;
    Ok(out)
}

/// Milliseconds since the epoch as RFC 3339 UTC, e.g. `2025-01-02T03:04:05.678Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (y, m, d).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_735_787_045_678), "2025-01-02T03:04:05.678Z");
    }

    #[test]
    fn renders() {
        let code = "2@abc,def,ghi,jkl";
        let svg = render_svg(code).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("<svg"));
        let png = render_png(code).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
