//! Logs go to stderr, as text or JSON; stdout is left to the commands' own output.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

use crate::cli::LogFormat;

/// `default` applies when RUST_LOG is unset. The AWS SDK's own debug output stays quiet unless
/// asked for by name.
pub fn init(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{default},aws_smithy_runtime=warn,aws_config=warn"))
    });
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
