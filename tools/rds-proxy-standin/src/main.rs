//! `rds-proxy-standin`: run the RDS Proxy stand-in on loopback. See the crate docs.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// A local stand-in for RDS Proxy's authentication (PostgreSQL), for testing password rotation.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (loopback; the stand-in has no TLS).
    #[arg(long, env = "STANDIN_LISTEN", default_value = "127.0.0.1:6432")]
    listen: SocketAddr,
    /// The PostgreSQL server behind the proxy.
    #[arg(long, env = "STANDIN_BACKEND_HOST", default_value = "127.0.0.1")]
    backend_host: String,
    #[arg(long, env = "STANDIN_BACKEND_PORT", default_value_t = 5432)]
    backend_port: u16,
    /// A user secret ({"username","password"}); repeat for each user.
    #[arg(
        long = "secret-id",
        env = "STANDIN_SECRET_IDS",
        value_delimiter = ',',
        required = true
    )]
    secret_ids: Vec<String>,
    /// How often the secrets are re-read: the lag before a changed secret is seen.
    #[arg(long, env = "STANDIN_REFRESH", default_value = "5s", value_parser = humantime::parse_duration)]
    refresh: Duration,
    /// Pool backend connections as RDS Proxy does: a client's Terminate keeps its backend
    /// connection for the next client of that user and database, who gets it without a new
    /// backend login (so a login can succeed with a password the database no longer accepts).
    #[arg(long, env = "STANDIN_POOL", value_parser = clap::builder::BoolishValueParser::new())]
    pool: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let standin = rds_proxy_standin::start(
        rds_proxy_standin::Config {
            listen: args.listen,
            backend_host: args.backend_host,
            backend_port: args.backend_port,
            secret_ids: args.secret_ids,
            refresh: args.refresh,
            pool: args.pool,
        },
        aws_sdk_secretsmanager::Client::new(&aws),
    )
    .await?;
    println!("{}", standin.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
