//! RabbitMQ plumbing: one connection per process, kept up for the life of the
//! process; the topology (declared idempotently on every connect); confirmed
//! JSON publishing; and the `traceparent` header on every message.
//!
//! **Reconnection.** [`Broker::start`] returns at once and a background task
//! owns the connection: it connects (capped exponential backoff with jitter),
//! declares the topology, publishes the live [`Link`], watches it, and when
//! it is lost starts over. A service never exits because the broker went
//! away: publishing without a link fails at once with
//! [`MqError::Unavailable`] (the caller answers 503 or retries later), and
//! consumers run under [`consume_forever`], which sets their channel and
//! private queues up again on every new link.
//!
//! Topology for namespace `ns` (default `maas`):
//! - `ns.jobs` (durable): api → scheduler, one message per submitted job.
//! - `ns.events` (durable): worker → scheduler heartbeats and slot releases.
//!   No dead-letter exchange: an expired heartbeat is worthless and vanishes.
//! - `ns.worker.<id>` (exclusive, auto-delete): scheduler → one worker.
//! - `ns.reply.<instance>` (exclusive, auto-delete): worker → the api instance
//!   holding a sync caller.
//! - `ns.cancel` (fanout exchange): api → every worker; each worker binds its
//!   own exclusive queue.
//! - `ns.dlx` (fanout exchange) → `ns.dead` (durable, bounded by length and
//!   age): poison messages and jobs that ran out of attempts.

use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use maas_core::backoff::Backoff;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub use lapin;

#[derive(Debug, thiserror::Error)]
pub enum MqError {
    #[error("rabbitmq error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("rabbitmq did not confirm the message")]
    Nacked,
    #[error("timed out talking to rabbitmq")]
    Timeout,
    #[error("rabbitmq is not connected")]
    Unavailable,
    #[error("invalid rabbitmq url: {0}")]
    Url(String),
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

/// How to reach the broker and shape the shared queues.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub url: String,
    pub namespace: String,
    pub connection_name: String,
    /// `x-expires` for the durable queues, so a test's queues vanish once unused.
    pub queue_expires_ms: Option<u32>,
    /// Quorum queues for the shared durable queues (a clustered broker).
    pub quorum: bool,
    /// AMQP heartbeat, seconds: how fast a silent broker is noticed.
    pub heartbeat_secs: u16,
    pub dead_letter_max: u32,
    pub dead_letter_ttl_ms: u32,
    /// How long a publish waits for the broker's confirm.
    pub confirm_timeout: Duration,
}

impl BrokerConfig {
    pub fn new(common: &maas_core::settings::CommonSettings, connection_name: &str) -> Self {
        Self {
            url: common.amqp_url.clone(),
            namespace: common.namespace.clone(),
            connection_name: connection_name.to_owned(),
            queue_expires_ms: common.amqp_queue_expires_ms,
            quorum: common.amqp_queue_type == "quorum",
            heartbeat_secs: common.amqp_heartbeat_secs.max(1),
            dead_letter_max: common.amqp_dead_letter_max,
            dead_letter_ttl_ms: common.amqp_dead_letter_ttl_ms,
            confirm_timeout: Duration::from_secs(5),
        }
    }
}

/// One live connection and its publishing channel (publisher confirms on).
/// Consumers open channels of their own on it.
pub struct Link {
    conn: Connection,
    publisher: Channel,
    /// Counts connections made by this process: 1 for the first, 2 after
    /// the first reconnect, ...
    pub generation: u64,
}

impl Link {
    pub fn is_connected(&self) -> bool {
        self.conn.status().connected() && self.publisher.status().connected()
    }

    /// Resolves once this link is down.
    pub async fn lost(&self) {
        while self.is_connected() {
            tokio::time::sleep(Duration::from_millis(200)).await;
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
}

/// The process's broker connection, kept up by a background task.
pub struct Broker {
    cfg: BrokerConfig,
    pub names: Names,
    link: watch::Sender<Option<Arc<Link>>>,
    closing: AtomicBool,
    /// Times the link was lost since start (a metric for tests and dashboards).
    losses: AtomicU64,
}

/// Whether an AMQP error is a 406 PRECONDITION_FAILED (a queue that exists
/// with other arguments).
fn precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 406)
}

impl Broker {
    /// Starts keeping a connection up; returns at once. Must be called on a
    /// Tokio runtime. Fails only on a malformed URL.
    pub fn start(cfg: BrokerConfig) -> Result<Arc<Self>> {
        let mut uri: AMQPUri = cfg.url.parse().map_err(MqError::Url)?;
        uri.query.heartbeat = Some(cfg.heartbeat_secs);
        if uri.query.connection_timeout.is_none() {
            uri.query.connection_timeout = Some(5_000);
        }
        let (link, _) = watch::channel(None);
        let broker = Arc::new(Self {
            names: Names::new(&cfg.namespace),
            cfg,
            link,
            closing: AtomicBool::new(false),
            losses: AtomicU64::new(0),
        });
        tokio::spawn(maintain(Arc::downgrade(&broker), uri));
        Ok(broker)
    }

    pub fn is_connected(&self) -> bool {
        self.link
            .borrow()
            .as_ref()
            .is_some_and(|l| l.is_connected())
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// How many times the connection was lost since start.
    pub fn losses(&self) -> u64 {
        self.losses.load(Ordering::Relaxed)
    }

    /// The live link, if there is one now.
    pub fn link(&self) -> Option<Arc<Link>> {
        self.link.borrow().clone().filter(|l| l.is_connected())
    }

    /// Waits for a live link; `None` once the broker is closing.
    pub async fn connected(&self) -> Option<Arc<Link>> {
        let mut rx = self.link.subscribe();
        loop {
            if self.is_closing() {
                return None;
            }
            if let Some(l) = rx.borrow_and_update().clone().filter(|l| l.is_connected()) {
                return Some(l);
            }
            // A link that is down but not yet replaced is noticed within 200 ms.
            let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
        }
    }

    /// Waits up to `limit` for a live link.
    pub async fn wait_connected(&self, limit: Duration) -> Option<Arc<Link>> {
        tokio::time::timeout(limit, self.connected())
            .await
            .ok()
            .flatten()
    }

    fn durable_args(&self, dead_letters: bool) -> FieldTable {
        let mut args = FieldTable::default();
        if dead_letters {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(self.names.dlx().into()),
            );
        }
        if let Some(ms) = self.cfg.queue_expires_ms {
            args.insert("x-expires".into(), AMQPValue::LongUInt(ms));
        }
        if self.cfg.quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        args
    }

    /// Declares a durable queue. One that exists with other arguments (an
    /// older version's) is replaced when `disposable` (its messages are
    /// worthless once stale), and otherwise used as it is, with a warning.
    async fn declare_durable(
        &self,
        conn: &Connection,
        name: &str,
        args: FieldTable,
        disposable: bool,
    ) -> Result<()> {
        let ch = conn.create_channel().await?;
        match ch
            .queue_declare(name.into(), QueueDeclareOptions::durable(), args.clone())
            .await
        {
            Ok(_) => {
                let _ = ch.close(200, "declared".into()).await;
                Ok(())
            }
            Err(e) if precondition_failed(&e) => {
                // The 406 closed that channel.
                let ch = conn.create_channel().await?;
                if disposable {
                    tracing::warn!(
                        queue = name,
                        "queue exists with other arguments; replacing it"
                    );
                    ch.queue_delete(name.into(), QueueDeleteOptions::default())
                        .await?;
                    ch.queue_declare(name.into(), QueueDeclareOptions::durable(), args)
                        .await?;
                } else {
                    tracing::warn!(
                        queue = name,
                        "queue exists with other arguments (an earlier setting); using it as it is"
                    );
                    let passive = QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    };
                    ch.queue_declare(name.into(), passive, FieldTable::default())
                        .await?;
                }
                let _ = ch.close(200, "declared".into()).await;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Declares the shared part of the topology; every declaration is
    /// idempotent, so all services do this on every connect.
    async fn declare_topology(&self, conn: &Connection) -> Result<()> {
        let ch = conn.create_channel().await?;
        let durable_ex = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for ex in [self.names.dlx(), self.names.cancel_exchange()] {
            ch.exchange_declare(
                ex.into(),
                ExchangeKind::Fanout,
                durable_ex,
                FieldTable::default(),
            )
            .await?;
        }
        let _ = ch.close(200, "declared".into()).await;
        let mut dead_args = self.durable_args(false);
        dead_args.insert(
            "x-max-length".into(),
            AMQPValue::LongUInt(self.cfg.dead_letter_max),
        );
        dead_args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongUInt(self.cfg.dead_letter_ttl_ms),
        );
        self.declare_durable(conn, &self.names.dead(), dead_args, false)
            .await?;
        let ch = conn.create_channel().await?;
        ch.queue_bind(
            self.names.dead().into(),
            self.names.dlx().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let _ = ch.close(200, "declared".into()).await;
        self.declare_durable(conn, &self.names.jobs(), self.durable_args(true), false)
            .await?;
        self.declare_durable(conn, &self.names.events(), self.durable_args(false), true)
            .await?;
        Ok(())
    }

    async fn open(&self, uri: &AMQPUri, generation: u64) -> Result<Link> {
        let props = ConnectionProperties::default()
            .with_connection_name(self.cfg.connection_name.as_str().into());
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect_uri(uri.clone(), props),
        )
        .await
        .map_err(|_| MqError::Timeout)??;
        let setup = async {
            self.declare_topology(&conn).await?;
            let publisher = conn.create_channel().await?;
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, MqError>(publisher)
        };
        match tokio::time::timeout(Duration::from_secs(10), setup).await {
            Ok(Ok(publisher)) => Ok(Link {
                conn,
                publisher,
                generation,
            }),
            Ok(Err(e)) => {
                let _ = conn.close(200, "setup failed".into()).await;
                Err(e)
            }
            Err(_) => {
                let _ = conn.close(200, "setup timed out".into()).await;
                Err(MqError::Timeout)
            }
        }
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

    /// Publishes to an exchange and waits for the broker's confirm. Without
    /// a live connection it fails at once with [`MqError::Unavailable`].
    pub async fn publish<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &T,
        opts: PublishOpts<'_>,
    ) -> Result<()> {
        let Some(link) = self.link() else {
            return Err(MqError::Unavailable);
        };
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
        let confirm = tokio::time::timeout(self.cfg.confirm_timeout, async {
            link.publisher
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

    /// Closes the connection cleanly and stops reconnecting (graceful shutdown).
    pub async fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let link = self.link.send_replace(None);
        if let Some(l) = link {
            let _ = l.conn.close(200, "shutdown".into()).await;
        }
    }
}

/// The background task behind [`Broker::start`]: connect, publish the link,
/// watch it, and start over when it is lost, until the broker is closed or
/// dropped.
async fn maintain(broker: Weak<Broker>, uri: AMQPUri) {
    let mut backoff = Backoff::reconnect();
    let mut generation = 0;
    let mut failures = 0u32;
    loop {
        let Some(b) = broker.upgrade() else { return };
        if b.is_closing() {
            return;
        }
        match b.open(&uri, generation + 1).await {
            Ok(link) => {
                generation += 1;
                backoff.reset();
                failures = 0;
                let link = Arc::new(link);
                if generation == 1 {
                    tracing::info!("connected to RabbitMQ");
                } else {
                    tracing::info!(generation, "reconnected to RabbitMQ");
                }
                b.link.send_replace(Some(link.clone()));
                drop(b);
                let since = Instant::now();
                // Hold no strong reference while waiting, so dropping the
                // broker ends this task.
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    match broker.upgrade() {
                        Some(b) if b.is_closing() => return,
                        Some(_) if link.is_connected() => {}
                        Some(b) => {
                            b.losses.fetch_add(1, Ordering::Relaxed);
                            b.link.send_replace(None);
                            tracing::warn!(
                                up_secs = since.elapsed().as_secs(),
                                "lost the RabbitMQ connection; reconnecting"
                            );
                            let _ = link.conn.close(200, "lost".into()).await;
                            break;
                        }
                        None => return,
                    }
                }
            }
            Err(e) => {
                drop(b);
                failures += 1;
                // Loud on the first failure, then once every ~30 tries.
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(error = %e, failures, "RabbitMQ unreachable; retrying");
                }
                backoff.wait().await;
            }
        }
    }
}

/// Runs a consumer for the life of the broker: waits for a live link, runs
/// `session` on it (set up a channel and private queues, consume until the
/// stream ends), and starts again on the next link. Returns once the broker
/// is closing.
pub async fn consume_forever<F, Fut>(broker: Arc<Broker>, what: &'static str, mut session: F)
where
    F: FnMut(Arc<Link>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut backoff = Backoff::reconnect();
    loop {
        let Some(link) = broker.connected().await else {
            return;
        };
        let started = Instant::now();
        match session(link.clone()).await {
            Ok(()) if broker.is_closing() => return,
            Ok(()) => tracing::info!(consumer = what, "consumer stopped; resubscribing"),
            Err(e) => tracing::warn!(consumer = what, error = %e, "consumer failed; resubscribing"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff.reset();
        }
        backoff.wait().await;
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
