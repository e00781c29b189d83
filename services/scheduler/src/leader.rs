//! One active scheduler: the holder of a Postgres session-level advisory lock
//! on a dedicated connection. When that process dies, Postgres drops its
//! session and the lock; a standby polling for it takes over.

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
    pub async fn acquire(
        url: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<Self>> {
        let mut conn = PgConnection::connect(url).await?;
        let mut announced = false;
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK_KEY)
                .fetch_one(&mut conn)
                .await?;
            if got {
                return Ok(Some(Self { conn }));
            }
            if !announced {
                tracing::info!("another scheduler is active; standing by");
                announced = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
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
