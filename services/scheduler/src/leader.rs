//! One active scheduler: the holder of a Postgres session-level advisory lock
//! on a dedicated connection. When that process dies, Postgres drops its
//! session and the lock; a standby polling for it takes over. An active
//! scheduler whose lock session is lost (Postgres restarted, the network
//! broke) stops scheduling at once and competes for the lock again.

use maas_core::backoff::Backoff;
use sqlx::{Connection, PgConnection};
use std::time::Duration;
use tokio::sync::watch;

/// Arbitrary but fixed: "maas" in ASCII.
const LOCK_KEY: i64 = 0x6d61_6173;

pub struct Leadership {
    conn: PgConnection,
}

impl Leadership {
    /// Waits until this process holds the lock, or `None` on shutdown.
    /// Postgres being away is waited out (capped backoff): a scheduler
    /// started before its database, or whose database restarted, competes
    /// again as soon as it is back.
    pub async fn acquire(
        url: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<Self>> {
        let mut announced = false;
        let mut backoff = Backoff::reconnect();
        let mut failures = 0u32;
        loop {
            let attempt = async {
                let mut conn =
                    tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(url))
                        .await
                        .map_err(|_| sqlx::Error::PoolTimedOut)??;
                loop {
                    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                        .bind(LOCK_KEY)
                        .fetch_one(&mut conn)
                        .await?;
                    if got {
                        return Ok::<_, sqlx::Error>(conn);
                    }
                    if !announced {
                        tracing::info!("another scheduler is active; standing by");
                        announced = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            };
            tokio::select! {
                got = attempt => match got {
                    Ok(conn) => return Ok(Some(Self { conn })),
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(30) {
                            tracing::warn!(error = %e, failures, "Postgres unreachable; waiting to compete for the scheduler lock");
                        }
                        tokio::select! {
                            _ = backoff.wait() => {}
                            _ = shutdown.changed() => return Ok(None),
                        }
                    }
                },
                _ = shutdown.changed() => return Ok(None),
            }
        }
    }

    /// False once the lock's session is gone: this process must stop scheduling.
    pub async fn still_held(&mut self) -> bool {
        let check = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut self.conn);
        matches!(
            tokio::time::timeout(Duration::from_secs(3), check).await,
            Ok(Ok(1))
        )
    }

    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK_KEY)
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}
