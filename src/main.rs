//! Wiring only: parse, set up logging, run the command, report the exit status.

use clap::Parser;
use rds_rotator::{app, cli::Cli, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init(
        cli.settings.log_format,
        app::default_log_level(&cli.command),
    );
    app::run(cli).await
}
