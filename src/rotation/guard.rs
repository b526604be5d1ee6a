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

use std::time::Duration;

use super::ports::{InUse, SessionGroup};

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

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(15 * 60);

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
            text.contains("10.0.1.5 (orders-api)") && text.contains("15m"),
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
