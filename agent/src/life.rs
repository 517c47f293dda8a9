//! Which life of this host's agent a start begins. With a data dir, a
//! restart resumes the incarnation the dir holds (live restore): peers
//! keep its entries and kernel state, so containers' traffic goes on. A
//! new incarnation (no data dir, or it cannot be resumed) replaces the old
//! one everywhere: its entries are removed and written again.

use crate::state::State;

/// The generation grows by one per step of the wall clock since the
/// incarnation began. A life renews its generation once per wrong "down"
/// verdict, each at least a probe period apart, so a later start always
/// outnumbers what the earlier one reached.
const STEP_MS: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Life {
    pub incarnation: u64,
    pub generation: u32,
    /// The incarnation came from the data dir.
    pub resumed: bool,
}

impl Life {
    /// The life to start at wall-clock `now_ms` (Unix ms), given what the
    /// data dir saved (`None` without one).
    pub(crate) fn resume(saved: Option<&State>, now_ms: u64) -> Life {
        let fresh = Life { incarnation: now_ms, generation: 0, resumed: false };
        let Some(state) = saved.filter(|s| s.incarnation != 0) else { return fresh };
        let steps = match now_ms.checked_sub(state.incarnation) {
            Some(ms) => ms / STEP_MS,
            None => {
                tracing::warn!(
                    saved = state.incarnation,
                    now_ms,
                    "the wall clock is behind the saved incarnation; starting a new one"
                );
                return fresh;
            }
        };
        match u32::try_from(steps).ok().zip(state.generation.checked_add(1)) {
            Some((steps, next)) => {
                Life { incarnation: state.incarnation, generation: steps.max(next), resumed: true }
            }
            // About 13 years in one incarnation: a new one, once.
            None => fresh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(incarnation: u64, generation: u32) -> State {
        State { incarnation, generation, ..State::default() }
    }

    #[test]
    fn without_saved_life_a_start_is_a_new_incarnation() {
        let fresh = Life { incarnation: 5_000, generation: 0, resumed: false };
        assert_eq!(Life::resume(None, 5_000), fresh);
        assert_eq!(Life::resume(Some(&State::default()), 5_000), fresh);
    }

    #[test]
    fn a_restart_resumes_the_incarnation_with_a_larger_generation() {
        // Started at 1 000 ms into the incarnation (generation 10), then
        // renewed a few times before dying; restarted 300 ms after its start.
        let first = Life::resume(Some(&saved(10_000, 0)), 11_000);
        assert_eq!(first, Life { incarnation: 10_000, generation: 10, resumed: true });
        let second = Life::resume(Some(&saved(10_000, first.generation)), 11_300);
        assert_eq!(second.incarnation, 10_000);
        assert_eq!(second.generation, 13);
        // Within the same step of the clock: still one more than the last start.
        let third = Life::resume(Some(&saved(10_000, second.generation)), 11_301);
        assert_eq!(third.generation, 14);
    }

    #[test]
    fn a_clock_behind_the_incarnation_or_an_exhausted_generation_starts_afresh() {
        assert!(!Life::resume(Some(&saved(10_000, 3)), 9_000).resumed);
        assert!(!Life::resume(Some(&saved(10_000, u32::MAX)), 20_000).resumed);
        let decades = 10_000 + (u64::from(u32::MAX) + 1) * STEP_MS;
        let life = Life::resume(Some(&saved(10_000, 3)), decades);
        assert_eq!(life, Life { incarnation: decades, generation: 0, resumed: false });
    }
}
