//! Stand-ins in front of the stack: a relay to PostgreSQL that starts later, and fault proxies
//! in front of moto.

use std::time::Duration;

use super::stack;

/// A TCP relay to PostgreSQL on a port of its own, started later: a database that is "down"
/// until `start` is called.
pub struct Relay {
    pub port: u16,
}

impl Relay {
    pub fn reserve() -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Self {
            port: l.local_addr().unwrap().port(),
        }
    }

    pub async fn start(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the relay port is still free");
        let target = (stack().pg_host.clone(), stack().pg_port);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
    }
}

/// A fault proxy in front of moto: `faults` at random, and the refusals a test sets.
pub async fn fault_proxy(faults: aws_fault_proxy::Faults) -> aws_fault_proxy::FaultProxy {
    let upstream: std::net::SocketAddr = stack()
        .aws_endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("AWS_ENDPOINT_URL is http://host:port");
    aws_fault_proxy::start("127.0.0.1:0".parse().unwrap(), upstream, faults)
        .await
        .unwrap()
}

/// A fault proxy in front of moto with no random faults: only the refusals a test sets.
pub async fn refusing_proxy() -> aws_fault_proxy::FaultProxy {
    fault_proxy(aws_fault_proxy::Faults {
        rate: 0.0,
        slow_delay: Duration::ZERO,
        fixed_delay: Duration::ZERO,
    })
    .await
}
