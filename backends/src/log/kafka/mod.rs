//! The Kafka message log, through librdkafka (`rdkafka`, built from source with the crate):
//! the log of a distributed deployment, selected by `ESH_LOG=kafka://host:port[,host:port…]`.
//!
//! - Appends go through one idempotent producer with `acks=all`; `append` returns once
//!   the broker acknowledged every record (a 202 still means durable).
//! - Keys pick partitions with `murmur2_random`, Kafka's standard murmur2 partitioner (what
//!   Java clients use); the embedded log hashes keys with the same function, so a key has
//!   the same partition in both (docs/topics.md).
//! - Topics are created when missing (`CreateTopics`, with [`KafkaSettings::partitions`]
//!   and [`KafkaSettings::replication`]): every platform topic when the log opens, any
//!   other topic on its first append or subscription. With
//!   [`KafkaSettings::create_topics`] off, the brokers create them (auto-creation, with
//!   their own defaults), as librdkafka's mock cluster, which has no `CreateTopics`, does.
//! - Consumers: `consumer.rs` (priority, commits, rebalances).
//! - `end_offsets` and `lag` ask the brokers (`ListOffsets`, `OffsetFetch`) on every call.
//!
//! Every client the log makes (producer, consumers, the metadata client) gets the
//! librdkafka properties of [`KafkaSettings::properties`] last, so they override the
//! defaults set here (`ESH_KAFKA_LINGER_MS=5` → `linger.ms=5`).

mod consumer;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use self::consumer::KafkaConsumer;
use super::{LogConsumer, MessageLog, Record};
use crate::error::BackendError;

/// Settings of the Kafka log.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]` of the bootstrap brokers.
    pub brokers: String,
    /// Partitions of each topic the log creates.
    pub partitions: u32,
    /// Replication factor of each topic the log creates.
    pub replication: u16,
    /// librdkafka properties applied to every client last (`linger.ms` → `5`).
    pub properties: Vec<(String, String)>,
    /// Longest a metadata, offset or commit request to the brokers may take.
    pub request_timeout: Duration,
    /// Longest `subscribe` waits for the member's first partition assignment.
    pub join_timeout: Duration,
    /// Whether the log creates missing topics itself (`CreateTopics`, with `partitions`
    /// and `replication`); when not, it asks for their metadata as a producer, which makes
    /// brokers that auto-create topics (librdkafka's mock cluster) create them.
    pub create_topics: bool,
}

impl KafkaSettings {
    /// Settings for the brokers of a `kafka://host:port[,host:port…]` URL.
    pub fn from_url(url: &str) -> Result<KafkaSettings, BackendError> {
        let unsupported =
            |reason: &str| BackendError::UnsupportedUrl { url: url.to_owned(), reason: reason.to_owned() };
        let brokers = url.strip_prefix("kafka://").ok_or_else(|| unsupported("expected kafka://host:port"))?;
        let brokers = brokers.trim_end_matches('/');
        if brokers.is_empty()
            || brokers.split(',').any(|broker| {
                broker.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            })
        {
            return Err(unsupported("expected kafka://host:port[,host:port…]"));
        }
        Ok(KafkaSettings {
            brokers: brokers.to_owned(),
            partitions: 8,
            replication: 1,
            properties: Vec::new(),
            request_timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(60),
            create_topics: true,
        })
    }

    /// A client configuration: the brokers, `defaults`, then the configured properties.
    fn client(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

fn kafka_error(what: &str, error: KafkaError) -> BackendError {
    match error {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
            BackendError::Conflict(format!("{what}: the record exceeds the broker's size limit"))
        }
        error => BackendError::Unavailable(format!("{what}: {error}")),
    }
}

/// Runs a blocking librdkafka call on the blocking pool.
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|error| BackendError::Unavailable(format!("kafka call stopped: {error}")))
}

/// What the log and its consumers share.
struct Shared {
    settings: KafkaSettings,
    /// Metadata and offsets of any topic (no group; never creates topics).
    metadata: Arc<BaseConsumer>,
    admin: AdminClient<DefaultClientContext>,
    /// The one producer of every append.
    producer: FutureProducer,
    /// Topics known to exist.
    topics: Mutex<HashSet<String>>,
    /// One client per group whose committed offsets `lag` reads (never joins the group).
    offset_readers: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl Shared {
    /// Partition count of `topic`, `None` when the brokers do not know it.
    async fn partitions(&self, topic: &str) -> Result<Option<i32>, BackendError> {
        let metadata = self.metadata.clone();
        let (name, timeout) = (topic.to_owned(), self.settings.request_timeout);
        let found = blocking(move || {
            metadata.fetch_metadata(Some(&name), timeout).map(|found| {
                found
                    .topics()
                    .iter()
                    .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| t.partitions().len() as i32)
            })
        })
        .await?;
        found.map_err(|error| kafka_error("cannot read topic metadata", error))
    }

    /// Creates the topics of `names` that do not exist yet.
    async fn ensure_topics(&self, names: &[&str]) -> Result<(), BackendError> {
        let mut missing = Vec::new();
        for name in names {
            if self.topics.lock().unwrap_or_else(|p| p.into_inner()).contains(*name) {
                continue;
            }
            if self.partitions(name).await?.is_some() {
                self.topics.lock().unwrap_or_else(|p| p.into_inner()).insert((*name).to_owned());
            } else {
                missing.push(*name);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if self.settings.create_topics {
            self.create_topics(&missing).await?;
        } else {
            for name in &missing {
                let (producer, name, timeout) =
                    (self.producer.clone(), (*name).to_owned(), self.settings.request_timeout);
                blocking(move || producer.client().fetch_metadata(Some(&name), timeout).map(|_| ()))
                    .await?
                    .map_err(|error| kafka_error("cannot ask for a topic", error))?;
            }
        }
        self.topics.lock().unwrap_or_else(|p| p.into_inner()).extend(missing.iter().map(|name| (*name).to_owned()));
        Ok(())
    }

    /// Creates `names` with the configured partition count and replication factor (a
    /// topic created meanwhile by another process is fine).
    async fn create_topics(&self, names: &[&str]) -> Result<(), BackendError> {
        let (partitions, replication) = (self.settings.partitions as i32, i32::from(self.settings.replication));
        let new: Vec<NewTopic<'_>> =
            names.iter().map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(replication))).collect();
        let options = AdminOptions::new()
            .operation_timeout(Some(self.settings.request_timeout))
            .request_timeout(Some(self.settings.request_timeout));
        let results = self
            .admin
            .create_topics(&new, &options)
            .await
            .map_err(|error| kafka_error("cannot create topics", error))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BackendError::Unavailable(format!("cannot create topic {name}: {code}")))
                }
            }
        }
        Ok(())
    }

    /// The offset of `at` (`Offset::Beginning` or `Offset::End`) of each partition of `topic`.
    async fn offsets(&self, topic: &str, partitions: i32, at: Offset) -> Result<Vec<u64>, BackendError> {
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(topic, partition, at).map_err(|error| kafka_error("bad partition", error))?;
        }
        let (metadata, timeout) = (self.metadata.clone(), self.settings.request_timeout);
        let found = blocking(move || metadata.offsets_for_times(list, timeout)).await?;
        let found = found.map_err(|error| kafka_error("cannot read offsets", error))?;
        let mut offsets = vec![0; partitions as usize];
        for element in found.elements() {
            if let (Offset::Offset(offset), Some(slot)) =
                (element.offset(), offsets.get_mut(element.partition() as usize))
            {
                *slot = offset.max(0) as u64;
            }
        }
        Ok(offsets)
    }

    /// The committed offsets of `group` in each partition of `topic` (`None` where it never committed).
    async fn committed(&self, group: &str, topic: &str, partitions: i32) -> Result<Vec<Option<u64>>, BackendError> {
        let reader = {
            let mut readers = self.offset_readers.lock().unwrap_or_else(|p| p.into_inner());
            match readers.get(group) {
                Some(reader) => reader.clone(),
                None => {
                    let config = self.settings.client(&[("group.id", group), ("enable.auto.commit", "false")]);
                    let reader: Arc<BaseConsumer> = Arc::new(
                        config.create().map_err(|error| kafka_error("cannot create an offset reader", error))?,
                    );
                    readers.insert(group.to_owned(), reader.clone());
                    reader
                }
            }
        };
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(topic, partition);
        }
        let timeout = self.settings.request_timeout;
        let found = blocking(move || reader.committed_offsets(list, timeout)).await?;
        let found = found.map_err(|error| kafka_error("cannot read committed offsets", error))?;
        let mut committed = vec![None; partitions as usize];
        for element in found.elements() {
            if let (Offset::Offset(offset), Some(slot)) =
                (element.offset(), committed.get_mut(element.partition() as usize))
            {
                *slot = Some(offset.max(0) as u64);
            }
        }
        Ok(committed)
    }
}

/// The Kafka log (see the module docs).
pub struct KafkaMessageLog {
    shared: Arc<Shared>,
}

impl KafkaMessageLog {
    /// Connects to the brokers of `settings` and creates the platform's topics that are
    /// missing (`esh_common::topics::ALL`); fails with `Unavailable` when no broker answers
    /// within the request timeout.
    pub async fn open(settings: KafkaSettings) -> Result<KafkaMessageLog, BackendError> {
        if settings.partitions == 0 || settings.replication == 0 {
            return Err(BackendError::Conflict("kafka partitions and replication must be at least 1".into()));
        }
        let producer: FutureProducer = settings
            .client(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("partitioner", "murmur2_random"),
                ("linger.ms", "1"),
            ])
            .create()
            .map_err(|error| kafka_error("cannot create the kafka producer", error))?;
        let metadata: BaseConsumer = settings
            .client(&[("allow.auto.create.topics", "false")])
            .create()
            .map_err(|error| kafka_error("cannot create the kafka metadata client", error))?;
        let admin: AdminClient<DefaultClientContext> = settings
            .client(&[])
            .create()
            .map_err(|error| kafka_error("cannot create the kafka admin client", error))?;
        let log = KafkaMessageLog {
            shared: Arc::new(Shared {
                settings,
                metadata: Arc::new(metadata),
                admin,
                producer,
                topics: Mutex::new(HashSet::new()),
                offset_readers: Mutex::new(HashMap::new()),
            }),
        };
        log.check().await?;
        log.shared.ensure_topics(&esh_common::topics::ALL).await?;
        Ok(log)
    }
}

#[async_trait]
impl MessageLog for KafkaMessageLog {
    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<(), BackendError> {
        if records.is_empty() {
            return Ok(());
        }
        self.shared.ensure_topics(&[topic]).await?;
        // Enqueued in order (the idempotent producer keeps it per partition), then awaited.
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let mut next = FutureRecord::to(topic).key(record.key.as_bytes()).payload(record.value.as_slice());
            loop {
                match self.shared.producer.send_result(next) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        next = returned;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => return Err(kafka_error("cannot append", error)),
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(kafka_error("the broker refused an append", error)),
                Err(_) => return Err(BackendError::Unavailable("the kafka producer stopped".into())),
            }
        }
        Ok(())
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn LogConsumer>, BackendError> {
        let mut unique: Vec<&str> = Vec::with_capacity(topics.len());
        for topic in topics {
            if !unique.contains(topic) {
                unique.push(topic);
            }
        }
        self.shared.ensure_topics(&unique).await?;
        let mut counted = Vec::with_capacity(unique.len());
        for topic in unique {
            let partitions = self.wait_for_partitions(topic).await?;
            counted.push((topic.to_owned(), partitions));
        }
        Ok(Box::new(KafkaConsumer::join(&self.shared.settings, group, counted).await?))
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, BackendError> {
        let Some(partitions) = self.shared.partitions(topic).await? else { return Ok(Vec::new()) };
        self.shared.offsets(topic, partitions, Offset::End).await
    }

    async fn lag(&self, group: &str, topic: &str) -> Result<u64, BackendError> {
        let Some(partitions) = self.shared.partitions(topic).await? else { return Ok(0) };
        let ends = self.shared.offsets(topic, partitions, Offset::End).await?;
        let committed = self.shared.committed(group, topic, partitions).await?;
        // Where the group never committed, it starts at the oldest record still stored.
        let starts = if committed.iter().any(Option::is_none) {
            self.shared.offsets(topic, partitions, Offset::Beginning).await?
        } else {
            vec![0; ends.len()]
        };
        Ok(ends
            .iter()
            .zip(&committed)
            .zip(&starts)
            .map(|((end, committed), start)| end.saturating_sub(committed.unwrap_or(*start)))
            .sum())
    }

    async fn check(&self) -> Result<(), BackendError> {
        let (metadata, timeout) = (self.shared.metadata.clone(), self.shared.settings.request_timeout);
        let found = blocking(move || metadata.fetch_metadata(None, timeout).map(|m| m.brokers().len())).await?;
        match found {
            Ok(0) => Err(BackendError::Unavailable("no kafka broker answered".into())),
            Ok(_) => Ok(()),
            Err(error) => Err(kafka_error("kafka brokers unreachable", error)),
        }
    }
}

impl KafkaMessageLog {
    /// The partition count of `topic`, waiting (up to the request timeout) for a topic just
    /// created to show in the metadata.
    async fn wait_for_partitions(&self, topic: &str) -> Result<i32, BackendError> {
        let deadline = tokio::time::Instant::now() + self.shared.settings.request_timeout;
        loop {
            if let Some(partitions) = self.shared.partitions(topic).await? {
                return Ok(partitions);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::Unavailable(format!("topic {topic} has no partitions")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_urls_name_brokers() {
        assert_eq!(KafkaSettings::from_url("kafka://127.0.0.1:9092").unwrap().brokers, "127.0.0.1:9092");
        assert_eq!(KafkaSettings::from_url("kafka://a:1,b:2/").unwrap().brokers, "a:1,b:2");
        for bad in ["kafka://", "kafka://host", "kafka://:9092", "kafka://a:1,b", "kafka://a:port", "redis://a:1"] {
            assert!(matches!(KafkaSettings::from_url(bad), Err(BackendError::UnsupportedUrl { .. })), "{bad}");
        }
    }
}
