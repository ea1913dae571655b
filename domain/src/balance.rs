//! Which executor endpoint takes a new relayed call: the one with the fewest calls open now, so
//! that long workflow streams spread by what is open, not by what was started. Ties (several
//! endpoints equally loaded, as at start) are broken at random, so that replicas starting
//! together do not all pick the same endpoint first.

/// The candidate with the fewest open calls: `candidates` yields each eligible endpoint's
/// open-call count, in a stable order; `random(n)` picks one of `n` tied candidates
/// (`0..n`). Returns the chosen candidate's position in `candidates`, or `None` when there is
/// none.
pub fn fewest_open(
    candidates: impl IntoIterator<Item = usize>,
    mut random: impl FnMut(usize) -> usize,
) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None; // (open, position)
    let mut tied = 0;
    for (position, open) in candidates.into_iter().enumerate() {
        match best {
            Some((least, _)) if open > least => {}
            Some((least, _)) if open == least => {
                // Reservoir sampling: each of the tied candidates is kept with equal chance.
                tied += 1;
                if random(tied) == 0 {
                    best = Some((open, position));
                }
            }
            _ => {
                best = Some((open, position));
                tied = 1;
            }
        }
    }
    best.map(|(_, position)| position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_loaded_wins() {
        assert_eq!(fewest_open([3, 1, 2], |_| 0), Some(1));
        assert_eq!(fewest_open([0], |_| 0), Some(0));
        assert_eq!(fewest_open(std::iter::empty(), |_| 0), None);
    }

    #[test]
    fn ties_are_broken_evenly() {
        // A deterministic "random": cycles through its range.
        let mut state = 0usize;
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            let pick = fewest_open([5, 2, 2, 2], |n| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) % n
            })
            .unwrap();
            counts[pick] += 1;
        }
        assert_eq!(counts[0], 0);
        for c in &counts[1..] {
            assert!((1100..=1570).contains(c), "{counts:?}");
        }
    }
}
