//! The calls of the public contract (API.md) the generator makes besides sending:
//! creating users and issuing their tokens, as an integrator's admin would.

use anyhow::{bail, Context as _};
use futures::{stream, StreamExt as _};
use std::sync::Arc;

use crate::ctx::Ctx;

/// A user the run needs.
#[derive(Debug, Clone)]
pub(crate) struct UserSpec {
    pub(crate) id: String,
    pub(crate) kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A business with `send` and `chat`.
    Business,
    /// A verified mobile user.
    Mobile,
}

impl UserSpec {
    pub(crate) fn business(id: String) -> Self {
        UserSpec { id, kind: Kind::Business }
    }

    pub(crate) fn mobile(id: String) -> Self {
        UserSpec { id, kind: Kind::Mobile }
    }
}

/// A user with a token, ready to call the API or open a socket.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub(crate) id: Arc<str>,
    pub(crate) token: String,
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    token: String,
}

/// Creates the users (an existing id, 409, is taken as is: runs with the same --prefix
/// reuse them) and issues a token for each; answers in the order of `specs`.
pub(crate) async fn accounts(ctx: &Arc<Ctx>, specs: Vec<UserSpec>, what: &str) -> anyhow::Result<Vec<Account>> {
    ctx.progress.counted(what, specs.len() as u64);
    let results: Vec<anyhow::Result<Account>> = stream::iter(specs)
        .map(|spec| {
            let ctx = ctx.clone();
            async move {
                let account = account(&ctx, &spec).await;
                ctx.progress.inc(1);
                account
            }
        })
        .buffered(ctx.setup_concurrency.max(1))
        .collect()
        .await;
    ctx.progress.finish();
    results.into_iter().collect()
}

async fn account(ctx: &Ctx, spec: &UserSpec) -> anyhow::Result<Account> {
    let body = match spec.kind {
        Kind::Business => serde_json::json!({
            "id": spec.id, "kind": "business", "display_name": spec.id, "permissions": ["send", "chat"],
        }),
        Kind::Mobile => serde_json::json!({
            "id": spec.id, "kind": "mobile", "display_name": spec.id, "verified": true,
        }),
    };
    let created = ctx.http.post("/v1/users", &ctx.admin_token, serde_json::to_vec(&body)?).await.context("create user")?;
    if !(created.status.as_u16() == 201 || created.status.as_u16() == 409) {
        bail!("creating user {} answered {}: {}", spec.id, created.status, String::from_utf8_lossy(&created.body));
    }
    let path = format!("/v1/users/{}/tokens", spec.id);
    let issued = ctx.http.post(&path, &ctx.admin_token, br#"{"ttl_s":86400}"#.to_vec()).await.context("issue token")?;
    if issued.status.as_u16() != 201 {
        bail!("issuing a token for {} answered {}: {}", spec.id, issued.status, String::from_utf8_lossy(&issued.body));
    }
    let answer: TokenAnswer = issued.json()?;
    Ok(Account { id: Arc::from(spec.id.as_str()), token: answer.token })
}

/// Ids `{prefix}-{tag}{i}` for i in 0..n.
pub(crate) fn ids<'a>(prefix: &'a str, tag: &'a str, n: usize) -> impl Iterator<Item = String> + 'a {
    (0..n).map(move |i| format!("{prefix}-{tag}{i}"))
}

#[derive(serde::Deserialize)]
struct MediaAnswer {
    id: String,
}

/// Uploads a small PNG (600×400, so the server makes its three thumbnails) as `account`;
/// the media id, for messages to carry in `media_ids`.
pub(crate) async fn upload_image(ctx: &Ctx, account: &Account) -> anyhow::Result<String> {
    let image = image::RgbImage::from_fn(600, 400, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    let body = esh_benches::multipart("load.png", "image/png", &png);
    let answer = ctx.http.post_as("/v1/media", &account.token, esh_benches::MULTIPART_CONTENT_TYPE, body).await?;
    if answer.status.as_u16() != 201 {
        bail!("uploading an image as {} answered {}: {}", account.id, answer.status, String::from_utf8_lossy(&answer.body));
    }
    Ok(answer.json::<MediaAnswer>()?.id)
}
