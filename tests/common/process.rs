//! The binary as a process: starting, stopping and waiting for it, and reading its output.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_rds-rotator");

pub fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

pub fn kill(mut child: Child) {
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
}

pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits for a child to exit, at most `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The command succeeded; its output says why not.
pub fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", text(out));
}

/// A finished command's exit status and output, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts `cmd` (a `rotate`) with `failpoint=sleep(ms)` and returns once it is there, still
/// running, with a thread that collects its stderr.
pub fn pausing_at(
    mut cmd: Command,
    failpoint: &str,
    ms: u64,
) -> (Child, std::thread::JoinHandle<String>) {
    let mut child = cmd
        .env(
            "ROTATOR_TEST_FAILPOINTS",
            format!("{failpoint}=sleep({ms})"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("reached") {
                let _ = tx.send(());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("rotate never reached {failpoint}"));
    (child, lines)
}

/// Writes a report line for `make test` to print after the run (cargo test hides the output of
/// passing tests), and prints it for `--nocapture` runs.
pub fn report(name: &str, line: &str) {
    // On an extra PostgreSQL major (scripts/test-majors) the line says which, and is kept apart.
    let (name, line) = match std::env::var("ROTATOR_TEST_PG_MAJOR") {
        Ok(major) => (
            format!("{name}-pg{major}"),
            format!("postgres {major}: {line}"),
        ),
        Err(_) => (name.to_owned(), line.to_owned()),
    };
    eprintln!("{line}");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reports");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.txt")), format!("{line}\n")).unwrap();
}
