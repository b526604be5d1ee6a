//! Where randomness comes from: the operating system. The simulator (`crate::sim`, test builds
//! only) seeds a generator on its own thread instead, so that one seed replays one run exactly:
//! rotation ids, lease owners and passwords all come from here.

use std::cell::RefCell;

use rand::rngs::OsRng;
use rand::TryRngCore;

thread_local! {
    /// Set only by `seed`, which exists only in test builds.
    static SEEDED: RefCell<Option<rand::rngs::StdRng>> = const { RefCell::new(None) };
}

/// A uniformly random `u32`.
pub fn next_u32() -> u32 {
    let seeded = SEEDED.with(|s| s.borrow_mut().as_mut().map(rand::RngCore::next_u32));
    seeded.unwrap_or_else(|| {
        OsRng
            .try_next_u32()
            .expect("the operating system's random source failed")
    })
}

/// A random (version 4) UUID.
pub fn uuid_v4() -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(4) {
        chunk.copy_from_slice(&next_u32().to_le_bytes());
    }
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// From now on, on this thread, randomness comes from `seed`.
#[cfg(test)]
pub fn seed(seed: u64) {
    use rand::SeedableRng;
    SEEDED.with(|s| *s.borrow_mut() = Some(rand::rngs::StdRng::seed_from_u64(seed)));
}

/// Back to the operating system's randomness on this thread.
#[cfg(test)]
pub fn unseed() {
    SEEDED.with(|s| *s.borrow_mut() = None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_randomness_and_the_default_is_the_operating_systems() {
        seed(7);
        let first = (uuid_v4(), next_u32());
        seed(7);
        assert_eq!((uuid_v4(), next_u32()), first);
        assert_eq!(first.0.get_version_num(), 4);
        unseed();
        assert_ne!(uuid_v4(), first.0);
    }
}
