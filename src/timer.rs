//! Hashed timer wheel holding every deadline of the single-threaded server loop.
//!
//! Time is cut into ticks of a fixed length counted from a start instant. An
//! entry due at tick `t` lives in the doubly linked list of slot
//! `t % slots`; entries of later turns share that list and are told apart by
//! the absolute tick each one keeps. Insert and cancel are O(1); `expire`
//! walks only the slots of the ticks that passed, and never more than one
//! full turn, however far `now` jumped.
//!
//! Deadlines are rounded up to a tick boundary, so an entry never fires early
//! but may fire up to one tick late. Two entries that round to the same tick
//! are ties and fire in insertion order.
//!
//! Deadlines further than `u64::MAX` ticks from the start (about 5.8 billion
//! years at 10 ms) are clamped to that tick.
//!
//! Memory: each live entry costs `size_of::<T>()` plus 32 bytes (its tick, a
//! generation and two links) plus the slab's 8-byte occupied/vacant tag,
//! rounded up to the alignment of `T`; freed entries are reused, not
//! returned. The wheel itself costs 24 bytes per slot, and a [`TimerId`] 16.

use std::fmt;
use std::time::{Duration, Instant};

use slab::Slab;

/// Link value meaning "no entry"; never a slab key, because a slab cannot
/// hold `usize::MAX` entries.
const NIL: usize = usize::MAX;

/// Nanoseconds in one second, for turning a tick count back into a
/// `Duration`.
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Handle to one scheduled entry.
///
/// A handle whose entry already fired or was cancelled is stale: passing it to
/// [`TimerWheel::cancel`] returns `None` and touches nothing, even after the
/// same storage slot was reused by a newer entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    /// Key of the entry in the wheel's slab; reused once the entry is gone.
    key: usize,
    /// Generation stamped on the entry at insert; unique per wheel, so a
    /// reused key never matches an old handle.
    generation: u64,
}

/// Why a wheel could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimerError {
    /// The tick length was zero, so no deadline could be turned into ticks.
    ZeroTick,
    /// The slot count was zero or not a power of two.
    SlotsNotPowerOfTwo {
        /// The slot count that was asked for.
        slots: usize,
    },
}

impl fmt::Display for TimerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimerError::ZeroTick => write!(f, "timer tick length is zero"),
            TimerError::SlotsNotPowerOfTwo { slots } => {
                write!(f, "timer wheel size {slots} is not a power of two")
            }
        }
    }
}

impl std::error::Error for TimerError {}

/// One scheduled value and its place in a slot list.
#[derive(Debug)]
struct Entry<T> {
    /// What the caller gets back when the entry fires or is cancelled.
    value: T,
    /// Absolute tick at which the entry is due: its deadline rounded up.
    tick: u64,
    /// Generation the entry's [`TimerId`] carries.
    generation: u64,
    /// Previous entry in the same list, or [`NIL`] at the head.
    prev: usize,
    /// Next entry in the same list, or [`NIL`] at the tail; lists run in
    /// insertion order.
    next: usize,
}

/// Ends of one intrusive list of entries.
#[derive(Clone, Copy, Debug)]
struct List {
    /// First (oldest) entry, or [`NIL`] when the list is empty.
    head: usize,
    /// Last (newest) entry, or [`NIL`] when the list is empty.
    tail: usize,
    /// Lower bound of the ticks in the list, `u64::MAX` when it is empty.
    /// Exact after the list is walked; a cancel may leave it too low, which
    /// only makes `next_timeout` wake the loop early once.
    min_tick: u64,
}

impl List {
    /// A list with no entries.
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        min_tick: u64::MAX,
    };
}

/// Hashed timer wheel of values of type `T`.
///
/// Invariants between calls: every entry with `tick > cursor` sits in the
/// list of slot `tick & mask`; every entry with `tick <= cursor` was inserted
/// after the last `expire` and sits in the overdue list (the last list).
#[derive(Debug)]
pub struct TimerWheel<T> {
    /// Storage of the live entries; its length is the wheel's length.
    entries: Slab<Entry<T>>,
    /// One list per slot, then the overdue list; length is `slots + 1`.
    lists: Vec<List>,
    /// `slots - 1`; slots are a power of two, so `tick & mask` picks a slot.
    mask: u64,
    /// Tick length in nanoseconds; never zero.
    tick_nanos: u128,
    /// Instant at which tick 0 begins.
    start: Instant,
    /// Last tick `expire` has processed: every entry due at or before it
    /// has fired, except the overdue ones inserted since.
    cursor: u64,
    /// Generation the next inserted entry gets; only grows.
    next_generation: u64,
    /// Scratch list of `(tick, key)` of the entries `expire` is firing,
    /// kept to avoid an allocation per call; empty between calls.
    due: Vec<(u64, usize)>,
}

impl<T> TimerWheel<T> {
    /// Builds an empty wheel whose tick 0 begins at `start`.
    ///
    /// `tick` is the granularity (the server uses 10 ms) and `slots` the
    /// number of slots, a power of two (e.g. 512).
    ///
    /// # Panics
    ///
    /// Panics if `tick` is zero or `slots` is not a power of two; use
    /// [`TimerWheel::try_new`] when those come from configuration.
    pub fn new(tick: Duration, slots: usize, start: Instant) -> Self {
        match Self::try_new(tick, slots, start) {
            Ok(wheel) => wheel,
            Err(err) => panic!("{err}"),
        }
    }

    /// Builds an empty wheel like [`TimerWheel::new`], or says why the
    /// parameters are unusable.
    pub fn try_new(tick: Duration, slots: usize, start: Instant) -> Result<Self, TimerError> {
        if tick.is_zero() {
            return Err(TimerError::ZeroTick);
        }
        if !slots.is_power_of_two() {
            return Err(TimerError::SlotsNotPowerOfTwo { slots });
        }

        Ok(TimerWheel {
            entries: Slab::new(),
            lists: vec![List::EMPTY; slots + 1],
            mask: slots as u64 - 1,
            tick_nanos: tick.as_nanos(),
            start,
            cursor: 0,
            next_generation: 0,
            due: Vec::new(),
        })
    }

    /// Schedules `value` to fire at `deadline`, rounded up to the next tick
    /// boundary so it never fires early. A deadline at or before the last
    /// processed tick fires on the next [`TimerWheel::expire`], whatever its
    /// `now`. Returns the handle that cancels it.
    pub fn insert(&mut self, deadline: Instant, value: T) -> TimerId {
        let tick = self.ticks_ceil(deadline);
        let generation = self.next_generation;
        self.next_generation += 1;

        // Append at the tail so each list stays in insertion order: that is
        // what makes ties fire first-in, first-out.
        let list = self.list_of(tick);
        let tail = self.lists[list].tail;
        let entry = Entry {
            value,
            tick,
            generation,
            prev: tail,
            next: NIL,
        };
        let key = self.entries.insert(entry);
        match self.entries.get_mut(tail) {
            Some(last) => last.next = key,
            None => self.lists[list].head = key,
        }
        self.lists[list].tail = key;
        self.lists[list].min_tick = self.lists[list].min_tick.min(tick);

        TimerId { key, generation }
    }

    /// Removes the entry `id` names and returns its value, or `None` if it
    /// already fired or was cancelled. O(1).
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let entry = self.entries.get(id.key)?;
        if entry.generation != id.generation {
            return None;
        }

        let list = self.list_of(entry.tick);
        self.unlink(list, id.key);
        if self.lists[list].head == NIL {
            self.lists[list].min_tick = u64::MAX;
        }
        self.entries.try_remove(id.key).map(|entry| entry.value)
    }

    /// Whether the entry `id` names is still scheduled.
    pub fn contains(&self, id: TimerId) -> bool {
        self.entries
            .get(id.key)
            .is_some_and(|entry| entry.generation == id.generation)
    }

    /// Moves the wheel to `now` and appends to `out` the value of every entry
    /// whose rounded deadline is at or before `now`, earliest first, ties in
    /// insertion order. A `now` older than a previous call's counts as that
    /// call's. Walks at most one full turn of slots, so a jump of hours costs
    /// no more than a jump of one turn (plus the entries it looks at).
    pub fn expire(&mut self, now: Instant, out: &mut Vec<T>) {
        self.advance(now, out);
    }

    /// How long from `now` until the earliest entry could fire: `Some(ZERO)`
    /// if one is due, `None` if the wheel is empty. The answer may be early
    /// (after a cancel) but never late, so it can serve as the poll timeout.
    /// Costs O(slots), never O(entries).
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.entries.is_empty() {
            return None;
        }
        if self.lists[self.overdue_list()].head != NIL {
            return Some(Duration::ZERO);
        }

        let slots = &self.lists[..self.overdue_list()];
        let earliest = slots.iter().map(|list| list.min_tick).min()?;
        match self.tick_start(earliest) {
            Some(due_at) => Some(due_at.saturating_duration_since(now)),
            // Beyond what an `Instant` can hold: as good as never.
            None => Some(Duration::MAX),
        }
    }

    /// Number of scheduled entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is scheduled.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Does the work of [`TimerWheel::expire`] and returns how many slots it
    /// walked, so tests can check the one-turn bound.
    fn advance(&mut self, now: Instant, out: &mut Vec<T>) -> u64 {
        let target = self.ticks_floor(now).max(self.cursor);
        let walked = self.collect_due(target);

        // The stable sort keeps list order, hence insertion order, among
        // entries of one tick; input from a short step is already sorted,
        // which the sort notices in linear time.
        self.due.sort_by_key(|&(tick, _)| tick);

        out.reserve(self.due.len());
        for &(_, key) in &self.due {
            if let Some(entry) = self.entries.try_remove(key) {
                out.push(entry.value);
            }
        }
        self.due.clear();
        walked
    }

    /// Unlinks every entry due at or before `target` (the overdue list, then
    /// the slots of ticks `cursor + 1 ..= target`, at most one full turn),
    /// records it in `due` and moves the cursor to `target`. Returns how many
    /// slots it walked.
    fn collect_due(&mut self, target: u64) -> u64 {
        // Overdue entries all have ticks at or before the cursor, so they come
        // before anything still in a slot.
        let overdue = self.overdue_list();
        let mut key = self.lists[overdue].head;
        while let Some(entry) = self.entries.get(key) {
            self.due.push((entry.tick, key));
            key = entry.next;
        }
        self.lists[overdue] = List::EMPTY;

        // After one full turn every slot has been seen; further ticks would
        // only revisit the same lists.
        let slot_count = self.mask + 1;
        let walked = (target - self.cursor).min(slot_count);
        for step in 1..=walked {
            let slot = ((self.cursor + step) & self.mask) as usize;
            self.collect_slot(slot, target);
        }

        self.cursor = target;
        walked
    }

    /// Moves every entry of `slot` due at or before `target` from the list to
    /// `due`, keeping list order, and makes the slot's `min_tick` exact.
    fn collect_slot(&mut self, slot: usize, target: u64) {
        let mut min_tick = u64::MAX;
        let mut key = self.lists[slot].head;
        while let Some(entry) = self.entries.get(key) {
            let (tick, next) = (entry.tick, entry.next);
            if tick <= target {
                self.unlink(slot, key);
                self.due.push((tick, key));
            } else {
                min_tick = min_tick.min(tick);
            }
            key = next;
        }
        self.lists[slot].min_tick = min_tick;
    }

    /// Detaches entry `key` from list `list` by joining its neighbours; the
    /// entry itself stays in the slab with stale links.
    fn unlink(&mut self, list: usize, key: usize) {
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        let (prev, next) = (entry.prev, entry.next);

        match self.entries.get_mut(prev) {
            Some(before) => before.next = next,
            None => self.lists[list].head = next,
        }
        match self.entries.get_mut(next) {
            Some(after) => after.prev = prev,
            None => self.lists[list].tail = prev,
        }
    }

    /// Index of the list an entry due at `tick` belongs in right now.
    fn list_of(&self, tick: u64) -> usize {
        if tick <= self.cursor {
            self.overdue_list()
        } else {
            (tick & self.mask) as usize
        }
    }

    /// Index of the overdue list, which follows the slot lists.
    fn overdue_list(&self) -> usize {
        self.lists.len() - 1
    }

    /// First tick whose start is at or after `at` (saturating).
    fn ticks_ceil(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.start).as_nanos();
        u64::try_from(nanos.div_ceil(self.tick_nanos)).unwrap_or(u64::MAX)
    }

    /// Last tick whose start is at or before `at` (saturating).
    fn ticks_floor(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.start).as_nanos();
        u64::try_from(nanos / self.tick_nanos).unwrap_or(u64::MAX)
    }

    /// Instant at which `tick` begins, or `None` if an `Instant` cannot hold
    /// it.
    fn tick_start(&self, tick: u64) -> Option<Instant> {
        let nanos = u128::from(tick).checked_mul(self.tick_nanos)?;
        let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
        let subsec = u32::try_from(nanos % NANOS_PER_SEC).ok()?;
        self.start.checked_add(Duration::new(secs, subsec))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    /// The server's tick, used by most tests.
    const TICK: Duration = Duration::from_millis(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Fires everything due at `now` and returns it.
    fn fire<T>(wheel: &mut TimerWheel<T>, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        wheel.expire(now, &mut out);
        out
    }

    #[test]
    fn try_new_rejects_zero_tick_and_odd_sizes() {
        let start = Instant::now();

        let zero = TimerWheel::<()>::try_new(Duration::ZERO, 8, start).err();
        assert_eq!(zero, Some(TimerError::ZeroTick));
        let odd = TimerWheel::<()>::try_new(TICK, 12, start).err();
        assert_eq!(odd, Some(TimerError::SlotsNotPowerOfTwo { slots: 12 }));
        let none = TimerWheel::<()>::try_new(TICK, 0, start).err();
        assert_eq!(none, Some(TimerError::SlotsNotPowerOfTwo { slots: 0 }));

        assert_eq!(
            TimerError::ZeroTick.to_string(),
            "timer tick length is zero"
        );
        let msg = TimerError::SlotsNotPowerOfTwo { slots: 12 }.to_string();
        assert_eq!(msg, "timer wheel size 12 is not a power of two");
        assert!(TimerWheel::<()>::try_new(TICK, 1, start).is_ok());
    }

    #[test]
    fn deadline_rounds_up_to_the_next_tick_boundary() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 8, start);
        wheel.insert(start + ms(15), "mid");
        wheel.insert(start + ms(30), "edge");

        assert_eq!(wheel.next_timeout(start + ms(12)), Some(ms(8)));
        assert!(fire(&mut wheel, start + ms(19)).is_empty());
        assert_eq!(fire(&mut wheel, start + ms(20)), vec!["mid"]);

        // A deadline exactly on a boundary is not pushed a tick further.
        let just_before = start + ms(30) - Duration::from_nanos(1);
        assert!(fire(&mut wheel, just_before).is_empty());
        assert_eq!(fire(&mut wheel, start + ms(30)), vec!["edge"]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn sub_nanosecond_tick_remainders_never_fire_early() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(Duration::from_nanos(3), 4, start);
        wheel.insert(start + Duration::from_nanos(7), 1);

        assert!(fire(&mut wheel, start + Duration::from_nanos(8)).is_empty());
        assert_eq!(fire(&mut wheel, start + Duration::from_nanos(9)), vec![1]);
    }

    #[test]
    fn past_deadline_fires_on_next_expire_without_time_moving() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 8, start);
        assert!(fire(&mut wheel, start + ms(100)).is_empty());

        wheel.insert(start + ms(50), "late");
        wheel.insert(start.checked_sub(ms(5)).unwrap_or(start), "before start");
        assert_eq!(wheel.next_timeout(start + ms(100)), Some(Duration::ZERO));
        let got = fire(&mut wheel, start + ms(100));
        assert_eq!(
            got,
            vec!["before start", "late"],
            "deadline order, not insertion"
        );
        assert_eq!(wheel.next_timeout(start + ms(100)), None);
    }

    #[test]
    fn overdue_entries_fire_in_deadline_order_before_slot_entries() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 8, start);
        fire(&mut wheel, start + ms(100));

        wheel.insert(start + ms(105), "slot");
        wheel.insert(start + ms(90), "overdue late");
        wheel.insert(start + ms(40), "overdue early");
        let got = fire(&mut wheel, start + ms(110));
        assert_eq!(got, vec!["overdue early", "overdue late", "slot"]);
    }

    #[test]
    fn cancel_returns_the_value_once_and_it_never_fires() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 8, start);
        let a = wheel.insert(start + ms(20), 'a');
        let b = wheel.insert(start + ms(20), 'b');
        let c = wheel.insert(start + ms(20), 'c');
        assert_eq!(wheel.len(), 3);

        // Middle, head and tail of one list.
        assert_eq!(wheel.cancel(b), Some('b'));
        assert_eq!(wheel.cancel(b), None);
        assert!(!wheel.contains(b));
        assert!(wheel.contains(a));
        assert_eq!(wheel.len(), 2);
        assert_eq!(fire(&mut wheel, start + ms(20)), vec!['a', 'c']);
        assert_eq!(wheel.cancel(a), None);
        assert_eq!(wheel.cancel(c), None);

        let d = wheel.insert(start + ms(40), 'd');
        let e = wheel.insert(start + ms(40), 'e');
        assert_eq!(wheel.cancel(d), Some('d'));
        assert_eq!(wheel.cancel(e), Some('e'));
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_timeout(start), None);
        assert!(fire(&mut wheel, start + ms(1000)).is_empty());
    }

    #[test]
    fn stale_id_does_not_touch_an_entry_that_reused_its_slot() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 8, start);
        let old = wheel.insert(start + ms(10), "old");
        assert_eq!(fire(&mut wheel, start + ms(10)), vec!["old"]);

        let new = wheel.insert(start + ms(30), "new");
        assert_eq!(old.key, new.key, "the slab should reuse the freed key");
        assert_ne!(old, new);
        assert_eq!(wheel.cancel(old), None);
        assert!(!wheel.contains(old));
        assert_eq!(wheel.len(), 1);

        assert_eq!(wheel.cancel(new), Some("new"));
        let newer = wheel.insert(start + ms(30), "newer");
        assert_eq!(wheel.cancel(new), None);
        assert_eq!(fire(&mut wheel, start + ms(30)), vec!["newer"]);
        assert_eq!(wheel.cancel(newer), None);
    }

    #[test]
    fn multi_turn_deadline_waits_for_its_own_turn() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 8, start);
        // Tick 26 shares slot 2 with ticks 2, 10 and 18.
        wheel.insert(start + ms(260), "far");
        wheel.insert(start + ms(20), "near");

        let mut fired_at = Vec::new();
        for t in 1..=40 {
            let before = start + ms((t - 1) * 10);
            let wait = wheel.next_timeout(before);
            let got = fire(&mut wheel, start + ms(t * 10));
            if !got.is_empty() {
                assert_eq!(wait, Some(ms(10)), "poll timeout before tick {t}");
            }
            fired_at.extend(got.into_iter().map(|value| (t, value)));
        }
        assert_eq!(fired_at, vec![(2, "near"), (26, "far")]);
    }

    #[test]
    fn ties_fire_in_insertion_order_across_ticks_in_deadline_order() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 8, start);
        for (deadline, name) in [(50, "e"), (30, "c"), (25, "t3a"), (10, "a"), (21, "t3b")] {
            wheel.insert(start + ms(deadline), name);
        }

        let got = fire(&mut wheel, start + ms(100));
        assert_eq!(got, vec!["a", "c", "t3a", "t3b", "e"]);
    }

    #[test]
    fn big_jump_walks_one_turn_and_fires_all_due_in_order() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 512, start);
        let hour = 3_600_000;
        for (deadline, name) in [(2 * hour, "2h"), (30, "30ms"), (hour + 5, "1h")] {
            wheel.insert(start + ms(deadline), name);
        }
        wheel.insert(start + ms(30), "30ms again");
        wheel.insert(start + ms(4 * hour), "4h");

        // Three hours is over a million ticks; only 512 slots may be walked.
        let mut got = Vec::new();
        assert_eq!(wheel.advance(start + ms(3 * hour), &mut got), 512);
        assert_eq!(got, vec!["30ms", "30ms again", "1h", "2h"]);
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.next_timeout(start + ms(3 * hour)), Some(ms(hour)));
        assert_eq!(fire(&mut wheel, start + ms(4 * hour)), vec!["4h"]);
    }

    #[test]
    fn short_step_walks_only_the_ticks_that_passed() {
        let start = Instant::now();
        let mut wheel = TimerWheel::<()>::new(TICK, 512, start);
        let mut out = Vec::new();
        assert_eq!(wheel.advance(start + ms(35), &mut out), 3);
        assert_eq!(wheel.advance(start + ms(39), &mut out), 0);
        assert_eq!(wheel.advance(start + ms(100), &mut out), 7);
        assert_eq!(wheel.advance(start + ms(5), &mut out), 0);
    }

    #[test]
    fn older_now_neither_rewinds_nor_refires() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 8, start);
        wheel.insert(start + ms(50), 1);
        fire(&mut wheel, start + ms(40));
        wheel.insert(start + ms(60), 2);

        assert!(fire(&mut wheel, start + ms(10)).is_empty());
        assert_eq!(fire(&mut wheel, start + ms(60)), vec![1, 2]);
        assert!(fire(&mut wheel, start).is_empty());
    }

    #[test]
    fn next_timeout_is_exact_without_cancels_and_early_after_one() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 8, start);
        assert_eq!(wheel.next_timeout(start), None);

        let first = wheel.insert(start + ms(35), 1);
        wheel.insert(start + ms(200), 2);
        assert_eq!(wheel.next_timeout(start + ms(5)), Some(ms(35)));
        assert_eq!(wheel.next_timeout(start + ms(45)), Some(Duration::ZERO));

        // The slot keeps a stale bound: one early wake-up, then exact.
        wheel.cancel(first);
        assert_eq!(wheel.next_timeout(start + ms(5)), Some(ms(35)));
        assert!(fire(&mut wheel, start + ms(40)).is_empty());
        assert_eq!(wheel.next_timeout(start + ms(40)), Some(ms(160)));

        // Cancelling the only entry of a slot leaves no stale bound behind.
        let lone = wheel.insert(start + ms(70), 3);
        assert_eq!(wheel.next_timeout(start + ms(40)), Some(ms(30)));
        wheel.cancel(lone);
        assert_eq!(wheel.next_timeout(start + ms(40)), Some(ms(160)));
    }

    #[test]
    fn absurdly_far_deadline_saturates_and_waits() {
        let start = Instant::now();
        let Some(far) = start.checked_add(Duration::from_secs(1 << 61)) else {
            return;
        };
        let mut wheel = TimerWheel::new(TICK, 8, start);
        let id = wheel.insert(far, "never");

        assert!(fire(&mut wheel, start + ms(3_600_000)).is_empty());
        let wait = wheel.next_timeout(start + ms(3_600_000));
        // Clamped to tick u64::MAX: about 5.8 billion years at 10 ms.
        let eons = Duration::from_secs(1 << 57);
        assert!(wait.is_some_and(|w| w > eons), "{wait:?}");
        assert_eq!(wheel.cancel(id), Some("never"));
    }

    #[test]
    fn entry_overhead_is_32_bytes_beside_the_value() {
        assert_eq!(std::mem::size_of::<Entry<()>>(), 32);
        assert_eq!(std::mem::size_of::<Entry<u64>>(), 40);
        assert_eq!(std::mem::size_of::<List>(), 24);
        assert_eq!(std::mem::size_of::<TimerId>(), 16);
    }

    /// Small deterministic generator (xorshift64) for the model test.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    #[test]
    fn matches_a_sorted_map_model_over_random_operations() {
        let start = Instant::now();
        let tick_ms: u64 = 10;
        let slots = 8;
        let mut wheel = TimerWheel::new(ms(tick_ms), slots, start);
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);

        // (tick, insertion seq) -> value; ids map to their model key.
        let mut model: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        let mut keys: HashMap<TimerId, (u64, u64)> = HashMap::new();
        let mut ids: Vec<TimerId> = Vec::new();
        let mut now_ms: u64 = 0;
        let mut model_cursor: u64 = 0;
        let (mut fired, mut cancelled, mut jumps, mut far) = (0, 0, 0, 0);

        for seq in 0..6000 {
            match rng.below(10) {
                0..=3 => {
                    let deadline_ms = match rng.below(4) {
                        0 => now_ms.saturating_sub(rng.below(60)),
                        1 => now_ms + rng.below(100),
                        2 => now_ms + rng.below(1_000),
                        _ => now_ms + rng.below(100_000),
                    };
                    let tick = deadline_ms.div_ceil(tick_ms);
                    if tick >= model_cursor + slots as u64 {
                        far += 1;
                    }
                    let id = wheel.insert(start + ms(deadline_ms), seq);
                    model.insert((tick, seq), seq);
                    keys.insert(id, (tick, seq));
                    ids.push(id);
                }
                4..=6 => {
                    if ids.is_empty() {
                        continue;
                    }
                    // Mostly recent ids, which are likely live; sometimes any id,
                    // which is likely stale.
                    let pool = if rng.below(4) == 0 {
                        ids.len()
                    } else {
                        ids.len().min(32)
                    };
                    let back = rng.below(pool as u64) as usize;
                    let id = ids[ids.len() - 1 - back];
                    let expected = keys.remove(&id).and_then(|key| model.remove(&key));
                    cancelled += usize::from(expected.is_some());
                    assert_eq!(wheel.cancel(id), expected, "cancel at op {seq}");
                }
                _ => {
                    let call_ms = match rng.below(8) {
                        0 => now_ms.saturating_sub(rng.below(50)),
                        1 => {
                            jumps += 1;
                            now_ms + rng.below(30_000)
                        }
                        2..=4 => now_ms + rng.below(5),
                        _ => now_ms + rng.below(200),
                    };
                    now_ms = now_ms.max(call_ms);
                    model_cursor = model_cursor.max(call_ms / tick_ms);

                    let mut expected = Vec::new();
                    while let Some(entry) = model.first_entry() {
                        if entry.key().0 > model_cursor {
                            break;
                        }
                        expected.push(entry.remove());
                    }
                    keys.retain(|_, &mut (tick, _)| tick > model_cursor);
                    fired += expected.len();
                    assert_eq!(fire(&mut wheel, start + ms(call_ms)), expected, "op {seq}");
                }
            }

            assert_eq!(wheel.len(), model.len(), "length at op {seq}");
            let timeout = wheel.next_timeout(start + ms(now_ms));
            match model.keys().next() {
                None => assert_eq!(timeout, None, "empty at op {seq}"),
                Some(&(tick, _)) => {
                    let latest = ms((tick * tick_ms).saturating_sub(now_ms));
                    assert!(timeout.is_some_and(|t| t <= latest), "late at op {seq}");
                }
            }
        }

        // The walk must have exercised every path, not just the easy ones.
        assert!(
            fired > 1000 && cancelled > 300,
            "fired {fired}, cancelled {cancelled}"
        );
        assert!(jumps > 50 && far > 500, "jumps {jumps}, far {far}");
    }
}
