//! Blue/Green deployments: a password changed on blue must reach green, or the switchover hands
//! applications a database where AWSCURRENT no longer logs in.
//!
//! | engine, mode | does blue's ALTER ROLE / ALTER USER reach green? | the rotation |
//! |---|---|---|
//! | RDS for PostgreSQL within one major version (physical replication) | yes, by WAL | goes on |
//! | RDS for PostgreSQL across major versions, Aurora PostgreSQL (logical) | no: DDL and DCL are not replicated | waits |
//! | RDS for MySQL and MariaDB, Aurora MySQL (binlog) | yes, as statements | goes on |
//! | any, while a switchover is in progress | | waits |
//!
//! A deployment whose switchover completed, or that is being deleted, replicates nothing more:
//! it does not count.

use tracing::{info, warn};

use super::errors::RotationError;
use super::ports::RdsError;
use super::ports::{BlueGreen, Replication};
use super::run::Run;

/// How the deployment between a database of `engine` at version `blue` and its counterpart at
/// `green` (unknown: `None`) replicates.
pub fn replication(engine: &str, blue: &str, green: Option<&str>) -> Replication {
    match engine {
        "aurora-postgresql" => Replication::Logical,
        "postgres" => match green {
            Some(green) if major(blue) == major(green) => Replication::Physical,
            // Another major version, or one RDS did not say: logical is the safe guess.
            _ => Replication::Logical,
        },
        _ => Replication::Binlog,
    }
}

/// PostgreSQL's major version: `16` of `16.4`, `9.6` of `9.6.24`.
fn major(version: &str) -> &str {
    let mut parts = version.splitn(3, '.');
    let first = parts.next().unwrap_or_default();
    match (first, parts.next()) {
        ("9", Some(second)) => &version[..first.len() + 1 + second.len()],
        _ => first,
    }
}

/// What the deployments mean for a password change now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// None is active.
    Clear,
    /// Active, and the change reaches green: say so.
    GoOn(String),
    /// The change must wait: which deployment, and why.
    Wait { deployment: String, why: String },
}

pub fn verdict(deployments: &[BlueGreen]) -> Verdict {
    let active: Vec<&BlueGreen> = deployments
        .iter()
        .filter(|d| !matches!(d.status.as_str(), "SWITCHOVER_COMPLETED" | "DELETING"))
        .collect();
    let named = |d: &BlueGreen| format!("{} ({})", d.name, d.id);
    if let Some(d) = active.iter().find(|d| d.status == "SWITCHOVER_IN_PROGRESS") {
        return Verdict::Wait {
            deployment: named(d),
            why: "its switchover is in progress: the names move to green while it runs".into(),
        };
    }
    if let Some(d) = active.iter().find(|d| d.is_green) {
        return Verdict::Wait {
            deployment: named(d),
            why: format!(
                "this database is its green: a password changed here does not reach blue, and green's names change at the switchover (status {})",
                d.status
            ),
        };
    }
    // Replication that may be broken, or a switchover that failed half-way: nothing says the
    // change would reach green.
    if let Some(d) = active.iter().find(|d| {
        matches!(
            d.status.as_str(),
            "INVALID_CONFIGURATION" | "SWITCHOVER_FAILED"
        )
    }) {
        return Verdict::Wait {
            deployment: named(d),
            why: format!(
                "its status is {}: its replication may not carry the change to green",
                d.status
            ),
        };
    }
    if let Some(d) = active
        .iter()
        .find(|d| d.replication == Replication::Logical)
    {
        return Verdict::Wait {
            deployment: named(d),
            why: format!(
                "it keeps green in sync by logical replication, which does not carry password changes, so green would keep the old password and AWSCURRENT would fail there after the switchover (status {})",
                d.status
            ),
        };
    }
    match active.as_slice() {
        [] => Verdict::Clear,
        some => Verdict::GoOn(
            some.iter()
                .map(|d| {
                    let how = match d.replication {
                        Replication::Physical => "physical replication",
                        _ => "binlog replication",
                    };
                    format!(
                        "{} ({}, {how}: password changes reach green)",
                        named(d),
                        d.status
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

impl Run<'_> {
    /// A Blue/Green deployment of the database whose green would not get the new password, or
    /// whose switchover runs, makes the rotation wait (`verdict`). RDS was asked when the
    /// run started.
    pub(super) async fn blue_green(&mut self) -> Result<(), RotationError> {
        let named_by_secret = {
            let current = self.current().await?;
            current.rds_cluster.is_some() || current.rds_instance.is_some()
        };
        let arn = self.arn().to_owned();
        let deployments = match self.discovery.topology().await {
            Ok(Some(t)) => t.deployments.clone(),
            // Not an RDS name, or RDS not asked (`--rds-discovery off`).
            Ok(None) => return Ok(()),
            // An endpoint's name RDS does not know (another account, a name between owners in a
            // switchover): nothing to look at.
            Err(RdsError::NotFound(what)) if !named_by_secret => {
                warn!(secret = %arn, %what, "RDS knows no such database: no Blue/Green deployment can be looked for");
                return Ok(());
            }
            // The secret names a database RDS does not know, or RDS would not answer.
            Err(e) => return Err(RotationError::Rds { source: e.clone() }),
        };
        match verdict(&deployments) {
            Verdict::Clear => Ok(()),
            Verdict::GoOn(what) => {
                info!(secret = %self.arn(), deployments = %what, "Blue/Green deployment: the password change reaches green");
                Ok(())
            }
            Verdict::Wait { deployment, why } => Err(RotationError::BlueGreen {
                secret: self.arn().to_owned(),
                deployment,
                why,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(status: &str, replication: Replication) -> BlueGreen {
        BlueGreen {
            id: "bgd-1".into(),
            name: "upgrade".into(),
            status: status.into(),
            replication,
            is_green: false,
        }
    }

    #[test]
    fn the_replication_follows_the_engine_and_the_major_versions() {
        use Replication::*;
        let cases = [
            ("postgres", "15.4", Some("15.7"), Physical),
            ("postgres", "15.4", Some("16.3"), Logical),
            ("postgres", "9.6.22", Some("9.6.24"), Physical),
            ("postgres", "9.6.22", Some("10.21"), Logical),
            ("postgres", "15.4", None, Logical),
            ("aurora-postgresql", "15.4", Some("15.4"), Logical),
            ("mysql", "8.0.35", Some("8.4.3"), Binlog),
            ("mariadb", "10.11.8", Some("11.4.3"), Binlog),
            ("aurora-mysql", "8.0.mysql_aurora.3.05.2", None, Binlog),
        ];
        for (engine, blue, green, want) in cases {
            assert_eq!(
                replication(engine, blue, green),
                want,
                "{engine} {blue} -> {green:?}"
            );
        }
    }

    #[test]
    fn logical_replication_and_a_switchover_wait_and_the_rest_goes_on() {
        use Replication::*;
        assert_eq!(verdict(&[]), Verdict::Clear);
        assert!(
            matches!(verdict(&[deployment("AVAILABLE", Logical)]), Verdict::Wait { ref why, .. } if why.contains("logical"))
        );
        assert!(matches!(
            verdict(&[deployment("PROVISIONING", Logical)]),
            Verdict::Wait { .. }
        ));
        assert!(
            matches!(verdict(&[deployment("SWITCHOVER_IN_PROGRESS", Physical)]), Verdict::Wait { ref why, .. } if why.contains("switchover"))
        );
        assert!(
            matches!(verdict(&[deployment("AVAILABLE", Physical)]), Verdict::GoOn(ref s) if s.contains("physical replication"))
        );
        assert!(matches!(
            verdict(&[deployment("AVAILABLE", Binlog)]),
            Verdict::GoOn(_)
        ));
        assert!(matches!(
            verdict(&[deployment("INVALID_CONFIGURATION", Physical)]),
            Verdict::Wait { .. }
        ));
        assert!(matches!(
            verdict(&[deployment("SWITCHOVER_FAILED", Binlog)]),
            Verdict::Wait { .. }
        ));
        let green = BlueGreen {
            is_green: true,
            ..deployment("AVAILABLE", Physical)
        };
        assert!(
            matches!(verdict(&[green]), Verdict::Wait { ref why, .. } if why.contains("its green"))
        );
        assert_eq!(
            verdict(&[deployment("SWITCHOVER_COMPLETED", Logical)]),
            Verdict::Clear
        );
        assert_eq!(verdict(&[deployment("DELETING", Logical)]), Verdict::Clear);
    }
}
