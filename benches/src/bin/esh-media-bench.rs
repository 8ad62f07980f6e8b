//! `esh-media-bench`: media upload figures of a running `esh` (BENCHMARKS.md "Media").
//!
//! 1. `--photos` uploads of a ~2 MB JPEG (noise, so it does not compress away) with
//!    `--concurrency` in flight: uploads a second and the server's CPU per upload (its
//!    three thumbnails included), read from `/proc/<--server-pid>/stat`.
//! 2. `--large` uploads of a ~9.5 MiB JPEG one after another: the time to answer, p50/p99.
//!
//! It drives only the public API (`POST /v1/users`, tokens, `POST /v1/media`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use esh_benches::{multipart, MULTIPART_CONTENT_TYPE};
use futures::{stream, StreamExt};
use hdrhistogram::Histogram;
use image::{DynamicImage, RgbImage};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(name = "esh-media-bench")]
struct Cli {
    /// Base URL of the platform.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// The admin bearer token.
    #[arg(long, env = "ESH_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Pid of the server process (its CPU time is read from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Uploads of the 2 MB photo.
    #[arg(long, default_value_t = 200)]
    photos: usize,
    /// Photo uploads in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Uploads of the 10 MB image, one at a time.
    #[arg(long, default_value_t = 50)]
    large: usize,
}

/// A JPEG of random pixels of about `target` bytes.
fn noisy_jpeg(target: usize) -> anyhow::Result<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut side = 600u32;
    loop {
        let image = RgbImage::from_fn(side * 4 / 3, side, |_, _| image::Rgb(rng.gen()));
        let mut bytes = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90);
        DynamicImage::ImageRgb8(image).write_with_encoder(encoder)?;
        if bytes.len() >= target * 97 / 100 {
            if bytes.len() > target * 103 / 100 {
                side = (f64::from(side) * (target as f64 / bytes.len() as f64).sqrt()) as u32;
                continue;
            }
            return Ok(bytes);
        }
        side = (f64::from(side) * (target as f64 / bytes.len() as f64).sqrt() * 1.01) as u32 + 1;
    }
}

/// Clock ticks of CPU (user + system) the process has used.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

const TICKS_PER_SECOND: f64 = 100.0;

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn upload(&self, body: Vec<u8>) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let response = self
            .http
            .post(format!("{}/v1/media", self.base))
            .bearer_auth(&self.token)
            .header("content-type", MULTIPART_CONTENT_TYPE)
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let answer: Value = response.json().await?;
        if status != 201 || answer["thumbnails"]["large"]["url"].as_str().is_none() {
            bail!("upload answered {status}: {answer}");
        }
        Ok(start.elapsed())
    }
}

async fn user_token(http: &reqwest::Client, base: &str, admin: &str) -> anyhow::Result<String> {
    let id = format!("bench{:08x}", rand::random::<u32>());
    let created = http
        .post(format!("{base}/v1/users"))
        .bearer_auth(admin)
        .json(&json!({"id": id, "kind": "mobile", "display_name": "bench", "verified": true}))
        .send()
        .await?;
    if created.status() != 201 {
        bail!("cannot create the user: {}", created.text().await?);
    }
    let token: Value =
        http.post(format!("{base}/v1/users/{id}/tokens")).bearer_auth(admin).send().await?.json().await?;
    token["token"].as_str().map(str::to_owned).context("no token in the answer")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let http = reqwest::Client::new();
    let token = user_token(&http, &cli.base, &cli.admin_token).await?;
    let client = Client { http, base: cli.base.clone(), token };

    let photo = multipart("photo.jpg", "image/jpeg", &noisy_jpeg(2_000_000)?);
    let cpu_before = cli.server_pid.map(cpu_ticks).transpose()?;
    let start = Instant::now();
    let uploads: Vec<anyhow::Result<Duration>> = stream::iter(0..cli.photos)
        .map(|_| client.upload(photo.clone()))
        .buffer_unordered(cli.concurrency)
        .collect()
        .await;
    let elapsed = start.elapsed().as_secs_f64();
    let failed = uploads.iter().filter(|outcome| outcome.is_err()).count();
    if let Some(Err(error)) = uploads.iter().find(|outcome| outcome.is_err()) {
        eprintln!("first failure: {error}");
    }
    println!(
        "2 MB JPEG + 3 thumbnails: {} uploads ({failed} failed), concurrency {}, {:.1} uploads/s",
        cli.photos,
        cli.concurrency,
        (cli.photos - failed) as f64 / elapsed
    );
    if let (Some(pid), Some(before)) = (cli.server_pid, cpu_before) {
        let cpu = (cpu_ticks(pid)? - before) as f64 / TICKS_PER_SECOND;
        println!(
            "  server CPU: {cpu:.1} s in {elapsed:.1} s ({:.0} % of one core), {:.0} ms per upload",
            100.0 * cpu / elapsed,
            1000.0 * cpu / cli.photos as f64
        );
    }

    let large = multipart("photo.jpg", "image/jpeg", &noisy_jpeg(9_900_000)?);
    let mut latency = Histogram::<u64>::new(3)?;
    for _ in 0..cli.large {
        let took = client.upload(large.clone()).await?;
        latency.record(took.as_micros() as u64)?;
    }
    println!(
        "10 MB JPEG ({} bytes): {} uploads one at a time, time to answer p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        large.len(),
        cli.large,
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency.max() as f64 / 1000.0
    );
    Ok(())
}
