//! Media objects as clients see them (API.md "Media"): each URL is signed afresh, valid
//! one hour. A blob store with an endpoint of its own (S3) presigns its URLs; the local
//! store's blobs are served by `esh` at `/v1/media/{id}/content/{variant}?expires&signature`,
//! signed here with an HMAC-SHA256 key (kept in the data directory by the server).
//! Shared by every stage that shows messages: HTTP reads, WebSocket frames, push previews.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use esh_common::view::{MediaView, ThumbnailView, Thumbnails};
use esh_common::{Media, MediaVariant, Message, Millis};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::blob::BlobStore;
use crate::error::BackendError;
use crate::store::MediaCatalog;

/// How long a signed URL stays valid.
pub const SIGNED_URL_TTL: Duration = Duration::from_secs(3600);

/// How media URLs are made.
#[derive(Clone)]
pub struct MediaLinkConfig {
    /// The HMAC key of URLs served by `esh` (at least 32 bytes).
    pub key: Arc<[u8]>,
    /// Base of absolute URLs (`ESH_PUBLIC_URL`); unset: the request's host, or `local_url`
    /// where there is no request (WebSocket frames, push previews, send answers).
    pub public_url: Option<String>,
    /// Where this process listens, as `http://host:port`.
    pub local_url: String,
}

impl fmt::Debug for MediaLinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaLinkConfig")
            .field("key", &"<redacted>")
            .field("public_url", &self.public_url)
            .field("local_url", &self.local_url)
            .finish()
    }
}

impl Default for MediaLinkConfig {
    /// A random key (URLs do not survive a restart) and no public URL.
    fn default() -> Self {
        let key: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        MediaLinkConfig { key: key.into(), public_url: None, local_url: "http://127.0.0.1".into() }
    }
}

/// Why a download URL is refused (answered 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signed url has expired")]
    Expired,
    #[error("the url signature does not match")]
    Invalid,
}

/// Signs and checks the URLs `esh` serves blobs at.
#[derive(Clone)]
pub struct UrlSigner {
    key: Arc<[u8]>,
}

impl UrlSigner {
    pub fn new(key: Arc<[u8]>) -> Self {
        UrlSigner { key }
    }

    fn mac(&self, media_id: &str, variant: MediaVariant, expires_s: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("hmac takes keys of any length");
        mac.update(format!("{media_id}\n{}\n{expires_s}", variant.as_str()).as_bytes());
        mac
    }

    /// The signature of a download of `variant` of `media_id` valid until `expires_s` (Unix seconds).
    pub fn sign(&self, media_id: &str, variant: MediaVariant, expires_s: i64) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(media_id, variant, expires_s).finalize().into_bytes())
    }

    /// Checks a signature (in constant time) and its expiry against `now`.
    pub fn verify(
        &self,
        media_id: &str,
        variant: MediaVariant,
        expires_s: i64,
        signature: &str,
        now: Millis,
    ) -> Result<(), SignatureError> {
        let given = URL_SAFE_NO_PAD.decode(signature).map_err(|_| SignatureError::Invalid)?;
        self.mac(media_id, variant, expires_s).verify_slice(&given).map_err(|_| SignatureError::Invalid)?;
        if now.0 >= expires_s.saturating_mul(1000) {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }
}

/// Turns media ids into media objects with signed URLs.
#[derive(Clone)]
pub struct MediaLinks {
    catalog: Arc<dyn MediaCatalog>,
    blobs: Arc<dyn BlobStore>,
    signer: UrlSigner,
    public_url: Option<String>,
    local_url: String,
}

impl MediaLinks {
    pub fn new(catalog: Arc<dyn MediaCatalog>, blobs: Arc<dyn BlobStore>, config: &MediaLinkConfig) -> Self {
        MediaLinks {
            catalog,
            blobs,
            signer: UrlSigner::new(config.key.clone()),
            public_url: config.public_url.as_ref().map(|url| url.trim_end_matches('/').to_owned()),
            local_url: config.local_url.trim_end_matches('/').to_owned(),
        }
    }

    pub fn signer(&self) -> &UrlSigner {
        &self.signer
    }

    /// The base of absolute URLs: the configured public URL, else `http://{request_host}`,
    /// else where this process listens.
    pub fn base(&self, request_host: Option<&str>) -> String {
        match (&self.public_url, request_host) {
            (Some(public), _) => public.clone(),
            (None, Some(host)) => format!("http://{host}"),
            (None, None) => self.local_url.clone(),
        }
    }

    async fn url(
        &self,
        media_id: &str,
        variant: MediaVariant,
        base: &str,
        expires: Millis,
    ) -> Result<String, BackendError> {
        let key = Media::blob_key(media_id, variant);
        if let Some(url) = self.blobs.presigned_get(&key, SIGNED_URL_TTL).await? {
            return Ok(url);
        }
        let expires_s = expires.0 / 1000;
        let signature = self.signer.sign(media_id, variant, expires_s);
        Ok(format!("{base}/v1/media/{media_id}/content/{}?expires={expires_s}&signature={signature}", variant.as_str()))
    }

    /// `media` as clients see it, its URLs signed now and valid for `SIGNED_URL_TTL`.
    pub async fn view(&self, media: &Media, base: &str) -> Result<MediaView, BackendError> {
        // Whole seconds, so that `expires_at` is exactly when the URL stops working.
        let expires = Millis((Millis::now().0 / 1000) * 1000 + SIGNED_URL_TTL.as_millis() as i64);
        let url = self.url(&media.id, MediaVariant::Original, base, expires).await?;
        let mut thumbnails = Vec::with_capacity(media.thumbnails.len());
        for thumbnail in &media.thumbnails {
            let url = self.url(&media.id, thumbnail.variant, base, expires).await?;
            thumbnails
                .push((thumbnail.variant, ThumbnailView { url, width: thumbnail.width, height: thumbnail.height }));
        }
        let take = |variant| thumbnails.iter().find(|(v, _)| *v == variant).map(|(_, view)| view.clone());
        let thumbnails = match (take(MediaVariant::Small), take(MediaVariant::Medium), take(MediaVariant::Large)) {
            (Some(small), Some(medium), Some(large)) => Some(Thumbnails { small, medium, large }),
            _ => None,
        };
        Ok(MediaView {
            id: media.id.clone(),
            filename: media.filename.clone(),
            content_type: media.content_type.clone(),
            size: media.size,
            url,
            expires_at: expires,
            thumbnails,
        })
    }

    /// The media objects of each message, in its `media_ids` order (ids not in the catalog
    /// are left out). Messages without media cost nothing: no read at all.
    pub async fn resolve<'m>(
        &self,
        messages: impl IntoIterator<Item = &'m Message>,
        base: &str,
    ) -> Result<Vec<Vec<MediaView>>, BackendError> {
        let lists: Vec<&[String]> = messages.into_iter().map(|message| message.media_ids.as_slice()).collect();
        self.resolve_ids(&lists, base).await
    }

    /// `resolve` for lists of media ids (a push request carries its message's ids, not the message).
    pub async fn resolve_ids(&self, lists: &[&[String]], base: &str) -> Result<Vec<Vec<MediaView>>, BackendError> {
        let mut ids: Vec<String> = lists.iter().flat_map(|ids| ids.iter().cloned()).collect();
        if ids.is_empty() {
            return Ok(vec![Vec::new(); lists.len()]);
        }
        ids.sort_unstable();
        ids.dedup();
        let mut views = HashMap::with_capacity(ids.len());
        for media in self.catalog.media(&ids).await? {
            let view = self.view(&media, base).await?;
            views.insert(media.id, view);
        }
        Ok(lists.iter().map(|ids| ids.iter().filter_map(|id| views.get(id).cloned()).collect()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_id_variant_and_expiry_and_expire() {
        let signer = UrlSigner::new(Arc::from(&b"0123456789abcdef0123456789abcdef"[..]));
        let now = Millis(1_700_000_000_000);
        let expires = 1_700_003_600;
        let signature = signer.sign("m1", MediaVariant::Original, expires);
        assert_eq!(signer.verify("m1", MediaVariant::Original, expires, &signature, now), Ok(()));
        let invalid = Err(SignatureError::Invalid);
        assert_eq!(signer.verify("m2", MediaVariant::Original, expires, &signature, now), invalid);
        assert_eq!(signer.verify("m1", MediaVariant::Small, expires, &signature, now), invalid);
        assert_eq!(signer.verify("m1", MediaVariant::Original, expires + 1, &signature, now), invalid);
        assert_eq!(signer.verify("m1", MediaVariant::Original, expires, "not base64!", now), invalid);
        let other = UrlSigner::new(Arc::from(&b"another key of thirty-two bytes!"[..]));
        assert_eq!(other.verify("m1", MediaVariant::Original, expires, &signature, now), invalid);
        let later = Millis(expires * 1000);
        assert_eq!(
            signer.verify("m1", MediaVariant::Original, expires, &signature, later),
            Err(SignatureError::Expired)
        );
    }
}
