//! Pool-level health rules: how many targets passive ejection may take out, and when the pool
//! is in panic mode. Pure functions of counts, used by the balancer.

/// May one more target of this pool be ejected? Never beyond `max_ejected_percent` of the pool,
/// except that a pool of two or more may always eject its first target (so 10% of 3 still sheds
/// one dead target); a lone target is only ejected at 100%; 0% turns ejection off.
pub fn may_eject(currently_ejected: usize, total: usize, max_ejected_percent: u32) -> bool {
    if max_ejected_percent == 0 || currently_ejected >= total {
        return false;
    }
    if currently_ejected == 0 && total >= 2 {
        return true;
    }
    (currently_ejected + 1) * 100 <= total * max_ejected_percent as usize
}

/// Is the pool in panic mode (balance over all targets, H5)? True when the routable share is
/// below `threshold`, including when none is routable. The caller decides what `total` counts
/// (draining targets should not be in it: they must not get traffic even in panic).
pub fn panic_mode(healthy: usize, total: usize, threshold: Option<f64>) -> bool {
    match threshold {
        Some(t) if total > 0 => (healthy as f64) < t * total as f64,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn may_eject_edges() {
        // (ejected, total, percent, allowed)
        let cases = [
            (0, 1, 50, false),  // a lone target is kept: ejecting it only makes 503s
            (0, 1, 100, true),  // ...unless the operator allows 100%
            (1, 1, 100, false), // nothing left to eject
            (0, 2, 50, true),   // 1 of 2 at 50%
            (1, 2, 50, false),  // 2 of 2 would be 100%
            (0, 3, 10, true),   // a pool of two or more always sheds its first
            (1, 3, 10, false),
            (1, 10, 20, true), // 2 of 10 = 20%
            (2, 10, 20, false),
            (0, 5, 0, false), // 0% turns ejection off
            (4, 5, 100, true),
            (5, 5, 100, false),
            (0, 0, 50, false),
        ];
        for (ejected, total, pct, want) in cases {
            assert_eq!(
                may_eject(ejected, total, pct),
                want,
                "{ejected}/{total} at {pct}%"
            );
        }
    }

    #[test]
    fn panic_mode_edges() {
        assert!(!panic_mode(0, 4, None), "off without a threshold");
        assert!(
            !panic_mode(0, 0, Some(0.5)),
            "an empty pool is not in panic"
        );
        assert!(panic_mode(0, 4, Some(0.5)));
        assert!(panic_mode(1, 4, Some(0.5)));
        assert!(
            !panic_mode(2, 4, Some(0.5)),
            "exactly at the threshold is not below it"
        );
        assert!(!panic_mode(4, 4, Some(1.0)));
        assert!(panic_mode(3, 4, Some(1.0)));
    }
}
