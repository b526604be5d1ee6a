//! The idle user's login with its proxy secret, opened as the run begins so that it makes
//! progress while the first step waits on Secrets Manager.

use std::sync::Arc;

use tracing::Instrument;

use super::lease;
use super::ports::{Database, DbError, DbSession};
use crate::secret::{Credentials, Endpoint, Engine};

/// A database login opened ahead of its use, on its own task so that it makes progress while
/// the rotation waits on other calls. Dropped unused (a step failed first), it is cancelled.
/// It asks the server who it is first: the claims beside create_pending are keyed by that, so
/// the check costs no connection of its own.
pub(super) struct EarlyLogin(
    tokio::task::JoinHandle<Result<Box<dyn DbSession>, DbError>>,
    Option<lease::Identity>,
);

impl EarlyLogin {
    pub(super) fn start(
        db: Arc<dyn Database>,
        engine: Engine,
        at: Endpoint,
        login: Credentials,
    ) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let work = async move {
            let mut session = db.login(engine, &at, &login).await?;
            let _ = tx.send(session.identity().await);
            Ok(session)
        };
        Self(
            tokio::spawn(crate::calls::carry(work).instrument(tracing::Span::current())),
            Some(rx),
        )
    }

    pub(super) async fn session(mut self) -> Result<Box<dyn DbSession>, DbError> {
        match (&mut self.0).await {
            Ok(session) => session,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Cancelled: the runtime is shutting down.
                Err(_) => Err(DbError::Unreachable {
                    at: "the database".into(),
                    reason: "the login was cancelled".into(),
                }),
            },
        }
    }
}

impl Drop for EarlyLogin {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where the idle user's login with its proxy secret stands. set_password tries that source
/// first, and create_pending may have used the session to read the server's rules.
pub(super) enum ProxyLogin {
    /// None was opened ahead (no proxy secret, or a resumed or retried run): each step logs in
    /// itself.
    NotOpened,
    /// Opening on its own task since the run began.
    Opening(EarlyLogin),
    /// Opened, or refused, when create_pending waited for it: set_password takes it.
    Opened(Result<Box<dyn DbSession>, DbError>),
}

impl ProxyLogin {
    /// Takes what there is, leaving `NotOpened`.
    pub(super) fn take(&mut self) -> Self {
        std::mem::replace(self, Self::NotOpened)
    }

    /// The server's identity, as the login asked it first (once).
    pub(super) fn identity(&mut self) -> Option<lease::Identity> {
        match self {
            Self::Opening(early) => early.1.take(),
            _ => None,
        }
    }
}
