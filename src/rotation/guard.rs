//! The in-use guard: before the idle user's password changes, the database's own sessions say
//! whether an application still logs in as that user.
//!
//! With two users, credentials read just before one rotation stay valid until the next one, so
//! an application that still uses the idle user holds credentials from two rotations ago: its
//! cache outlived the minimum interval (an ECS task's `secrets`, a cache without refresh). A new
//! login of that application fails once the password changes.
//!
//! Only sessions that ran a statement within the window count (or run one now). Idle sessions do
//! not: RDS Proxy keeps its pooled backend connections of the idle user open after the last
//! application moved on, and they say nothing about who still has the old credentials. A session
//! that an application uses runs statements.
//!
//! The window (35 min by default) is longer than what can keep a client's old credentials
//! unseen while it still holds a connection:
//! - RDS Proxy closes a client connection idle for its IdleClientTimeout (30 min by default).
//!   A client still connected through the proxy ran its last statement less than that ago, on
//!   one of the proxy's backend connections, which shows it. When the proxy closes it, the
//!   client logs in again, with the credentials it holds: the login that would fail.
//! - Pools retire connections after their maximum lifetime (HikariCP: 30 min), so a pooled
//!   connection of a direct client is younger than that, and ran at least its first statement
//!   within the window.
//!
//! And it stays shorter than what separates the proxy's abandoned backend connections from a
//! rotation: clients read new credentials within an hour of a rotation (AWS's caching clients),
//! and the next rotation comes at least the minimum interval (2 h) after it, so the pool's
//! connections of the user they left have been idle for an hour or more.
//!
//! Readers and replicas keep sessions of their own, which the writer does not show, and take
//! the new password by replication. So the guard asks each one the secret lists
//! (`reader_hosts`), at the same time as the writer, each in a login of its own. A reader that
//! cannot be asked makes the rotation wait like a session in use: its sessions are unknown.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::Instrument;

use super::ports::{Database, DbError, InUse, RdsDirectory, RdsError, RdsTopology, SessionGroup};
use crate::secret::{Credentials, Endpoint, Engine};

/// What the guard does with a user in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InUsePolicy {
    /// The rotation stays in progress before the password changes, and a later run retries.
    Refuse,
    /// The rotation goes on; the finding is logged, recorded and reported.
    Warn,
    /// No look at the sessions.
    Off,
}

impl InUsePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            InUsePolicy::Refuse => "refuse",
            InUsePolicy::Warn => "warn",
            InUsePolicy::Off => "off",
        }
    }

    /// A request that asks to ignore the guard still looks, and warns.
    pub fn for_request(self, ignore_in_use: bool) -> InUsePolicy {
        match self {
            InUsePolicy::Refuse if ignore_in_use => InUsePolicy::Warn,
            other => other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUseGuard {
    pub policy: InUsePolicy,
    /// A session counts when it ran a statement this recently.
    pub window: Duration,
}

/// RDS Proxy's default IdleClientTimeout (30 min), and a margin (see the module's docs).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(35 * 60);

impl Default for InUseGuard {
    fn default() -> Self {
        Self {
            policy: InUsePolicy::Refuse,
            window: DEFAULT_WINDOW,
        }
    }
}

/// What the sessions mean for the rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clear,
    /// In use, and the policy lets the rotation go on.
    GoOn(InUse),
    /// In use, and the rotation waits.
    Wait(InUse),
}

pub fn verdict(
    policy: InUsePolicy,
    user: &str,
    window: Duration,
    groups: Vec<SessionGroup>,
) -> Verdict {
    if groups.is_empty() {
        return Verdict::Clear;
    }
    let found = InUse {
        user: user.to_owned(),
        window,
        groups,
    };
    match policy {
        InUsePolicy::Refuse => Verdict::Wait(found),
        InUsePolicy::Warn | InUsePolicy::Off => Verdict::GoOn(found),
    }
}

/// RDS's answer about the database's readers, asked when a run starts, beside its first calls,
/// and awaited by the guard: so it adds no wait of its own.
#[derive(Default)]
pub struct Discovery(Option<tokio::task::JoinHandle<Result<Option<RdsTopology>, RdsError>>>);

impl Discovery {
    pub fn start(rds: Arc<dyn RdsDirectory>, host: String) -> Self {
        let ask = async move { rds.topology(&host).await };
        let ask = crate::calls::carry(ask).instrument(tracing::Span::current());
        Self(Some(tokio::spawn(ask)))
    }

    /// Asked, and not yet awaited.
    pub fn started(&self) -> bool {
        self.0.is_some()
    }

    /// The readers RDS lists beside `listed` (the secret's `reader_hosts`), each once. A run
    /// that started none, or asked already, has only `listed`.
    pub async fn readers(
        &mut self,
        listed: &[Endpoint],
        writer: &Endpoint,
    ) -> Result<Vec<Endpoint>, RdsError> {
        let found = match self.0.take() {
            None => None,
            Some(task) => task
                .await
                .map_err(|e| RdsError::Unavailable(format!("the look ended early: {e}")))??,
        };
        let mut all = listed.to_vec();
        for r in found.map(|t| t.readers).unwrap_or_default() {
            let same = |l: &Endpoint| l.port == r.port && l.host.eq_ignore_ascii_case(&r.host);
            if !all.iter().any(same) {
                all.push(Endpoint {
                    dbname: writer.dbname.clone(),
                    ..r
                });
            }
        }
        Ok(all)
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// What each reader said, in the order asked: the server's identity (MySQL and MariaDB) and the
/// sessions found, or why it could not be asked.
#[derive(Debug, Default)]
pub struct OnReaders(Vec<(Endpoint, Result<ReaderLook, DbError>)>);

/// A reader's identity (MySQL, MariaDB) and the sessions it showed.
type ReaderLook = (Option<String>, Vec<SessionGroup>);

impl OnReaders {
    /// The sessions found (each client named with its reader), and the readers that could not
    /// be asked, each with why. A reader that says it is the writer (`writer`: its identity) is
    /// left out: a reader endpoint that reaches the writer, an instance that became the writer
    /// in a failover. Its sessions are the writer's look's, and on MySQL they include the
    /// session about to change the password, which would count as in use. (PostgreSQL's
    /// replicas share the writer's identity, and its looks leave this tool's sessions out.)
    pub fn found(self, writer: Option<&str>) -> (Vec<SessionGroup>, Vec<String>) {
        let (mut groups, mut unchecked) = (Vec::new(), Vec::new());
        for (at, look) in self.0 {
            match look {
                Ok((Some(id), _)) if Some(id.as_str()) == writer => {}
                Ok((_, found)) => groups.extend(found.into_iter().map(|g| SessionGroup {
                    client: format!("{} on reader {at}", g.client),
                    ..g
                })),
                Err(e) => unchecked.push(format!("{at}: {e}")),
            }
        }
        (groups, unchecked)
    }
}

/// Asks every reader at once for `user`'s recent sessions, each in a login of its own as
/// `login` (a physical replica has the writer's users and passwords); on MySQL and MariaDB also
/// who it is (see `OnReaders::found`). Each login and statement is bounded by the database
/// timeout.
pub async fn on_readers(
    db: &Arc<dyn Database>,
    engine: Engine,
    readers: &[Endpoint],
    login: &Credentials,
    user: &str,
    window: Duration,
) -> OnReaders {
    let mut asks = JoinSet::new();
    for (i, at) in readers.iter().cloned().enumerate() {
        let (db, login, user) = (db.clone(), login.clone(), user.to_owned());
        let ask = async move {
            let mut session = db.login(engine, &at, &login).await?;
            let identity = match engine {
                Engine::Postgres => None,
                _ => session.identity().await.ok().map(|i| i.key),
            };
            let found = session.recent_sessions(&user, window).await?;
            Ok((identity, found))
        };
        // Counted in the rotation's calls, logged in its span.
        let ask = crate::calls::carry(ask).instrument(tracing::Span::current());
        asks.spawn(async move { (i, ask.await) });
    }
    let mut answers = Vec::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok(answer) = joined {
            answers.push(answer);
        }
    }
    let mut out = OnReaders::default();
    for (i, at) in readers.iter().enumerate() {
        let look = match answers.iter().position(|(j, _)| *j == i) {
            Some(k) => answers.swap_remove(k).1,
            None => Err(DbError::Unreachable {
                at: at.to_string(),
                reason: "the look ended early".into(),
            }),
        };
        out.0.push((at.clone(), look));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(n: u32) -> SessionGroup {
        SessionGroup {
            client: "10.0.1.5".into(),
            application: "orders-api".into(),
            sessions: n,
        }
    }

    #[test]
    fn no_recent_session_is_clear_whatever_the_policy() {
        for p in [InUsePolicy::Refuse, InUsePolicy::Warn] {
            assert_eq!(verdict(p, "app_b", DEFAULT_WINDOW, vec![]), Verdict::Clear);
        }
    }

    #[test]
    fn refuse_waits_and_names_clients_applications_and_counts() {
        let Verdict::Wait(found) = verdict(
            InUsePolicy::Refuse,
            "app_b",
            DEFAULT_WINDOW,
            vec![group(2), group(1)],
        ) else {
            panic!("refuse waits");
        };
        assert_eq!(found.sessions(), 3);
        let text = found.to_string();
        assert!(
            text.contains("app_b") && text.contains("3 session(s)"),
            "{text}"
        );
        assert!(
            text.contains("10.0.1.5 (orders-api)") && text.contains("35m"),
            "{text}"
        );
    }

    #[test]
    fn asking_to_ignore_the_guard_turns_refuse_into_warn_only() {
        assert_eq!(InUsePolicy::Refuse.for_request(true), InUsePolicy::Warn);
        assert_eq!(InUsePolicy::Refuse.for_request(false), InUsePolicy::Refuse);
        assert_eq!(InUsePolicy::Off.for_request(true), InUsePolicy::Off);
    }
}
