//! RabbitMQ plumbing: one connection per process, the topology (declared
//! idempotently by every service at start), confirmed JSON publishing, and the
//! `traceparent` header on every message.
//!
//! Topology for namespace `ns` (default `maas`):
//! - `ns.jobs` (durable): api → scheduler, one message per submitted job.
//! - `ns.events` (durable): worker → scheduler heartbeats and slot releases.
//! - `ns.worker.<id>` (exclusive, auto-delete): scheduler → one worker.
//! - `ns.reply.<instance>` (exclusive, auto-delete): worker → the api instance
//!   holding a sync caller.
//! - `ns.cancel` (fanout exchange): api → every worker; each worker binds its
//!   own exclusive queue.
//! - `ns.dlx` (fanout exchange) → `ns.dead` (durable): poison and undeliverable
//!   messages, kept for inspection.

use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Serialize;
use std::time::Duration;

pub use lapin;

#[derive(Debug, thiserror::Error)]
pub enum MqError {
    #[error("rabbitmq error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("rabbitmq did not confirm the message")]
    Nacked,
    #[error("timed out talking to rabbitmq")]
    Timeout,
}

pub type Result<T, E = MqError> = std::result::Result<T, E>;

/// Queue and exchange names of one namespace.
#[derive(Debug, Clone)]
pub struct Names {
    ns: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        Self {
            ns: namespace.to_owned(),
        }
    }
    pub fn jobs(&self) -> String {
        format!("{}.jobs", self.ns)
    }
    pub fn events(&self) -> String {
        format!("{}.events", self.ns)
    }
    pub fn dlx(&self) -> String {
        format!("{}.dlx", self.ns)
    }
    pub fn dead(&self) -> String {
        format!("{}.dead", self.ns)
    }
    pub fn cancel_exchange(&self) -> String {
        format!("{}.cancel", self.ns)
    }
    pub fn worker(&self, worker_id: &str) -> String {
        format!("{}.worker.{worker_id}", self.ns)
    }
    pub fn reply(&self, instance: &str) -> String {
        format!("{}.reply.{instance}", self.ns)
    }
    pub fn cancel_queue(&self, worker_id: &str) -> String {
        format!("{}.cancel.{worker_id}", self.ns)
    }
}

/// The process's one broker connection and its publishing channel
/// (publisher confirms on). Consumers open channels of their own.
pub struct Broker {
    conn: Connection,
    publisher: Channel,
    pub names: Names,
    /// `x-expires` for the durable queues, so a test's queues vanish once unused.
    queue_expires_ms: Option<u32>,
}

impl Broker {
    pub async fn connect(
        url: &str,
        namespace: &str,
        connection_name: &str,
        queue_expires_ms: Option<u32>,
    ) -> Result<Self> {
        let props = ConnectionProperties::default().with_connection_name(connection_name.into());
        let conn = tokio::time::timeout(Duration::from_secs(10), Connection::connect(url, props))
            .await
            .map_err(|_| MqError::Timeout)??;
        let publisher = conn.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let broker = Self {
            conn,
            publisher,
            names: Names::new(namespace),
            queue_expires_ms,
        };
        broker.declare_topology().await?;
        Ok(broker)
    }

    pub fn is_connected(&self) -> bool {
        self.conn.status().connected()
    }

    fn durable_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.names.dlx().into()),
        );
        if let Some(ms) = self.queue_expires_ms {
            args.insert("x-expires".into(), AMQPValue::LongUInt(ms));
        }
        args
    }

    /// Declares the shared part of the topology; every declaration is
    /// idempotent, so all services do this at start.
    async fn declare_topology(&self) -> Result<()> {
        let ch = &self.publisher;
        let durable_ex = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            self.names.dlx().into(),
            ExchangeKind::Fanout,
            durable_ex,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.names.cancel_exchange().into(),
            ExchangeKind::Fanout,
            durable_ex,
            FieldTable::default(),
        )
        .await?;
        let mut dead_args = FieldTable::default();
        if let Some(ms) = self.queue_expires_ms {
            dead_args.insert("x-expires".into(), AMQPValue::LongUInt(ms));
        }
        ch.queue_declare(
            self.names.dead().into(),
            QueueDeclareOptions::durable(),
            dead_args,
        )
        .await?;
        ch.queue_bind(
            self.names.dead().into(),
            self.names.dlx().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        for q in [self.names.jobs(), self.names.events()] {
            ch.queue_declare(
                q.into(),
                QueueDeclareOptions::durable(),
                self.durable_args(),
            )
            .await?;
        }
        Ok(())
    }

    /// Resolves once the connection is lost. Services stop then (non-zero
    /// exit) so their supervisor restarts them against the recovered broker:
    /// nothing is lost, since Postgres holds every job.
    pub async fn disconnected(&self) {
        while self.is_connected() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A new channel with at most `prefetch` unacknowledged deliveries.
    pub async fn consumer_channel(&self, prefetch: u16) -> Result<Channel> {
        let ch = self.conn.create_channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        Ok(ch)
    }

    /// Declares a queue that lives as long as this connection (worker and reply queues).
    pub async fn declare_private_queue(&self, ch: &Channel, name: &str) -> Result<()> {
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(name.into(), opts, FieldTable::default())
            .await?;
        Ok(())
    }

    /// Binds a private queue to a fanout exchange.
    pub async fn bind(&self, ch: &Channel, queue: &str, exchange: &str) -> Result<()> {
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }

    /// Publishes `body` as persistent JSON to a queue (through the default
    /// exchange) and waits for the broker's confirm.
    pub async fn publish_to_queue<T: Serialize>(
        &self,
        queue: &str,
        body: &T,
        opts: PublishOpts<'_>,
    ) -> Result<()> {
        self.publish("", queue, body, opts).await
    }

    /// Publishes to an exchange and waits for the broker's confirm.
    pub async fn publish<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &T,
        opts: PublishOpts<'_>,
    ) -> Result<()> {
        let payload = serde_json::to_vec(body).unwrap_or_default();
        let mut headers = FieldTable::default();
        if let Some(tp) = opts.traceparent {
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(LongString::from(tp)),
            );
        }
        let mut props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(if opts.persistent { 2 } else { 1 })
            .with_headers(headers);
        if let Some(ms) = opts.expiration_ms {
            props = props.with_expiration(ShortString::from(ms.to_string()));
        }
        let confirm = tokio::time::timeout(Duration::from_secs(10), async {
            self.publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    &payload,
                    props,
                )
                .await?
                .await
        })
        .await
        .map_err(|_| MqError::Timeout)??;
        if confirm.is_nack() {
            return Err(MqError::Nacked);
        }
        Ok(())
    }

    /// Closes the connection cleanly (graceful shutdown).
    pub async fn close(&self) {
        let _ = self.conn.close(200, "shutdown".into()).await;
    }
}

/// Options of one publish.
#[derive(Debug, Clone, Copy)]
pub struct PublishOpts<'a> {
    pub traceparent: Option<&'a str>,
    pub persistent: bool,
    /// Per-message TTL: heartbeats are worthless once stale.
    pub expiration_ms: Option<u64>,
}

impl Default for PublishOpts<'_> {
    fn default() -> Self {
        Self {
            traceparent: None,
            persistent: true,
            expiration_ms: None,
        }
    }
}

impl<'a> PublishOpts<'a> {
    pub fn traced(traceparent: Option<&'a str>) -> Self {
        Self {
            traceparent,
            ..Default::default()
        }
    }
}

/// The `traceparent` header of a delivery, if any.
pub fn traceparent_of(props: &BasicProperties) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(&ShortString::from("traceparent"))? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}
