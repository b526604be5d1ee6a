//! The grants and valid-until lines: whether the users are interchangeable, and whether a
//! password ends on a date.

use std::collections::BTreeMap;

use super::{CheckReport, Status};
use crate::rotation::Rotator;
use crate::secret::{AppSecret, Credentials, Endpoint, Engine};

pub(super) async fn check_grants(
    rotator: &Rotator,
    app: &AppSecret,
    at: &Endpoint,
    login: Option<&Credentials>,
    own: &BTreeMap<String, Credentials>,
    users: &[String],
    report: &mut CheckReport,
) {
    let Some(login) = login else {
        report.push(
            "grants",
            Status::Warn,
            "not compared: no user could log in to read them",
        );
        return;
    };
    let mut sets = Vec::new();
    for u in users {
        let reader = own.get(u).unwrap_or(login);
        match rotator.db.privileges(app.engine, at, reader, u).await {
            Ok(p) => sets.push((u.clone(), p)),
            Err(e) => {
                report.push("grants", Status::Warn, format!("not compared: {e}"));
                return;
            }
        }
    }
    check_valid_until(&sets, report);
    let (first, base) = &sets[0];
    let mut drift = Vec::new();
    let mut shared = Vec::new();
    for (u, p) in &sets[1..] {
        // adopt's PostgreSQL clone acts as the original: it holds every privilege of it by
        // membership, so only what it has besides counts.
        let arrangement = |lines: &[String], of: &str| {
            let member = [format!("member of {of}"), format!("member of \"{of}\"")];
            let acts = app.engine == Engine::Postgres
                && lines.iter().any(|l| member.contains(l))
                && lines.contains(&format!("setting role={of}"));
            acts.then(|| {
                let mut own: Vec<String> = member.to_vec();
                own.push(format!("setting role={of}"));
                own
            })
        };
        // Lines one user has and the other lacks; the one that acts as the other lacks nothing.
        let extra = |have: &[String], other: &[String], own: &[String]| -> Vec<String> {
            have.iter()
                .filter(|x| !other.contains(x) && !own.contains(x))
                .cloned()
                .collect()
        };
        let (only_first, only_other) = match (arrangement(p, first), arrangement(base, u)) {
            (Some(own), _) => {
                shared.push(format!("{u} acts as {first}"));
                (Vec::new(), extra(p, base, &own))
            }
            (None, Some(own)) => {
                shared.push(format!("{first} acts as {u}"));
                (extra(base, p, &own), Vec::new())
            }
            (None, None) => (extra(base, p, &[]), extra(p, base, &[])),
        };
        if !only_first.is_empty() {
            drift.push(format!("only {first}: {}", only_first.join(", ")));
        }
        if !only_other.is_empty() {
            drift.push(format!("only {u}: {}", only_other.join(", ")));
        }
    }
    if drift.is_empty() {
        report.push(
            "grants",
            Status::Ok,
            if shared.is_empty() {
                format!(
                    "{} have the same role memberships and privileges ({} entries)",
                    users.join(" and "),
                    base.len()
                )
            } else {
                format!(
                    "{} have the same privileges: {} (a member of it whose sessions start as it, by the role setting), so what either creates is owned by one role and usable by both",
                    users.join(" and "),
                    shared.join(", ")
                )
            },
        );
    } else {
        report.push(
            "grants",
            Status::Warn,
            format!(
                "the users differ, so applications would gain or lose access when AWSCURRENT moves: {}",
                drift.join("; ")
            ),
        );
    }
}

/// A VALID UNTIL ends a password on a date, whatever the rotation does: past it, the user cannot
/// log in (PostgreSQL says "password authentication failed", as for a wrong one).
pub(super) fn check_valid_until(sets: &[(String, Vec<String>)], report: &mut CheckReport) {
    let mut expired = Vec::new();
    let mut ending = Vec::new();
    for (user, lines) in sets {
        for line in lines {
            let Some(until) = line.strip_prefix("valid until ") else {
                continue;
            };
            match until.strip_suffix(" (expired)") {
                Some(at) => expired.push(format!("{user} expired at {at}")),
                None => ending.push(format!("{user} ends at {until}")),
            }
        }
    }
    if !expired.is_empty() {
        report.push(
            "valid until",
            Status::Fail,
            format!(
                "the password of {}: it cannot log in. A rotation with the master secret clears VALID UNTIL when it sets the new password",
                expired.join(", ")
            ),
        );
    } else if !ending.is_empty() {
        report.push(
            "valid until",
            Status::Warn,
            format!(
                "the password of {} (VALID UNTIL), whatever the rotation does, unless the master secret sets it (which clears VALID UNTIL; a user changing its own password does not)",
                ending.join(", ")
            ),
        );
    }
}
