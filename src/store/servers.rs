//! Running servers and the revocation records they have applied.
//!
//! Each server registers at start, acknowledges every revocation record it has applied to
//! its session cache (and heartbeats with the same call), and unregisters when it stops.
//! The admin CLI waits on these rows after a change, so "revoked" means "the running
//! servers answer accordingly now", not "within the poll interval".

use std::time::{Duration, Instant};

use super::db::args;

use super::{now, Result, Store};

/// A server that has not reported for this long (three missed heartbeats) is presumed
/// gone (killed, or unable to reach the database) and is not waited for.
pub const LIVE_FOR: i64 = 15;
/// How often a server reports at least (see `session::follow_revocations`).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often `await_servers` looks again.
const AWAIT_POLL: Duration = Duration::from_millis(25);

impl Store {
    /// Record a running server that has applied every revocation up to `seen_seq`.
    pub async fn register_server(
        &self,
        server_id: String,
        pid: u32,
        now: i64,
        seen_seq: i64,
    ) -> Result<()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO servers (id, pid, started_at, seen_seq, heartbeat_at)
                 VALUES (?1, ?2, ?3, ?4, ?3)
                 ON CONFLICT (id) DO UPDATE SET seen_seq = ?4, heartbeat_at = ?3",
                args![server_id, pid, now, seen_seq],
            )?;
            Ok(())
        })
        .await
    }

    /// The server has applied every revocation up to `seen_seq` and is alive at `now`.
    /// False when the server is not registered (its row was swept or deleted).
    pub async fn ack_server(&self, server_id: String, seen_seq: i64, now: i64) -> Result<bool> {
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE servers SET seen_seq = CASE WHEN seen_seq > ?2 THEN seen_seq ELSE ?2 END, heartbeat_at = ?3 WHERE id = ?1",
                args![server_id, seen_seq, now])?
                > 0)
        })
        .await
    }

    /// The server stopped.
    pub async fn unregister_server(&self, server_id: String) -> Result<()> {
        self.write(move |c| {
            c.execute("DELETE FROM servers WHERE id = ?1", args![server_id])?;
            Ok(())
        })
        .await
    }

    /// Wait until every live server has applied revocation `seq`, for at most `timeout`.
    /// Returns `(confirmed, unconfirmed)`: live servers that have applied it, and live
    /// servers that had not when the time ran out.
    pub async fn await_servers(&self, seq: i64, timeout: Duration) -> Result<(usize, usize)> {
        let deadline = Instant::now() + timeout;
        loop {
            let (done, waiting) = self
                .run(move |c| {
                    c.query_row(
                        "SELECT COUNT(*) FILTER (WHERE seen_seq >= ?1),
                                COUNT(*) FILTER (WHERE seen_seq < ?1)
                           FROM servers WHERE heartbeat_at >= ?2",
                        args![seq, now() - LIVE_FOR],
                        |r| Ok((r.get::<i64>(0)? as usize, r.get::<i64>(1)? as usize)),
                    )
                })
                .await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if waiting == 0 || left.is_zero() {
                return Ok((done, waiting));
            }
            tokio::time::sleep(AWAIT_POLL.min(left)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::testing::store;

    #[tokio::test]
    async fn waits_for_live_servers_only() {
        let (_d, s) = store();
        let t = now();
        assert_eq!(s.await_servers(1, Duration::ZERO).await.unwrap(), (0, 0));
        s.register_server("a".into(), 1, t, 0).await.unwrap();
        s.register_server("b".into(), 2, t, 3).await.unwrap();
        // Presumed gone: not waited for, not counted.
        s.register_server("dead".into(), 3, t - LIVE_FOR - 1, 0)
            .await
            .unwrap();
        let started = Instant::now();
        assert_eq!(
            s.await_servers(3, Duration::from_millis(100))
                .await
                .unwrap(),
            (1, 1)
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(s.ack_server("a".into(), 3, t).await.unwrap());
        assert_eq!(
            s.await_servers(3, Duration::from_secs(5)).await.unwrap(),
            (2, 0)
        );
        // Acknowledgements never go backwards.
        assert!(s.ack_server("a".into(), 1, t).await.unwrap());
        assert_eq!(s.await_servers(3, Duration::ZERO).await.unwrap(), (2, 0));
        s.unregister_server("a".into()).await.unwrap();
        assert!(!s.ack_server("a".into(), 4, t).await.unwrap());
        assert_eq!(s.await_servers(3, Duration::ZERO).await.unwrap(), (1, 0));
    }

    #[tokio::test]
    async fn an_acknowledgement_ends_the_wait_early() {
        let (_d, s) = store();
        s.register_server("a".into(), 1, now(), 0).await.unwrap();
        let s2 = s.clone();
        let ack = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s2.ack_server("a".into(), 7, now()).await.unwrap();
        });
        let started = Instant::now();
        assert_eq!(
            s.await_servers(7, Duration::from_secs(5)).await.unwrap(),
            (1, 0)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        ack.await.unwrap();
    }

    #[tokio::test]
    async fn the_sweep_forgets_servers_silent_for_a_day() {
        let (_d, s) = store();
        let t = now();
        s.register_server("old".into(), 1, t - 86_401, 0)
            .await
            .unwrap();
        s.register_server("new".into(), 2, t - 60, 0).await.unwrap();
        s.sweep(t, 0).await.unwrap();
        assert!(!s.ack_server("old".into(), 0, t).await.unwrap());
        assert!(s.ack_server("new".into(), 0, t).await.unwrap());
    }
}
