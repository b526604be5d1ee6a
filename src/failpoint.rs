//! Test-only failpoints, for crash tests against the real binary.
//!
//! `ROTATOR_TEST_FAILPOINTS="after:set_password=exit;inside:update_proxy=pause"` makes the process
//! exit abruptly (`exit`: no cleanup, no record write, like SIGKILL), stop and wait to be killed
//! (`pause`), or wait and go on (`sleep(MS)`) when it reaches that point. Each hit is announced on stderr as
//! `failpoint <name> reached`. Never set this in production: it exists so that tests can kill a
//! rotation at an exact instant. When unset, a hit costs one lookup in an empty list.
//!
//! Points: `before:<step>` and `after:<step>` (the step's effect is done, its record not yet
//! written), `inside:set_password` (after ALTER ROLE), `inside:update_proxy` (after the proxy
//! secret is written); for adopt, `before:adopt.lease`, `after:adopt.<step>` and
//! `inside:adopt.clone_user` (after the first statement).

use std::sync::OnceLock;
use std::time::Duration;

pub const ENV: &str = "ROTATOR_TEST_FAILPOINTS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Exit,
    Pause,
    Sleep(u64),
}

fn configured() -> &'static [(String, Action)] {
    static POINTS: OnceLock<Vec<(String, Action)>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var(ENV)
            .unwrap_or_default()
            .split(';')
            .filter_map(|spec| {
                let (name, action) = spec.trim().split_once('=')?;
                let action = match action.trim() {
                    "exit" => Action::Exit,
                    "pause" => Action::Pause,
                    other => Action::Sleep(
                        other
                            .strip_prefix("sleep(")?
                            .strip_suffix(')')?
                            .parse()
                            .ok()?,
                    ),
                };
                Some((name.trim().to_owned(), action))
            })
            .collect()
    })
}

/// Runs the failpoint `name` if one is configured.
pub async fn hit(name: &str) {
    let Some((_, action)) = configured().iter().find(|(n, _)| n == name) else {
        return;
    };
    eprintln!("failpoint {name} reached");
    match action {
        Action::Exit => std::process::exit(86),
        Action::Pause => loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        },
        Action::Sleep(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
    }
}
