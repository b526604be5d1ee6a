//! The TLS line: what the logins taught about TLS, against the configured mode.

use std::collections::BTreeMap;

use super::{CheckReport, Status};
use crate::db::tls::TlsMode;
use crate::rotation::ports::DbError;
use crate::secret::Endpoint;

/// What the logins taught about TLS, per endpoint.
#[derive(Default)]
pub(super) struct TlsSeen {
    /// endpoint -> a connection got past the TLS handshake (or there is no TLS)
    handshakes: BTreeMap<String, Result<(), String>>,
}

impl TlsSeen {
    pub(super) fn note(&mut self, at: &Endpoint, result: &Result<(), DbError>) {
        let outcome = match result {
            Err(DbError::Tls { reason, .. }) => Err(reason.clone()),
            // Not reached: says nothing about TLS.
            Err(DbError::Unreachable { .. }) | Err(DbError::Unsupported(_)) => return,
            _ => Ok(()),
        };
        let entry = self
            .handshakes
            .entry(at.to_string())
            .or_insert(outcome.clone());
        if entry.is_ok() {
            *entry = outcome;
        }
    }
}

pub(super) fn check_tls(mode: TlsMode, seen: &TlsSeen, report: &mut CheckReport) {
    let failed: Vec<String> = seen
        .handshakes
        .iter()
        .filter_map(|(at, r)| r.as_ref().err().map(|e| format!("{at}: {e}")))
        .collect();
    let reached: Vec<&str> = seen.handshakes.keys().map(String::as_str).collect();
    if !failed.is_empty() {
        report.push("tls", Status::Fail, failed.join("; "));
        return;
    }
    match mode {
        TlsMode::VerifyFull if reached.is_empty() => report.push(
            "tls",
            Status::Warn,
            "verify-full, but no database answered to be verified",
        ),
        TlsMode::VerifyFull => report.push(
            "tls",
            Status::Ok,
            format!(
                "verify-full: certificate chain and host name verified at {}",
                reached.join(", ")
            ),
        ),
        TlsMode::Require => report.push(
            "tls",
            Status::Warn,
            "require: encrypted, but the server's certificate is not verified (use verify-full with ROTATOR_DB_CA_BUNDLE)",
        ),
        TlsMode::Disable => report.push(
            "tls",
            Status::Warn,
            "disable: database connections are not encrypted (use verify-full)",
        ),
    }
}
