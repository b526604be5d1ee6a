//! `aws-fault-proxy --upstream 127.0.0.1:5000 --rate 0.3`: prints its address, runs until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The emulator (loopback).
    #[arg(long)]
    upstream: SocketAddr,
    /// Share of requests that get a fault (throttling, 500 or a slow response, evenly).
    #[arg(long, default_value_t = 0.3)]
    rate: f64,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    slow_delay: Duration,
    /// A delay every request waits before it is forwarded (a faraway region's round trip).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    fixed_delay: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let proxy = aws_fault_proxy::start(
        args.listen,
        args.upstream,
        aws_fault_proxy::Faults {
            rate: args.rate,
            slow_delay: args.slow_delay,
            fixed_delay: args.fixed_delay,
        },
    )
    .await?;
    println!("http://{}", proxy.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
