//! Reads against a large store: the conversation list and history pages (chat and
//! one-way), after seeding the store through the public API (chat sends and broadcasts).
//! With a fixed --prefix a later run reuses the seeded users and messages (--seed-* 0).

use anyhow::{bail, Context as _};
use futures::{stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

use super::{pid_note, round, since_s};
use crate::api::{self, ids, Account, UserSpec};
use crate::content::{self, Stamp};
use crate::ctx::Ctx;
use crate::report::Report;
use crate::stats::{lock, now_us, Hist, Stats};
use crate::traffic::Window;

#[derive(Debug, Clone, clap::Args, Serialize)]
pub(crate) struct ReadsArgs {
    /// Mobile users, each in one conversation with the business.
    #[arg(long, default_value_t = 1000)]
    pub(crate) conversations: usize,
    /// Chat messages to seed (business → mobile, spread over the conversations).
    #[arg(long, default_value_t = 0)]
    pub(crate) seed_chat: usize,
    /// Broadcasts to every mobile user to seed (one-way messages: conversations × this many).
    #[arg(long, default_value_t = 0)]
    pub(crate) seed_broadcasts: usize,
    /// Requests in flight while seeding chat messages.
    #[arg(long, default_value_t = 64)]
    pub(crate) seed_inflight: usize,
    /// Seconds to wait for the router to expand the seeded broadcasts.
    #[arg(long, default_value_t = 3600.0)]
    pub(crate) expansion_timeout: f64,
    /// Measured requests per endpoint.
    #[arg(long, default_value_t = 1000)]
    pub(crate) requests: usize,
    /// Requests in flight while measuring (closed loop).
    #[arg(long, default_value_t = 2)]
    pub(crate) concurrency: usize,
    /// Page size.
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: usize,
    /// Characters of message content.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
}

#[derive(Deserialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct Item {
    id: Option<String>,
    content: Option<String>,
}

/// Percent-encodes a query value (cursors are opaque).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

async fn get_page(ctx: &Ctx, path: &str, token: &str) -> anyhow::Result<Page<Item>> {
    let answer = ctx.http.get(path, token).await?;
    if answer.status.as_u16() != 200 {
        bail!("GET {path} answered {}", answer.code());
    }
    answer.json()
}

pub(crate) async fn reads(ctx: &Arc<Ctx>, args: &ReadsArgs) -> anyhow::Result<Report> {
    let n = args.conversations.clamp(1, 100_000);
    let business = api::accounts(ctx, vec![UserSpec::business(format!("{}-b0", ctx.prefix))], "business").await?.remove(0);
    let mobiles = api::accounts(ctx, ids(&ctx.prefix, "m", n).map(UserSpec::mobile).collect(), "mobiles").await?;
    ctx.stats.start_measuring(now_us());
    let mut report_figures: Vec<(String, serde_json::Value)> = Vec::new();
    let mut seed_chat_s = 0.0;

    if args.seed_chat > 0 {
        let started = now_us();
        ctx.progress.counted("seed chat", args.seed_chat as u64);
        stream::iter(0..args.seed_chat)
            .for_each_concurrent(args.seed_inflight.max(1), |i| {
                let ctx = ctx.clone();
                let to = mobiles[i % n].id.clone();
                let token = business.token.clone();
                async move {
                    let sent_us = now_us();
                    let text = content::content(ctx.run, Stamp { seq: i as u64, sched_us: sent_us, sent_us }, args.size);
                    let body = format!(r#"{{"to":"{to}","content":"{text}"}}"#).into_bytes();
                    ctx.stats.on_sent(sent_us, sent_us);
                    match ctx.http.post("/v1/chat/messages", &token, body).await {
                        Ok(answer) if answer.status.as_u16() == 202 => ctx.stats.on_accepted(sent_us, sent_us, 0),
                        Ok(answer) => ctx.stats.on_refused(sent_us, &answer.code()),
                        Err(error) => ctx.stats.on_error(sent_us, format_args!("{error:#}")),
                    }
                    ctx.progress.inc(1);
                }
            })
            .await;
        ctx.progress.finish();
        let seconds = since_s(started);
        report_figures.push(("seed_chat_s".into(), round(seconds, 2).into()));
        report_figures.push(("seed_chat_per_s".into(), round(Stats::get(&ctx.stats.accepted) as f64 / seconds.max(1e-9), 1).into()));
        seed_chat_s = seconds;
    }

    if args.seed_broadcasts > 0 {
        let started = now_us();
        let mut body_prefix = String::from(r#"{"recipient_ids":["#);
        for (i, m) in mobiles.iter().enumerate() {
            if i > 0 {
                body_prefix.push(',');
            }
            body_prefix.push_str(&format!("\"{}\"", m.id));
        }
        body_prefix.push_str(r#"],"content":""#);
        ctx.progress.counted("seed broadcasts", args.seed_broadcasts as u64);
        let mut last_content = String::new();
        for _ in 0..args.seed_broadcasts {
            let sent_us = now_us();
            last_content = content::content(ctx.run, Stamp { seq: ctx.next_seq(), sched_us: sent_us, sent_us }, args.size);
            let body = format!("{body_prefix}{last_content}\"}}").into_bytes();
            loop {
                let answer = ctx.http.post("/v1/broadcasts", &business.token, body.clone()).await?;
                match answer.status.as_u16() {
                    202 => break,
                    // Overloaded (the router is behind) or over a quota: wait and send it again.
                    429 | 503 => {
                        ctx.stats.on_refused(sent_us, &answer.code());
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    _ => bail!("seeding broadcast answered {}", answer.code()),
                }
            }
            ctx.progress.inc(1);
        }
        ctx.progress.finish();
        let answered_s = since_s(started);
        // The router expands broadcasts after the 202: wait until the last recipient has
        // the last broadcast's message.
        ctx.progress.timed("expanding", args.expansion_timeout);
        let last = mobiles.last().context("no mobile users")?;
        let path = "/v1/one-way-messages?limit=1";
        let deadline = now_us() + (args.expansion_timeout * 1e6) as u64;
        loop {
            let page = get_page(ctx, path, &last.token).await?;
            if page.items.last().and_then(|i| i.content.as_deref()) == Some(last_content.as_str()) {
                break;
            }
            if now_us() > deadline {
                bail!("broadcasts not expanded within {} s", args.expansion_timeout);
            }
            ctx.progress.set_position((since_s(started) * 10.0) as u64);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ctx.progress.finish();
        let seconds = since_s(started);
        report_figures.push(("seed_broadcasts_answered_s".into(), round(answered_s, 2).into()));
        report_figures.push(("seed_broadcasts_expanded_s".into(), round(seconds, 2).into()));
        report_figures.push(("seed_one_way_messages_per_s".into(), round((args.seed_broadcasts * n) as f64 / seconds.max(1e-9), 1).into()));
    }
    report_figures.push(("seeded_messages".into(), (Stats::get(&ctx.stats.accepted) as usize + args.seed_broadcasts * n).into()));

    // The business's conversations, and a second-page cursor for some of them.
    ctx.progress.println("listing conversations");
    let mut conversations = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/conversations?limit=200&cursor={}", encode(c)),
            None => "/v1/conversations?limit=200".to_owned(),
        };
        let page = get_page(ctx, &path, &business.token).await?;
        conversations.extend(page.items.into_iter().filter_map(|i| i.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    report_figures.push(("conversations".into(), conversations.len().into()));
    let mut second_pages = Vec::new();
    for id in conversations.iter().take(100) {
        let page = get_page(ctx, &format!("/v1/conversations/{id}/messages?limit={}", args.limit), &business.token).await?;
        if let Some(next) = page.next_cursor {
            second_pages.push(format!("/v1/conversations/{id}/messages?limit={}&cursor={}", args.limit, encode(&next)));
        }
    }

    // Measure each endpoint on its own.
    let window = Window::open(ctx);
    let limit = args.limit;
    let mobile_of = |i: usize| -> &Account { &mobiles[i % mobiles.len()] };
    let mut endpoints: Vec<(&str, Vec<(String, String)>)> = Vec::new();
    let pick = |len: usize| rand::random::<usize>() % len.max(1);
    let requests = args.requests.max(1);
    endpoints.push((
        "conversation_list_business",
        (0..requests).map(|_| (format!("/v1/conversations?limit={limit}"), business.token.clone())).collect(),
    ));
    endpoints.push((
        "conversation_list_mobile",
        (0..requests).map(|_| (format!("/v1/conversations?limit={limit}"), mobile_of(pick(n)).token.clone())).collect(),
    ));
    if !conversations.is_empty() {
        endpoints.push((
            "history_first_page",
            (0..requests)
                .map(|_| (format!("/v1/conversations/{}/messages?limit={limit}", conversations[pick(conversations.len())]), business.token.clone()))
                .collect(),
        ));
    }
    if !second_pages.is_empty() {
        endpoints.push(("history_second_page", (0..requests).map(|_| (second_pages[pick(second_pages.len())].clone(), business.token.clone())).collect()));
    }
    endpoints.push((
        "one_way_history_mobile",
        (0..requests).map(|_| (format!("/v1/one-way-messages?limit={limit}"), mobile_of(pick(n)).token.clone())).collect(),
    ));
    endpoints.push(("one_way_history_business", (0..requests).map(|_| (format!("/v1/one-way-messages?limit={limit}"), business.token.clone())).collect()));

    let mut all = Vec::new();
    let measure_started = now_us();
    for (name, calls) in endpoints {
        ctx.progress.counted(name, calls.len() as u64);
        let hist = Arc::new(Hist::new());
        let failures = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
        stream::iter(calls)
            .for_each_concurrent(args.concurrency.max(1), |(path, token)| {
                let ctx = ctx.clone();
                let hist = hist.clone();
                let failures = failures.clone();
                async move {
                    let started = now_us();
                    match ctx.http.get(&path, &token).await {
                        Ok(answer) if answer.status.as_u16() == 200 => {
                            hist.record(now_us() - started);
                            ctx.stats.aux.record(now_us() - started);
                        }
                        Ok(answer) => *lock(&failures).entry(answer.code()).or_default() += 1,
                        Err(error) => *lock(&failures).entry(format!("{error:#}")).or_default() += 1,
                    }
                    ctx.progress.inc(1);
                }
            })
            .await;
        ctx.progress.finish();
        all.push((name, hist.pcts(), lock(&failures).clone()));
    }
    let measure_s = since_s(measure_started);
    let measured = window.close(ctx);

    let mut report = Report::new(ctx, "reads", args, &measured, measure_s);
    report.accepted_per_s = if seed_chat_s > 0.0 { round(report.accepted as f64 / seed_chat_s, 1) } else { 0.0 };
    for (name, value) in report_figures {
        report.figure(&name, value);
    }
    for (name, pcts, failures) in all {
        report.figure(&format!("{name}_ms"), pcts);
        if !failures.is_empty() {
            report.figure(&format!("{name}_failures"), failures);
        }
    }
    report.figure("all_reads_ms", ctx.stats.aux.pcts());
    report.figure("reads_per_s", round(ctx.stats.aux.pcts().map_or(0, |p| p.n) as f64 / measure_s.max(1e-9), 1));
    report.notes.push(format!("closed loop, {} requests in flight; CPU per delivered message does not apply", args.concurrency.max(1)));
    report.notes.push("sent/accepted/accepted_per_s/ingest are the seeding chat sends; refused counts broadcasts sent again".to_owned());
    pid_note(ctx, &mut report.notes);
    Ok(report)
}
