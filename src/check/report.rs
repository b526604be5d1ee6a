//! What `check` found: one finding per line, and the verdict, for a person or as JSON.

use serde::Serialize;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: String,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub secret: String,
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// What would make a rotation fail, one line each.
    pub fn failures(&self) -> Vec<String> {
        self.findings
            .iter()
            .filter(|f| f.status == Status::Fail)
            .map(|f| format!("{}: {}", f.check, f.detail))
            .collect()
    }

    /// No problem that would make a rotation fail.
    pub fn ready(&self) -> bool {
        !self.findings.iter().any(|f| f.status == Status::Fail)
    }

    fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "secret": self.secret,
            "ready": self.ready(),
            "problems": self.count(Status::Fail),
            "warnings": self.count(Status::Warn),
            "findings": self.findings,
        })
    }

    /// For a person: one line per finding, then the verdict.
    pub fn to_text(&self) -> String {
        let width = self
            .findings
            .iter()
            .map(|f| f.check.len())
            .max()
            .unwrap_or(0);
        let mut out = format!("check of {}\n", self.secret);
        for f in &self.findings {
            out.push_str(&format!(
                "  {:<4}  {:<width$}  {}\n",
                f.status.label(),
                f.check,
                f.detail
            ));
        }
        let (problems, warnings) = (self.count(Status::Fail), self.count(Status::Warn));
        out.push_str(&if self.ready() {
            format!("ready to rotate ({warnings} warning(s))\n")
        } else {
            format!("NOT ready to rotate: {problems} problem(s), {warnings} warning(s)\n")
        });
        out
    }

    pub(super) fn push(
        &mut self,
        check: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
    ) {
        self.findings.push(Finding {
            check: check.into(),
            status,
            detail: detail.into(),
        });
    }
}
