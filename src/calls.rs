//! Counts of external calls (AWS operations, database connections), per rotation.
//!
//! A rotation runs inside one task, so a task-local tally sees exactly its own calls, however
//! many rotations a worker runs at once. Adapters call [`record`]; outside a tally it is a no-op.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

tokio::task_local! {
    static CURRENT: Tally;
}

/// Calls by name: `SecretsManager.PutSecretValue`, `postgres.connect`, ...
#[derive(Debug, Default, Clone)]
pub struct Tally(Arc<Mutex<BTreeMap<String, u64>>>);

impl Tally {
    /// Runs `f` with this tally collecting the calls it makes.
    pub async fn scope<F: Future>(&self, f: F) -> F::Output {
        CURRENT.scope(self.clone(), f).await
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().expect("tally lock").clone()
    }

    fn add(&self, name: &str) {
        *self
            .0
            .lock()
            .expect("tally lock")
            .entry(name.to_owned())
            .or_default() += 1;
    }
}

/// Counts one call in the current task's tally, if there is one.
pub fn record(name: &str) {
    let _ = CURRENT.try_with(|t| t.add(name));
}

/// `f`, counting its calls in the current task's tally: for work a rotation spawns.
pub fn carry<F: Future>(f: F) -> impl Future<Output = F::Output> {
    let tally = CURRENT.try_with(Tally::clone).ok();
    async move {
        match tally {
            Some(t) => t.scope(f).await,
            None => f.await,
        }
    }
}

/// The current task's tally so far (empty outside one).
pub fn snapshot() -> BTreeMap<String, u64> {
    CURRENT.try_with(Tally::snapshot).unwrap_or_default()
}

/// Sums the calls whose name starts with `prefix` (e.g. `SecretsManager.`).
pub fn total(calls: &BTreeMap<String, u64>, prefix: &str) -> u64 {
    calls
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_scope_counts_only_its_own_calls() {
        let (a, b) = (Tally::default(), Tally::default());
        let one = a.scope(async {
            record("x.op");
            tokio::task::yield_now().await;
            record("x.op");
        });
        let two = b.scope(async { record("y.op") });
        tokio::join!(one, two);
        record("outside");
        assert_eq!(a.snapshot(), BTreeMap::from([("x.op".to_owned(), 2)]));
        assert_eq!(b.snapshot(), BTreeMap::from([("y.op".to_owned(), 1)]));
        assert_eq!(total(&a.snapshot(), "x."), 2);
    }

    #[tokio::test]
    async fn work_spawned_with_carry_counts_in_the_spawners_tally() {
        let t = Tally::default();
        t.scope(async {
            tokio::spawn(carry(async { record("db.connect") }))
                .await
                .unwrap();
            tokio::spawn(async { record("lost") }).await.unwrap();
        })
        .await;
        assert_eq!(t.snapshot(), BTreeMap::from([("db.connect".to_owned(), 1)]));
    }
}
