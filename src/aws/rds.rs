//! The RDS API, read only: RDS Proxy's list of secrets (DescribeDBProxies) for `check` and
//! `adopt`, and the instances behind a database's endpoint (DescribeDBInstances,
//! DescribeDBClusters) for the in-use guard.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_rds::types::{BlueGreenDeployment, DbInstance, Filter};
use aws_sdk_rds::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use super::failure;
use crate::adopt::ports::{ProxyAuth, ProxyDirectory, ProxyError};
use crate::rotation::bluegreen::replication;
use crate::rotation::ports::{BlueGreen, RdsDb, RdsDirectory, RdsError, RdsTopology};
use crate::secret::Endpoint;

/// How long an answer about a database is kept: short, since a Blue/Green deployment may begin
/// at any moment, and still long enough that a worker rotating many secrets of one database at
/// once asks once.
pub const TOPOLOGY_TTL: Duration = Duration::from_secs(30);

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
/// (`.proxy-`), a custom cluster endpoint's (named by the endpoint, not the cluster), a global
/// database's, an address or a CNAME say nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdsName {
    Instance { id: String, region: String },
    Cluster { id: String, region: String },
}

pub fn rds_name(host: &str) -> Option<RdsName> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let rest = host
        .strip_suffix(".rds.amazonaws.com")
        .or_else(|| host.strip_suffix(".rds.amazonaws.com.cn"))?;
    let labels: Vec<&str> = rest.split('.').collect();
    let [id, kind, region] = labels.as_slice() else {
        return None;
    };
    let (id, region) = ((*id).to_owned(), (*region).to_owned());
    if id.is_empty() || region == "global" {
        return None;
    }
    if [
        "cluster-custom-",
        "proxy-",
        "global-",
        "limitless-",
        "shardgrp-",
    ]
    .iter()
    .any(|k| kind.starts_with(k))
    {
        None
    } else if kind.starts_with("cluster-") {
        Some(RdsName::Cluster { id, region })
    } else {
        Some(RdsName::Instance { id, region })
    }
}

/// The instances and clusters of this account, in the region each endpoint names, with answers
/// kept `TOPOLOGY_TTL`.
pub struct RdsInstances {
    config: aws_config::SdkConfig,
    clients: Mutex<HashMap<String, Client>>,
    kept: Mutex<HashMap<String, (Instant, Option<RdsTopology>)>>,
}

impl RdsInstances {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            config: config.clone(),
            clients: Mutex::default(),
            kept: Mutex::default(),
        }
    }

    /// A client for the region an endpoint names, which need not be the process's (`None`: the
    /// process's).
    fn client(&self, region: Option<&str>) -> Client {
        let mut clients = self.clients.lock().expect("rds clients");
        clients
            .entry(region.unwrap_or_default().to_owned())
            .or_insert_with(|| {
                let mut config = aws_sdk_rds::config::Builder::from(&self.config);
                if let Some(region) = region {
                    config = config.region(aws_config::Region::new(region.to_owned()));
                }
                Client::from_conf(config.interceptor(super::CountCalls).build())
            })
            .clone()
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
        client: &Client,
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
            let out = client
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

    async fn of_cluster(&self, client: &Client, id: &str) -> Result<Option<RdsTopology>, RdsError> {
        let (cluster, instances) = tokio::join!(
            client
                .describe_db_clusters()
                .db_cluster_identifier(id)
                .send(),
            Self::instances(client, "db-cluster-id", vec![id.to_owned()])
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
            // Read-replica clusters (another cluster, perhaps another region) serve logins too.
            not_covered: cluster.read_replica_identifiers().to_vec(),
            ..RdsTopology::default()
        };
        let engine = (
            cluster.engine().unwrap_or_default().to_owned(),
            cluster.engine_version().unwrap_or_default().to_owned(),
        );
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
        topology.deployments = self.deployments(client, &topology.arns, &engine).await?;
        Ok(Some(topology))
    }

    async fn of_instance(
        &self,
        client: &Client,
        id: &str,
    ) -> Result<Option<RdsTopology>, RdsError> {
        let found = Self::instances(client, "db-instance-id", vec![id.to_owned()]).await?;
        let Some(instance) = found.first() else {
            return Ok(None);
        };
        // An Aurora instance's endpoint: its cluster's readers serve the same logins.
        if let Some(cluster) = instance.db_cluster_identifier() {
            return self.of_cluster(client, cluster).await;
        }
        let mut topology = RdsTopology {
            arns: instance
                .db_instance_arn()
                .map(str::to_owned)
                .into_iter()
                .collect(),
            ..RdsTopology::default()
        };
        let engine = (
            instance.engine().unwrap_or_default().to_owned(),
            instance.engine_version().unwrap_or_default().to_owned(),
        );
        // Replicas, and theirs (MySQL, MariaDB and PostgreSQL allow chains), level by level.
        // Replicas in other regions are named by ARN, and this region's API cannot describe
        // them; nor does it list read-replica clusters here.
        let mut seen = std::collections::HashSet::from([id.to_owned()]);
        let mut level = vec![instance.clone()];
        while !level.is_empty() {
            let mut next = Vec::new();
            for i in &level {
                topology
                    .not_covered
                    .extend(i.read_replica_db_cluster_identifiers().iter().cloned());
                for r in i.read_replica_db_instance_identifiers() {
                    if r.starts_with("arn:") {
                        topology.not_covered.push(r.clone());
                    } else if seen.insert(r.clone()) {
                        next.push(r.clone());
                    }
                }
            }
            level = if next.is_empty() {
                Vec::new()
            } else {
                Self::instances(client, "db-instance-id", next).await?
            };
            topology.readers.extend(level.iter().filter_map(endpoint));
        }
        topology.deployments = self.deployments(client, &topology.arns, &engine).await?;
        Ok(Some(topology))
    }

    /// The Blue/Green deployments whose source or target is one of `arns` (the database's
    /// cluster and writer), each with how it replicates: for PostgreSQL, by the major versions of
    /// the database (`engine`: its engine and version) and of the deployment's other side.
    async fn deployments(
        &self,
        client: &Client,
        arns: &[String],
        (engine, version): &(String, String),
    ) -> Result<Vec<BlueGreen>, RdsError> {
        if arns.is_empty() {
            return Ok(Vec::new());
        }
        let named = |side: &str| {
            Filter::builder()
                .name(side)
                .set_values(Some(arns.to_vec()))
                .build()
        };
        let (as_source, as_target) = tokio::join!(
            Self::blue_green(client, named("source")),
            Self::blue_green(client, named("target"))
        );
        let mut found: Vec<BlueGreen> = Vec::new();
        for d in as_source?.into_iter().chain(as_target?) {
            let id = d.blue_green_deployment_identifier().unwrap_or_default();
            if found.iter().any(|f| f.id == id) {
                continue;
            }
            let ours = |arn: Option<&str>| arn.is_some_and(|a| arns.iter().any(|x| x == a));
            let is_green = !ours(d.source());
            let other = if is_green { d.source() } else { d.target() };
            let status = d.status().unwrap_or_default();
            // Only PostgreSQL's mode depends on the other side's version, and while green is
            // being made (PROVISIONING) its version may not be the one it is upgraded to yet:
            // unknown then, which counts as logical.
            let other_version = match (engine.as_str(), other) {
                ("postgres", Some(arn)) if status != "PROVISIONING" => {
                    Self::version_of(client, arn).await?
                }
                _ => None,
            };
            found.push(BlueGreen {
                id: id.to_owned(),
                name: d
                    .blue_green_deployment_name()
                    .unwrap_or_default()
                    .to_owned(),
                status: status.to_owned(),
                replication: replication(engine, version, other_version.as_deref()),
                is_green,
            });
        }
        Ok(found)
    }

    async fn blue_green(
        client: &Client,
        filter: Filter,
    ) -> Result<Vec<BlueGreenDeployment>, RdsError> {
        let mut found = Vec::new();
        let mut marker = None;
        loop {
            let out = client
                .describe_blue_green_deployments()
                .filters(filter.clone())
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| Self::refused("DescribeBlueGreenDeployments", &e))?;
            found.extend(out.blue_green_deployments().iter().cloned());
            marker = out.marker().map(str::to_owned);
            if marker.is_none() {
                return Ok(found);
            }
        }
    }

    /// The engine version of the instance or cluster `arn` names (`None` once it is gone).
    async fn version_of(client: &Client, arn: &str) -> Result<Option<String>, RdsError> {
        if arn.contains(":cluster:") {
            let asked = client
                .describe_db_clusters()
                .db_cluster_identifier(arn)
                .send()
                .await;
            return match asked {
                Ok(out) => Ok(out
                    .db_clusters()
                    .first()
                    .and_then(|c| c.engine_version())
                    .map(str::to_owned)),
                Err(e) if failure(&e).code.as_deref() == Some("DBClusterNotFoundFault") => Ok(None),
                Err(e) => Err(Self::refused("DescribeDBClusters", &e)),
            };
        }
        let found = Self::instances(client, "db-instance-id", vec![arn.to_owned()]).await?;
        Ok(found
            .first()
            .and_then(|i| i.engine_version())
            .map(str::to_owned))
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
    async fn topology(&self, db: &RdsDb) -> Result<Option<RdsTopology>, RdsError> {
        // An identifier from the secret is in the region its host names, when it is an RDS
        // endpoint's, else in the process's (`None`).
        let region_of = |host: &str| match rds_name(host) {
            Some(RdsName::Cluster { region, .. } | RdsName::Instance { region, .. }) => {
                Some(region)
            }
            None => None,
        };
        let (cluster, id, region) = match db {
            RdsDb::Cluster(id, host) => (true, id.clone(), region_of(host)),
            RdsDb::Instance(id, host) => (false, id.clone(), region_of(host)),
            RdsDb::Host(host) => match rds_name(host) {
                Some(RdsName::Cluster { id, region }) => (true, id, Some(region)),
                Some(RdsName::Instance { id, region }) => (false, id, Some(region)),
                None => return Ok(None),
            },
        };
        let key = db.to_string().to_ascii_lowercase();
        if let Some((at, kept)) = self.kept.lock().expect("rds cache").get(&key) {
            if at.elapsed() < TOPOLOGY_TTL {
                return Ok(kept.clone());
            }
        }
        let client = self.client(region.as_deref());
        let found = match cluster {
            true => self.of_cluster(&client, &id).await?,
            false => self.of_instance(&client, &id).await?,
        };
        let Some(found) = found else {
            let kind = if cluster { "cluster" } else { "instance" };
            let region = region.as_deref().unwrap_or("this region");
            return Err(RdsError::NotFound(format!(
                "{db} (no {kind} {id} in {region} in this account)"
            )));
        };
        self.kept
            .lock()
            .expect("rds cache")
            .insert(key, (Instant::now(), Some(found.clone())));
        Ok(Some(found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoints_name_says_whether_it_is_an_instances_or_a_clusters() {
        let inst = |id: &str, region: &str| RdsName::Instance {
            id: id.into(),
            region: region.into(),
        };
        let cluster = |id: &str, region: &str| RdsName::Cluster {
            id: id.into(),
            region: region.into(),
        };
        let cases = [
            (
                "orders-1.abcdefghij.eu-west-1.rds.amazonaws.com",
                Some(inst("orders-1", "eu-west-1")),
            ),
            (
                "Orders-1.ABCDEFGHIJ.eu-west-1.rds.amazonaws.com.",
                Some(inst("orders-1", "eu-west-1")),
            ),
            (
                "orders.cluster-abcdefghij.eu-west-1.rds.amazonaws.com",
                Some(cluster("orders", "eu-west-1")),
            ),
            (
                "orders.cluster-ro-abcdefghij.eu-west-1.rds.amazonaws.com",
                Some(cluster("orders", "eu-west-1")),
            ),
            (
                "orders-1.abcdefghij.cn-north-1.rds.amazonaws.com.cn",
                Some(inst("orders-1", "cn-north-1")),
            ),
            (
                "analytics.cluster-custom-abcdefghij.eu-west-1.rds.amazonaws.com",
                None,
            ),
            (
                "orders-proxy.proxy-abcdefghij.eu-west-1.rds.amazonaws.com",
                None,
            ),
            ("orders.global-abcdefghij.global.rds.amazonaws.com", None),
            (
                "ro.endpoint.proxy-abcdefghij.eu-west-1.rds.amazonaws.com",
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
