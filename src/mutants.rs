//! Known defects, each behind a switch that only test builds can turn on: the simulator
//! (`crate::sim`) must find every one (`simulation mutants: K of K found`). A defect found
//! outside the simulator joins this list, with the schedule that finds it.
//!
//! In a release build `on` is `false`, a constant: the defective branches are dead code.

/// One known defect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mutant {
    /// The lease is taken once the holder's own expiry, on its wall clock, has passed on the
    /// taker's: two clocks compared.
    LeaseByWallClock,
    /// Claims and marks on users are keyed by the host name that reached the server, not by
    /// what the server says it is.
    ClaimsByHostName,
    /// Record writes are not conditional on the lease's fence.
    NoFence,
    /// The claim on the idle user is not taken.
    NoUserClaim,
    /// A rotation id taken over from another process (Secrets Manager's token) skips the
    /// "already written?" read in create_pending, and a version found under the token when the
    /// write is refused is not taken as the rotation's own.
    NoTakeoverRead,
    /// The in-use guard does not look.
    NoGuard,
    /// AWSCURRENT moves before the test step has passed.
    CurrentBeforeTest,
    /// A password change whose record write was lost is forgotten: the rotation's own pending
    /// version is not a known source once it stops at create_pending or set_password.
    ForgetsUnsavedPassword,
    /// The proxy secret's new version, written beside the database's change, goes straight to
    /// AWSCURRENT: before the guard let the change happen and the database took it.
    ProxyCurrentBesidePassword,
}

impl Mutant {
    pub const ALL: [Mutant; 9] = [
        Mutant::LeaseByWallClock,
        Mutant::ClaimsByHostName,
        Mutant::NoFence,
        Mutant::NoUserClaim,
        Mutant::NoTakeoverRead,
        Mutant::NoGuard,
        Mutant::CurrentBeforeTest,
        Mutant::ForgetsUnsavedPassword,
        Mutant::ProxyCurrentBesidePassword,
    ];
}

#[cfg(test)]
thread_local! {
    static ON: std::cell::Cell<Option<Mutant>> = const { std::cell::Cell::new(None) };
}

/// Whether `m` is switched on, on this thread.
#[inline]
pub fn on(m: Mutant) -> bool {
    #[cfg(test)]
    {
        ON.with(|on| on.get() == Some(m))
    }
    #[cfg(not(test))]
    {
        let _ = m;
        false
    }
}

/// Switches `m` on (or every mutant off) for this thread.
#[cfg(test)]
pub fn set(m: Option<Mutant>) {
    ON.with(|on| on.set(m));
}
