//! What RDS says about the database: its Blue/Green deployments, and the readers the in-use
//! guard looks at.

use super::{CheckReport, Status};
use crate::rotation::ports::{RdsDb, RdsError, RdsTopology};
use crate::rotation::RotationError;
use crate::secret::{AppSecret, Endpoint};

/// Whether a Blue/Green deployment of the database makes the next rotation wait (see
/// `rotation::bluegreen`).
pub(super) fn check_blue_green(
    app: &AppSecret,
    seen: &Result<Option<RdsTopology>, RdsError>,
    discovery: bool,
    report: &mut CheckReport,
) {
    use crate::rotation::bluegreen::{verdict, Verdict};
    let db = app.rds_db();
    let (status, detail) = match seen {
        _ if !discovery => (
            Status::Warn,
            "off (ROTATOR_RDS_DISCOVERY=off): a Blue/Green deployment whose green would not get the new password is not looked for".to_owned(),
        ),
        Ok(None) => (
            // A proxy in front of an RDS database: the database is surely RDS, and unseen.
            if db.to_string().contains(".proxy-") {
                Status::Warn
            } else {
                Status::Ok
            },
            format!("not looked for: {db} names no RDS instance or cluster (dbInstanceIdentifier or dbClusterIdentifier in the secret would)"),
        ),
        Ok(Some(t)) => match verdict(&t.deployments) {
            Verdict::Clear => (
                Status::Ok,
                format!("no active Blue/Green deployment of {db}"),
            ),
            Verdict::GoOn(what) => (Status::Ok, what),
            Verdict::Wait { deployment, why } => (
                Status::Fail,
                format!("deployment {deployment}: {why}: the next rotation waits"),
            ),
        },
        Err(RdsError::NotFound(what)) if matches!(db, RdsDb::Host(_)) => (
            Status::Warn,
            format!("RDS knows no database at {what}: no deployment can be looked for"),
        ),
        Err(e) => (
            if matches!(e, RdsError::Unavailable(_)) {
                Status::Warn
            } else {
                Status::Fail
            },
            RotationError::Rds { source: e.clone() }.to_string(),
        ),
    };
    report.push("blue/green", status, detail);
}

/// The readers the guard asked and what RDS could not cover, or why RDS could not list them.
pub(super) type ReadersSeen = Result<(Vec<Endpoint>, Vec<String>), RdsError>;

/// Which servers besides the writer the guard looks at: the secret's `reader_hosts` and what RDS
/// lists for the database's endpoint.
pub(super) fn check_readers(
    app: &AppSecret,
    seen: ReadersSeen,
    discovery: bool,
    report: &mut CheckReport,
) {
    let host = &app.admin_endpoint().host;
    // RDS knows the database by the secret's identifier, or by an RDS endpoint's name.
    let db = app.rds_db();
    let named = !matches!(db, RdsDb::Host(_)) || crate::aws::rds::rds_name(host).is_some();
    match seen {
        Ok((_, notes)) if !notes.is_empty() => {
            report.push("readers", Status::Warn, notes.join("; "))
        }
        Ok((all, _)) if all.is_empty() && !discovery => report.push(
            "readers",
            Status::Warn,
            "none listed in reader_hosts, and RDS is not asked (ROTATOR_RDS_DISCOVERY=off): a reader of this database would not be looked at".to_owned(),
        ),
        Ok((all, _)) if all.is_empty() && named => report.push(
            "readers",
            Status::Ok,
            format!("none: the secret lists no reader_hosts, and RDS lists no reader or replica of {db}"),
        ),
        Ok((all, _)) if all.is_empty() => report.push(
            "readers",
            if host.contains(".proxy-") { Status::Warn } else { Status::Ok },
            format!(
                "none listed in reader_hosts; {host} is not an RDS instance or cluster endpoint, so none are found from RDS (name the database in direct_host, or list its readers)"
            ),
        ),
        Ok((all, _)) => {
            let named: Vec<String> = all
                .iter()
                .map(|r| {
                    let listed = app.readers.iter().any(|l| l == r);
                    format!("{r} ({})", if listed { "reader_hosts" } else { "RDS" })
                })
                .collect();
            report.push(
                "readers",
                Status::Ok,
                format!("the in-use guard also looks at {}", named.join(", ")),
            );
        }
        Err(e) => {
            let retryable = matches!(e, RdsError::Unavailable(_));
            report.push(
                "readers",
                if retryable {
                    Status::Warn
                } else {
                    Status::Fail
                },
                RotationError::Rds { source: e }.to_string(),
            );
        }
    }
}
