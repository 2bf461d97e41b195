//! Derived seeds. Every random draw of a run (views, masks, drop path, mixing) is seeded from
//! (run seed, what, where), so it does not depend on thread scheduling, on the backend, or on
//! whether the run was resumed.

/// A well-spread seed for (seed, a, b) (splitmix64 finalizer over a simple combination).
pub fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed
        .wrapping_add(a.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(b.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_seeds_differ_by_every_argument() {
        let base = mix(1, 2, 3);
        assert_eq!(base, mix(1, 2, 3));
        assert_ne!(base, mix(0, 2, 3));
        assert_ne!(base, mix(1, 3, 3));
        assert_ne!(base, mix(1, 2, 4));
        // Swapping the two coordinates gives another seed (they are weighted differently).
        assert_ne!(mix(1, 2, 3), mix(1, 3, 2));
    }
}
