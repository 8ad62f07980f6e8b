//! Thumbnails of uploaded images: decoded with bounded limits (a decompression bomb or a
//! corrupt file is refused, never crashed on), scaled to fit 150×150, 300×300 and 600×600
//! with their aspect ratio kept (never enlarged), encoded as JPEG, or PNG when the image
//! has transparency. The work runs on the blocking pool, at most `workers` images at once.

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use esh_common::{ApiError, MediaVariant};
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use serde_json::json;
use tokio::sync::Semaphore;

/// Widest and tallest image decoded, in pixels.
const MAX_SIDE: u32 = 12_000;
/// Most memory one decode may take: 12,000 × 12,000 RGB would need more, so huge images
/// also stop here.
const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;
/// JPEG quality of the thumbnails.
const JPEG_QUALITY: u8 = 82;

/// One encoded thumbnail.
pub(crate) struct Made {
    pub(crate) variant: MediaVariant,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) content_type: &'static str,
    pub(crate) bytes: Bytes,
}

/// A bounded pool that makes thumbnails off the async threads.
#[derive(Clone)]
pub(crate) struct Thumbnailer {
    permits: Arc<Semaphore>,
}

impl Thumbnailer {
    pub(crate) fn new(workers: usize) -> Self {
        Thumbnailer { permits: Arc::new(Semaphore::new(workers.max(1))) }
    }

    /// The three thumbnails of `image`, smallest first; 400 if it cannot be decoded within the limits.
    pub(crate) async fn make(&self, image: Bytes) -> Result<Vec<Made>, ApiError> {
        let _permit = self.permits.acquire().await.map_err(|_| ApiError::internal("thumbnail pool closed"))?;
        tokio::task::spawn_blocking(move || thumbnails(&image))
            .await
            .map_err(|error| ApiError::internal(format!("thumbnail task failed: {error}")))?
    }
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

fn undecodable(error: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("the image cannot be decoded: {error}")).with_details(json!({ "field": "file" }))
}

/// The size that fits `width`×`height` in a `bound`×`bound` square, aspect ratio kept, never larger.
pub(crate) fn fit(width: u32, height: u32, bound: u32) -> (u32, u32) {
    if width <= bound && height <= bound {
        return (width, height);
    }
    let scale = f64::from(bound) / f64::from(width.max(height));
    let scaled = |side: u32| ((f64::from(side) * scale).round() as u32).clamp(1, bound);
    (scaled(width), scaled(height))
}

fn thumbnails(bytes: &[u8]) -> Result<Vec<Made>, ApiError> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(undecodable)?;
    reader.limits(limits());
    let image = reader.decode().map_err(undecodable)?;
    let transparent = image.color().has_alpha();
    let mut made = Vec::with_capacity(3);
    // Largest first, each from the one before: cheaper than three scalings of the original.
    let mut source = image;
    for variant in MediaVariant::THUMBNAILS.into_iter().rev() {
        let bound = variant.bound().unwrap_or(u32::MAX);
        let (width, height) = fit(source.width(), source.height(), bound);
        if (width, height) != (source.width(), source.height()) {
            source = source.resize_exact(width, height, FilterType::Triangle);
        }
        made.push(encode(variant, &source, transparent)?);
    }
    made.reverse();
    Ok(made)
}

fn encode(variant: MediaVariant, image: &DynamicImage, transparent: bool) -> Result<Made, ApiError> {
    let mut bytes = Vec::new();
    let content_type = if transparent {
        image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png).map_err(encoding_failed)?;
        "image/png"
    } else {
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY);
        image.to_rgb8().write_with_encoder(encoder).map_err(encoding_failed)?;
        "image/jpeg"
    };
    Ok(Made { variant, width: image.width(), height: image.height(), content_type, bytes: bytes.into() })
}

fn encoding_failed(error: image::ImageError) -> ApiError {
    ApiError::internal(format!("cannot encode a thumbnail: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn req_2_4_sizes_fit_their_square_with_the_aspect_ratio_kept() {
        assert_eq!(fit(4000, 3000, 600), (600, 450));
        assert_eq!(fit(3000, 4000, 150), (113, 150));
        assert_eq!(fit(100, 80, 150), (100, 80));
        assert_eq!(fit(10_000, 1, 150), (150, 1));
    }

    #[test]
    fn an_image_gets_three_thumbnails_and_garbage_is_refused() {
        let image =
            DynamicImage::ImageRgb8(image::RgbImage::from_fn(1200, 800, |x, y| image::Rgb([x as u8, y as u8, 7])));
        let mut png = Vec::new();
        image.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
        let made = thumbnails(&png).unwrap();
        let sizes: Vec<(u32, u32)> = made.iter().map(|m| (m.width, m.height)).collect();
        assert_eq!(sizes, [(150, 100), (300, 200), (600, 400)]);
        for thumbnail in &made {
            let decoded = image::load_from_memory(&thumbnail.bytes).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (thumbnail.width, thumbnail.height));
            assert_eq!(thumbnail.content_type, "image/jpeg");
        }
        assert!(thumbnails(&png[..png.len() / 2]).is_err());
        assert!(thumbnails(b"not an image").is_err());
    }
}
