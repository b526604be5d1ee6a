//! The RDS API, read only: RDS Proxy's list of secrets (DescribeDBProxies) for `check` and
//! `adopt`, and the instances behind a database's endpoint (DescribeDBInstances,
//! DescribeDBClusters) for the in-use guard.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_rds::types::{DbInstance, Filter};
use aws_sdk_rds::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use super::failure;
use crate::adopt::ports::{ProxyAuth, ProxyDirectory, ProxyError};
use crate::rotation::ports::{RdsDirectory, RdsError, RdsTopology};
use crate::secret::Endpoint;

/// How long an answer about a database is kept: readers and deployments come and go in minutes
/// (an instance takes longer than this to create), and a worker rotating many secrets of one
/// database asks once.
pub const TOPOLOGY_TTL: Duration = Duration::from_secs(5 * 60);

pub struct RdsProxies {
    client: Client,
}

impl RdsProxies {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: Client::from_conf(
                aws_sdk_rds::config::Builder::from(config)
                    .interceptor(super::CountCalls)
                    .build(),
            ),
        }
    }
}

#[async_trait]
impl ProxyDirectory for RdsProxies {
    async fn auth(&self, proxy: &str) -> Result<Vec<ProxyAuth>, ProxyError> {
        let out = match self
            .client
            .describe_db_proxies()
            .db_proxy_name(proxy)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let f = failure(&e);
                return Err(match f.code.as_deref() {
                    _ if f.transient => ProxyError::Unavailable(f.message),
                    Some("DBProxyNotFoundFault") => ProxyError::NotFound(proxy.to_owned()),
                    Some(
                        "AccessDenied" | "AccessDeniedException" | "UnrecognizedClientException",
                    ) => ProxyError::Denied(f.message),
                    _ => ProxyError::Refused(f.message),
                });
            }
        };
        let Some(p) = out.db_proxies().first() else {
            return Err(ProxyError::NotFound(proxy.to_owned()));
        };
        Ok(p.auth()
            .iter()
            .filter_map(|a| {
                Some(ProxyAuth {
                    secret_arn: a.secret_arn()?.to_owned(),
                    iam_auth: a.iam_auth().map(|x| x.as_str().to_owned()),
                    client_password_auth_type: a
                        .client_password_auth_type()
                        .map(|x| x.as_str().to_owned()),
                    description: a.description().map(str::to_owned),
                })
            })
            .collect())
    }
}

/// What an RDS endpoint's name says: `<id>.<hash>.<region>.rds.amazonaws.com` is an instance's,
/// `<id>.cluster-<hash>...` and `<id>.cluster-ro-<hash>...` a cluster's. A proxy's
/// (`.proxy-`), a custom cluster endpoint's (named by the endpoint, not the cluster), an
/// address or a CNAME say nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdsName {
    Instance(String),
    Cluster(String),
}

pub fn rds_name(host: &str) -> Option<RdsName> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let rest = host
        .strip_suffix(".rds.amazonaws.com")
        .or_else(|| host.strip_suffix(".rds.amazonaws.com.cn"))?;
    let labels: Vec<&str> = rest.split('.').collect();
    let [id, kind, _region] = labels.as_slice() else {
        return None;
    };
    if id.is_empty() {
        return None;
    }
    if kind.starts_with("cluster-custom-") || kind.starts_with("proxy-") {
        None
    } else if kind.starts_with("cluster-") {
        Some(RdsName::Cluster((*id).to_owned()))
    } else {
        Some(RdsName::Instance((*id).to_owned()))
    }
}

/// The instances and clusters of this account and region, with answers kept `TOPOLOGY_TTL`.
pub struct RdsInstances {
    client: Client,
    kept: Mutex<HashMap<String, (Instant, Option<RdsTopology>)>>,
}

impl RdsInstances {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: Client::from_conf(
                aws_sdk_rds::config::Builder::from(config)
                    .interceptor(super::CountCalls)
                    .build(),
            ),
            kept: Mutex::default(),
        }
    }

    fn refused<E>(action: &'static str, e: &SdkError<E, HttpResponse>) -> RdsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let f = failure(e);
        match f.code.as_deref() {
            _ if f.transient => RdsError::Unavailable(f.message),
            Some("AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation") => {
                RdsError::Denied {
                    action,
                    reason: f.message,
                }
            }
            _ => RdsError::Refused(f.message),
        }
    }

    /// The instances a filter selects (`db-instance-id`, `db-cluster-id`).
    async fn instances(
        &self,
        filter: &str,
        values: Vec<String>,
    ) -> Result<Vec<DbInstance>, RdsError> {
        let filter = Filter::builder()
            .name(filter)
            .set_values(Some(values))
            .build();
        let mut found = Vec::new();
        let mut marker = None;
        loop {
            let out = self
                .client
                .describe_db_instances()
                .filters(filter.clone())
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| Self::refused("DescribeDBInstances", &e))?;
            found.extend(out.db_instances().iter().cloned());
            marker = out.marker().map(str::to_owned);
            if marker.is_none() {
                return Ok(found);
            }
        }
    }

    async fn of_cluster(&self, id: &str) -> Result<Option<RdsTopology>, RdsError> {
        let (cluster, instances) = tokio::join!(
            self.client
                .describe_db_clusters()
                .db_cluster_identifier(id)
                .send(),
            self.instances("db-cluster-id", vec![id.to_owned()])
        );
        let cluster = match cluster {
            Ok(out) => out.db_clusters().first().cloned(),
            Err(e) if failure(&e).code.as_deref() == Some("DBClusterNotFoundFault") => None,
            Err(e) => return Err(Self::refused("DescribeDBClusters", &e)),
        };
        let Some(cluster) = cluster else {
            return Ok(None);
        };
        let writers: Vec<&str> = cluster
            .db_cluster_members()
            .iter()
            .filter(|m| m.is_cluster_writer() == Some(true))
            .filter_map(|m| m.db_instance_identifier())
            .collect();
        let mut topology = RdsTopology {
            arns: cluster
                .db_cluster_arn()
                .map(str::to_owned)
                .into_iter()
                .collect(),
            readers: Vec::new(),
        };
        for i in instances? {
            let writer = i
                .db_instance_identifier()
                .is_some_and(|id| writers.contains(&id));
            if writer {
                topology.arns.extend(i.db_instance_arn().map(str::to_owned));
            } else {
                topology.readers.extend(endpoint(&i));
            }
        }
        Ok(Some(topology))
    }

    async fn of_instance(&self, id: &str) -> Result<Option<RdsTopology>, RdsError> {
        let found = self
            .instances("db-instance-id", vec![id.to_owned()])
            .await?;
        let Some(instance) = found.first() else {
            return Ok(None);
        };
        // An Aurora instance's endpoint: its cluster's readers serve the same logins.
        if let Some(cluster) = instance.db_cluster_identifier() {
            return self.of_cluster(cluster).await;
        }
        let mut topology = RdsTopology {
            arns: instance
                .db_instance_arn()
                .map(str::to_owned)
                .into_iter()
                .collect(),
            readers: Vec::new(),
        };
        // Replicas in other regions are named by ARN, and this region's API cannot describe
        // them: `reader_hosts` names them (see the README).
        let replicas: Vec<String> = instance
            .read_replica_db_instance_identifiers()
            .iter()
            .filter(|r| !r.starts_with("arn:"))
            .cloned()
            .collect();
        if !replicas.is_empty() {
            for r in self.instances("db-instance-id", replicas).await? {
                topology.readers.extend(endpoint(&r));
            }
        }
        Ok(Some(topology))
    }
}

/// An instance's endpoint, once it has one (a new instance has none while it is created, and
/// no sessions either).
fn endpoint(i: &DbInstance) -> Option<Endpoint> {
    let e = i.endpoint()?;
    Some(Endpoint {
        host: e.address()?.to_owned(),
        port: u16::try_from(e.port()?).ok()?,
        dbname: String::new(),
    })
}

#[async_trait]
impl RdsDirectory for RdsInstances {
    async fn topology(&self, host: &str) -> Result<Option<RdsTopology>, RdsError> {
        let Some(name) = rds_name(host) else {
            return Ok(None);
        };
        let key = host.to_ascii_lowercase();
        if let Some((at, kept)) = self.kept.lock().expect("rds cache").get(&key) {
            if at.elapsed() < TOPOLOGY_TTL {
                return Ok(kept.clone());
            }
        }
        let found = match &name {
            RdsName::Cluster(id) => self.of_cluster(id).await?,
            RdsName::Instance(id) => self.of_instance(id).await?,
        };
        self.kept
            .lock()
            .expect("rds cache")
            .insert(key, (Instant::now(), found.clone()));
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoints_name_says_whether_it_is_an_instances_or_a_clusters() {
        let cases = [
            (
                "orders-1.abcdefghij.eu-west-1.rds.amazonaws.com",
                Some(RdsName::Instance("orders-1".into())),
            ),
            (
                "Orders-1.ABCDEFGHIJ.eu-west-1.rds.amazonaws.com.",
                Some(RdsName::Instance("orders-1".into())),
            ),
            (
                "orders.cluster-abcdefghij.eu-west-1.rds.amazonaws.com",
                Some(RdsName::Cluster("orders".into())),
            ),
            (
                "orders.cluster-ro-abcdefghij.eu-west-1.rds.amazonaws.com",
                Some(RdsName::Cluster("orders".into())),
            ),
            (
                "orders-1.abcdefghij.cn-north-1.rds.amazonaws.com.cn",
                Some(RdsName::Instance("orders-1".into())),
            ),
            (
                "analytics.cluster-custom-abcdefghij.eu-west-1.rds.amazonaws.com",
                None,
            ),
            (
                "orders-proxy.proxy-abcdefghij.eu-west-1.rds.amazonaws.com",
                None,
            ),
            ("db.internal.example.com", None),
            ("10.0.1.5", None),
            ("localhost", None),
            ("rds.amazonaws.com", None),
        ];
        for (host, want) in cases {
            assert_eq!(rds_name(host), want, "{host}");
        }
    }
}
