//! The result of one run: a table on the terminal and one JSON object a line (`--json FILE`
//! appends), so that runs can be compared.

use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use crate::ctx::Ctx;
use crate::stats::{lock, Pcts, Stats};
use crate::traffic::{Measured, Usage};

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) workload: String,
    pub(crate) label: Option<String>,
    pub(crate) at: String,
    pub(crate) server: String,
    pub(crate) server_pid: Option<u32>,
    /// Generator runtime worker threads (1 = current-thread runtime).
    pub(crate) generator_workers: usize,
    pub(crate) params: Value,
    /// The workload's headline figures.
    pub(crate) figures: Map<String, Value>,
    pub(crate) measured_s: f64,
    pub(crate) sent: u64,
    pub(crate) accepted: u64,
    pub(crate) refused: BTreeMap<String, u64>,
    pub(crate) errors: u64,
    pub(crate) accepted_per_s: f64,
    pub(crate) expected_deliveries: u64,
    pub(crate) delivered: u64,
    pub(crate) delivered_per_s: f64,
    pub(crate) lost: i64,
    pub(crate) duplicates: u64,
    pub(crate) foreign_messages: u64,
    pub(crate) status_frames: u64,
    pub(crate) disconnects: u64,
    pub(crate) connect_failures: u64,
    /// Answer latency (202 / `accepted`) from the moment the request was written.
    pub(crate) ingest_ms: Option<Pcts>,
    /// The same from the scheduled time (open loop: generator queueing included).
    pub(crate) ingest_from_schedule_ms: Option<Pcts>,
    /// Send → recipient socket, from the moment the message was written.
    pub(crate) e2e_ms: Option<Pcts>,
    /// Send → recipient socket, from the scheduled time.
    pub(crate) e2e_from_schedule_ms: Option<Pcts>,
    /// How late the generator wrote messages after their scheduled time.
    pub(crate) send_lateness_ms: Option<Pcts>,
    /// WebSocket connect + upgrade + hello.
    pub(crate) connect_ms: Option<Pcts>,
    pub(crate) server_usage: Option<Usage>,
    pub(crate) generator_usage: Usage,
    pub(crate) first_error: Option<String>,
    pub(crate) notes: Vec<String>,
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

impl Report {
    /// The generic part of a report from the run's counters and its window.
    pub(crate) fn new(ctx: &Ctx, workload: &str, params: &impl Serialize, measured: &Measured, send_s: f64) -> Self {
        let s = &ctx.stats;
        let delivered = Stats::get(&s.delivered);
        let expected = Stats::get(&s.expected);
        let last = Stats::get(&s.last_delivery_us);
        let from = Stats::get(&s.measure_from_us);
        let delivery_span_s = (last.saturating_sub(from)) as f64 / 1e6;
        Report {
            workload: workload.to_owned(),
            label: None,
            at: esh_common::Millis::now().to_rfc3339(),
            server: ctx.server.to_string(),
            server_pid: ctx.server_pid,
            generator_workers: 1,
            params: serde_json::to_value(params).unwrap_or(Value::Null),
            figures: Map::new(),
            measured_s: round(measured.elapsed_s, 3),
            sent: Stats::get(&s.sent),
            accepted: Stats::get(&s.accepted),
            refused: lock(&s.refused).clone(),
            errors: Stats::get(&s.errors),
            accepted_per_s: round(Stats::get(&s.accepted) as f64 / send_s.max(1e-9), 1),
            expected_deliveries: expected,
            delivered,
            delivered_per_s: if delivery_span_s > 0.0 { round(delivered as f64 / delivery_span_s, 1) } else { 0.0 },
            lost: expected as i64 - delivered as i64,
            duplicates: Stats::get(&s.duplicates),
            foreign_messages: Stats::get(&s.foreign),
            status_frames: Stats::get(&s.status_frames),
            disconnects: Stats::get(&s.disconnects),
            connect_failures: Stats::get(&s.connect_failures),
            ingest_ms: s.ingest.pcts(),
            ingest_from_schedule_ms: s.ingest_sched.pcts(),
            e2e_ms: s.e2e.pcts(),
            e2e_from_schedule_ms: s.e2e_sched.pcts(),
            send_lateness_ms: s.lateness.pcts(),
            connect_ms: s.connect.pcts(),
            server_usage: measured.server.clone(),
            generator_usage: measured.generator.clone(),
            first_error: lock(&s.first_error).clone(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn figure(&mut self, name: &str, value: impl Serialize) {
        self.figures.insert(name.to_owned(), serde_json::to_value(value).unwrap_or(Value::Null));
    }

    /// Appends the report as one JSON line to `path`.
    pub(crate) fn append_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(file, "{}", serde_json::to_string(self)?)?;
        Ok(())
    }

    /// The two-column table printed on the terminal, in the order of the fields (the
    /// parameters last).
    pub(crate) fn table(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        let Ordered(fields) = serde_json::from_str(&text).unwrap_or(Ordered(Vec::new()));
        let mut rows = Vec::new();
        for (key, value) in fields.iter().filter(|(key, _)| key != "params") {
            flatten(key, value, &mut rows);
        }
        for (key, value) in fields.iter().filter(|(key, _)| key == "params") {
            flatten(key, value, &mut rows);
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (key, text) in rows {
            out.push_str(&format!("{key:<width$}  {text}\n"));
        }
        out
    }
}

/// A JSON object's fields in their written order (serde_json's `Value` sorts them).
struct Ordered(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    fields.push(entry);
                }
                Ok(Ordered(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

fn is_pcts(map: &Map<String, Value>) -> bool {
    map.contains_key("p50") && map.contains_key("p99")
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn flatten(prefix: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Null => {}
        Value::Object(map) if is_pcts(map) => {
            let get = |k: &str| map.get(k).map(scalar).unwrap_or_default();
            rows.push((
                prefix.to_owned(),
                format!(
                    "p50 {}  p95 {}  p99 {}  p99.9 {}  max {}  (n {})",
                    get("p50"),
                    get("p95"),
                    get("p99"),
                    get("p999"),
                    get("max"),
                    get("n")
                ),
            ));
        }
        Value::Object(map) if map.is_empty() => {}
        Value::Object(map) => {
            for (key, inner) in map {
                let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&name, inner, rows);
            }
        }
        Value::Array(items) if items.is_empty() => {}
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), inner, rows);
            }
        }
        other => rows.push((prefix.to_owned(), scalar(other))),
    }
}
