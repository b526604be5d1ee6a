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
//! the new password by replication. So the guard asks each one, those RDS lists (`Discovery`)
//! and those the secret lists (`reader_hosts`), at the same time as the writer, each in a login
//! of its own. A reader that cannot be asked makes the rotation wait like a session in use: its
//! sessions are unknown.

use super::errors::RotationError;
use super::record::rfc3339;
use super::run::Run;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{warn, Instrument};

use super::ports::{
    Database, DbError, DbSession, InUse, OwnSession, RdsDb, RdsDirectory, RdsError, RdsTopology,
    SessionGroup,
};
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

/// RDS's answer about the database (its readers, its Blue/Green deployments), asked when a run
/// starts, beside its first calls, and awaited where it is needed: so it adds no wait of its
/// own. Kept once known: set_password may look again in the session of another source.
#[derive(Default)]
pub struct Discovery(Asked);

#[derive(Default)]
enum Asked {
    #[default]
    Not,
    Asking(tokio::task::JoinHandle<Result<Option<RdsTopology>, RdsError>>),
    Known(Result<Option<RdsTopology>, RdsError>),
}

/// The readers to look at, and what RDS could not cover (for a warning).
pub struct Found {
    pub readers: Vec<Endpoint>,
    pub notes: Vec<String>,
}

impl Discovery {
    pub fn start(rds: Arc<dyn RdsDirectory>, db: RdsDb) -> Self {
        let ask = async move { rds.topology(&db).await };
        let ask = crate::calls::carry(ask).instrument(tracing::Span::current());
        Self(Asked::Asking(tokio::spawn(ask)))
    }

    /// What RDS said (awaited once, then kept): `Ok(None)` when nothing was asked, or the
    /// database is not named in a way RDS knows.
    pub async fn topology(&mut self) -> &Result<Option<RdsTopology>, RdsError> {
        if let Asked::Asking(task) = &mut self.0 {
            let answer = task.await.unwrap_or_else(|e| {
                Err(RdsError::Unavailable(format!("the look ended early: {e}")))
            });
            self.0 = Asked::Known(answer);
        }
        match &self.0 {
            Asked::Known(answer) => answer,
            _ => &Ok(None),
        }
    }

    /// The readers RDS lists beside `listed` (the secret's `reader_hosts`), each once. A run
    /// that asked RDS nothing has only `listed`. A database RDS does not know, and replicas it
    /// cannot describe from here, are notes: the readers found are looked at all the same.
    pub async fn readers(
        &mut self,
        listed: &[Endpoint],
        writer: &Endpoint,
    ) -> Result<Found, RdsError> {
        let mut found = Found {
            readers: listed.to_vec(),
            notes: Vec::new(),
        };
        let topology = match self.topology().await {
            Ok(Some(t)) => t.clone(),
            Err(RdsError::NotFound(what)) => {
                found.notes.push(format!(
                    "RDS knows no database at {what}, so its readers are not found from RDS: list them in reader_hosts"
                ));
                return Ok(found);
            }
            Err(e) => return Err(e.clone()),
            Ok(None) => return Ok(found),
        };
        for r in topology.readers {
            let same = |l: &Endpoint| l.port == r.port && l.host.eq_ignore_ascii_case(&r.host);
            if !found.readers.iter().any(same) {
                found.readers.push(Endpoint {
                    dbname: writer.dbname.clone(),
                    ..r
                });
            }
        }
        if !topology.not_covered.is_empty() {
            found.notes.push(format!(
                "RDS names replicas it cannot describe from here ({}): list their endpoints in reader_hosts",
                topology.not_covered.join(", ")
            ));
        }
        Ok(found)
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        if let Asked::Asking(task) = &self.0 {
            task.abort();
        }
    }
}

/// What the guard found on every server that serves the idle user's logins.
pub struct Everywhere {
    /// The writer's look, in the session that will change the password.
    pub writer: Result<Vec<SessionGroup>, DbError>,
    /// The readers' sessions, each client named with its reader.
    pub readers: Vec<SessionGroup>,
    /// Readers that could not be asked, each with why.
    pub unchecked: Vec<String>,
    /// The readers asked: the secret's and RDS's.
    pub asked: Vec<Endpoint>,
    /// RDS could not list the readers (then only the secret's were asked).
    pub rds: Option<RdsError>,
    /// What RDS could not cover, for a warning.
    pub notes: Vec<String>,
}

/// Looks at `user`'s recent sessions on the writer (in `session`) and on every reader, the
/// secret's (`listed`) and the ones RDS lists (`discovery`), in two rounds that each run at
/// once on every server: logins and identities (the writer's in `session`), then the looks.
#[allow(clippy::too_many_arguments)]
pub async fn look_everywhere(
    session: &mut dyn DbSession,
    db: &Arc<dyn Database>,
    engine: Engine,
    writer_at: &Endpoint,
    listed: &[Endpoint],
    discovery: &mut Discovery,
    login: &Credentials,
    user: &str,
    window: Duration,
) -> Everywhere {
    // RDS was asked when the run started: its answer is usually in.
    let (asked, rds, notes) = match discovery.readers(listed, writer_at).await {
        Ok(found) => (found.readers, None, found.notes),
        Err(e) => (listed.to_vec(), Some(e), Vec::new()),
    };
    // Who the writer is, to know a reader that is the writer (MySQL: see `Readers::on_writer`).
    let ask_identity = engine != Engine::Postgres && !asked.is_empty();
    let who = async {
        match ask_identity {
            true => session.identity().await.ok().map(|i| i.key),
            false => None,
        }
    };
    let (writer_identity, readers) = tokio::join!(who, open_readers(db, engine, &asked, login));
    let mine = readers.on_writer(writer_identity.as_deref());
    let (writer, (on_readers, unchecked)) = tokio::join!(
        session.recent_sessions(user, window, &mine),
        readers.look(writer_identity.as_deref(), user, window)
    );
    Everywhere {
        writer,
        readers: on_readers,
        unchecked,
        asked,
        rds,
        notes,
    }
}

/// The readers, each logged in to (or why not), and on MySQL and MariaDB who each says it is:
/// the first half of the look (`open_readers`), run beside the writer's own question of who it is.
pub struct Readers(Vec<(Endpoint, Result<Opened, DbError>)>);

/// A reader's session, its server's identity, and the session's id there and whether that
/// server takes writes (MySQL, MariaDB).
struct Opened {
    session: Box<dyn DbSession>,
    identity: Option<String>,
    own: Option<OwnSession>,
}

impl Opened {
    /// This is the writer: the same server (Aurora's instances may share one identity, so also
    /// one that takes writes, which a reader does not).
    fn is_writer(&self, writer: Option<&str>) -> bool {
        self.identity.is_some()
            && self.identity.as_deref() == writer
            && self.own.is_some_and(|o| o.writable)
    }
}

/// Logs in to every reader at once, as `login` (a physical replica has the writer's users and
/// passwords); on MySQL and MariaDB also asks who each is. Each login and statement is bounded
/// by the database timeout.
pub async fn open_readers(
    db: &Arc<dyn Database>,
    engine: Engine,
    readers: &[Endpoint],
    login: &Credentials,
) -> Readers {
    let mut opens = JoinSet::new();
    for (i, at) in readers.iter().cloned().enumerate() {
        let (db, login) = (db.clone(), login.clone());
        let open = async move {
            let mut session = db.login(engine, &at, &login).await?;
            let (identity, own) = match engine {
                Engine::Postgres => (None, None),
                _ => (
                    session.identity().await.ok().map(|i| i.key),
                    session.own_session().await?,
                ),
            };
            Ok(Opened {
                session,
                identity,
                own,
            })
        };
        // Counted in the rotation's calls, logged in its span.
        let open = crate::calls::carry(open).instrument(tracing::Span::current());
        opens.spawn(async move { (i, open.await) });
    }
    let mut answers = Vec::new();
    while let Some(joined) = opens.join_next().await {
        if let Ok(answer) = joined {
            answers.push(answer);
        }
    }
    let mut out = Vec::new();
    for (i, at) in readers.iter().enumerate() {
        let opened = match answers.iter().position(|(j, _)| *j == i) {
            Some(k) => answers.swap_remove(k).1,
            None => Err(DbError::Unreachable {
                at: at.to_string(),
                reason: "the login ended early".into(),
            }),
        };
        out.push((at.clone(), opened));
    }
    Readers(out)
}

impl Readers {
    /// The ids of this tool's sessions that reached the writer itself: a reader endpoint with no
    /// reader behind it, an instance that a failover made the writer (`writer`: the writer's
    /// identity, MySQL and MariaDB). The writer's look leaves them out, or the rotation would
    /// find its own session of the idle user in use. (PostgreSQL's looks leave this tool's
    /// sessions out by their application name, and its replicas share the writer's identity.)
    pub fn on_writer(&self, writer: Option<&str>) -> Vec<u64> {
        self.0
            .iter()
            .filter_map(|(_, o)| o.as_ref().ok())
            .filter(|o| o.is_writer(writer))
            .filter_map(|o| o.own.map(|o| o.id))
            .collect()
    }

    /// The second half: every reader that is not the writer is asked for `user`'s recent
    /// sessions, at once, once per server: two names of one reader (an instance endpoint RDS
    /// lists, a name in `reader_hosts`) are looked at in one of their sessions, leaving the
    /// others out by their ids (MySQL, MariaDB). Returns the sessions found (each client named
    /// with its reader), and the readers that could not be asked, each with why.
    pub async fn look(
        self,
        writer: Option<&str>,
        user: &str,
        window: Duration,
    ) -> (Vec<SessionGroup>, Vec<String>) {
        let mut unchecked = Vec::new();
        let mut looks = JoinSet::new();
        // Sessions not looked in (on the writer, or a second name of a reader): kept open until
        // every look is done, since a closed one could linger in a process list, unexcluded.
        let mut kept = Vec::new();
        // Per server (by identity, where known): this tool's session ids there.
        let mut ids_on: std::collections::HashMap<String, Vec<u64>> = Default::default();
        let opened = self.0.iter().filter_map(|(_, o)| o.as_ref().ok());
        for o in opened.filter(|o| !o.is_writer(writer)) {
            if let (Some(id), Some(own)) = (&o.identity, o.own) {
                ids_on.entry(id.clone()).or_default().push(own.id);
            }
        }
        let mut looked_at = std::collections::HashSet::new();
        for (i, (at, opened)) in self.0.into_iter().enumerate() {
            match opened {
                Err(e) => unchecked.push((i, format!("{at}: {e}"))),
                Ok(o) if o.is_writer(writer) => kept.push(o.session),
                // Another name of a server looked at already.
                Ok(o)
                    if o.identity
                        .as_ref()
                        .is_some_and(|id| !looked_at.insert(id.clone())) =>
                {
                    kept.push(o.session)
                }
                Ok(mut o) => {
                    let user = user.to_owned();
                    let mine: Vec<u64> = o
                        .identity
                        .as_ref()
                        .and_then(|id| ids_on.get(id))
                        .into_iter()
                        .flatten()
                        .copied()
                        .filter(|id| o.own.is_none_or(|own| own.id != *id))
                        .collect();
                    let look = async move {
                        let found = o.session.recent_sessions(&user, window, &mine).await;
                        (at, found)
                    };
                    let look = crate::calls::carry(look).instrument(tracing::Span::current());
                    looks.spawn(async move { (i, look.await) });
                }
            }
        }
        let mut answers = Vec::new();
        while let Some(joined) = looks.join_next().await {
            match joined {
                Ok(answer) => answers.push(answer),
                Err(e) => {
                    unchecked.push((usize::MAX, format!("a reader: the look ended early ({e})")))
                }
            }
        }
        drop(kept);
        answers.sort_by_key(|(i, _)| *i);
        let mut groups = Vec::new();
        for (i, (at, found)) in answers {
            match found {
                Ok(found) => groups.extend(found.into_iter().map(|g| SessionGroup {
                    client: format!("{} on reader {at}", g.client),
                    ..g
                })),
                Err(e) => unchecked.push((i, format!("{at}: {e}"))),
            }
        }
        unchecked.sort();
        (groups, unchecked.into_iter().map(|(_, u)| u).collect())
    }
}

impl Run<'_> {
    /// The in-use guard (this module's `look_everywhere` and `verdict`), in the session that is about to change the password: an
    /// application that still logs in as this user would fail its next login.
    pub(super) async fn guard(
        &mut self,
        session: &mut dyn DbSession,
        login: &Credentials,
        user: &str,
    ) -> Result<(), RotationError> {
        if self.in_use == InUsePolicy::Off {
            return Ok(());
        }
        let window = self.rotator.settings.in_use.window;
        let current = self.current().await?.clone();
        // Every server that serves the user's logins: the writer in this session, the readers
        // (the secret's and RDS's) each in a login of its own.
        let found = look_everywhere(
            session,
            &self.rotator.db,
            current.engine,
            current.admin_endpoint(),
            &current.readers,
            &mut self.discovery,
            login,
            user,
            window,
        )
        .await;
        for note in &found.notes {
            warn!(secret = %self.arn(), %note, "readers the in-use guard may not see");
        }
        // RDS's answer failed the Blue/Green look first (`blue_green`): fail-closed here too.
        if let Some(source) = found.rds {
            return Err(RotationError::Rds { source });
        }
        let unchecked = found.unchecked;
        let mut groups = found.writer?;
        groups.extend(found.readers);
        let verdict = verdict(self.in_use, user, window, groups);
        let found = match &verdict {
            Verdict::Clear => None,
            Verdict::GoOn(f) | Verdict::Wait(f) => Some(f.clone()),
        };
        self.record.in_use = found
            .as_ref()
            .map(|f| format!("{}: {f}", rfc3339(self.rotator.clock.now_ms())));
        self.trace.with(|t| t.in_use.clone_from(&found));
        match verdict {
            Verdict::Clear => Ok(()),
            Verdict::GoOn(found) => {
                warn!(secret = %self.arn(), in_use = %found, policy = self.in_use.as_str(),
                      "the idle user is in use; changing its password anyway");
                Ok(())
            }
            Verdict::Wait(found) => Err(RotationError::UserInUse {
                secret: self.arn().to_owned(),
                found,
            }),
        }?;
        if unchecked.is_empty() {
            return Ok(());
        }
        let unchecked = unchecked.join("; ");
        if self.in_use == InUsePolicy::Warn {
            warn!(secret = %self.arn(), %user, %unchecked, policy = self.in_use.as_str(),
                  "could not look at the sessions on a reader; changing the password anyway");
            return Ok(());
        }
        Err(RotationError::ReaderUnchecked {
            secret: self.arn().to_owned(),
            user: user.to_owned(),
            unchecked,
        })
    }
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

    #[tokio::test]
    async fn what_rds_said_is_kept_for_a_second_look_and_a_database_it_does_not_know_is_a_note() {
        use crate::rotation::fakes::World;
        let at = |host: &str| Endpoint {
            host: host.into(),
            port: 5432,
            dbname: "shop".into(),
        };
        let w = World::default();
        w.state().rds = Some(Ok(RdsTopology {
            readers: vec![at("r1")],
            ..RdsTopology::default()
        }));
        let mut d = Discovery::start(Arc::new(w.clone()), RdsDb::Host("db".into()));
        for _ in 0..2 {
            let found = d.readers(&[at("r1"), at("r2")], &at("db")).await.unwrap();
            let hosts: Vec<&str> = found.readers.iter().map(|r| r.host.as_str()).collect();
            assert_eq!(hosts, ["r1", "r2"], "listed and found, each once");
        }
        assert_eq!(w.state().rds_calls, 1);
        w.state().rds = Some(Err(RdsError::NotFound("db (no instance db)".into())));
        let mut d = Discovery::start(Arc::new(w.clone()), RdsDb::Host("db".into()));
        let found = d.readers(&[at("r2")], &at("db")).await.unwrap();
        assert_eq!(found.readers.len(), 1);
        assert!(
            found.notes[0].contains("RDS knows no database at db"),
            "{:?}",
            found.notes
        );
    }

    #[test]
    fn asking_to_ignore_the_guard_turns_refuse_into_warn_only() {
        assert_eq!(InUsePolicy::Refuse.for_request(true), InUsePolicy::Warn);
        assert_eq!(InUsePolicy::Refuse.for_request(false), InUsePolicy::Refuse);
        assert_eq!(InUsePolicy::Off.for_request(true), InUsePolicy::Off);
    }
}
