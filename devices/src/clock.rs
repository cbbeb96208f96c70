//! Converting between the guest's TSC and the fixed clocks of PC devices.
//! A result past u64::MAX is u64::MAX: a moment that never comes.

/// `value` ticks of a `from_hz` clock in ticks of a `to_hz` clock, rounded down.
pub fn convert(value: u64, from_hz: u64, to_hz: u64) -> u64 {
    saturate(value as u128 * to_hz as u128 / from_hz.max(1) as u128)
}

/// As `convert`, rounded up: the first `to_hz` tick at or after the instant.
pub fn convert_up(value: u64, from_hz: u64, to_hz: u64) -> u64 {
    saturate((value as u128 * to_hz as u128).div_ceil(from_hz.max(1) as u128))
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_as_named_and_do_not_overflow() {
        assert_eq!(convert(3_000_000_000, 3_000_000_000, 1_193_182), 1_193_182);
        assert_eq!(convert(10, 3, 1), 3);
        assert_eq!(convert_up(10, 3, 1), 4);
        assert_eq!(convert_up(9, 3, 1), 3);
        assert_eq!(
            convert(u64::MAX / 2, 1_000_000_000, 3_579_545),
            (u64::MAX as u128 / 2 * 3_579_545 / 1_000_000_000) as u64
        );
        assert_eq!(convert(u64::MAX, 1, 2), u64::MAX);
        assert_eq!(convert_up(u64::MAX, 1_193_182, 3_000_000_000), u64::MAX);
    }
}
