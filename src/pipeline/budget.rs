//! A process-wide ceiling on the memory that image decoding holds at once.
//!
//! The pixel limit counts pixels, not bytes: a 64 MP RGBA 16-bit PNG is within it and decodes to
//! 512 MB, and a few such files at once would take the process to gigabytes. So every decode
//! first *reserves* the bytes it will allocate (computed from the header: bit depth × channels
//! × pixels, plus the 8-bit RGB copy the pipeline makes), and gives them back when its pixels
//! are dropped. An image that needs more than the whole ceiling is refused for good (413);
//! one that would pass the ceiling only because others are decoding is refused for now (503)
//! or, for a background tier, waits its turn.
//!
//! One `Mutex<u64>` and a `Condvar`: the critical section is an addition, and a waiter is woken
//! when bytes come back. Only decodes big enough to matter take part (see [`SMALL`]).

use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::ImageError;

/// Decodes needing less than this are not counted: a phone photo decoded at 1/8 scale needs
/// well under 1 MB, and the common case should not touch a shared lock.
const SMALL: u64 = 4 << 20;

pub struct DecodeBudget {
    limit: u64,
    used: Mutex<Used>,
    returned: Condvar,
}

#[derive(Debug, Default, Clone, Copy)]
struct Used {
    all: u64,
    background: u64,
}

/// Who is decoding: a tier that answers clients, or one that works in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Never waits: refused at once (503) when the budget is held by others.
    #[default]
    Foreground,
    /// Waits up to [`BACKGROUND_WAIT`] for room, within its half of the budget.
    Background,
}

/// How long a background decode waits for room before its attempt fails.
pub const BACKGROUND_WAIT: Duration = Duration::from_secs(300);

/// Bytes held by one decode; given back when dropped.
#[must_use]
pub struct Reservation {
    bytes: u64,
    background: bool,
}

static BUDGET: OnceLock<DecodeBudget> = OnceLock::new();

/// Sets the ceiling (`--decode-memory`) before the first decode; later calls change nothing.
pub fn configure(limit: u64) {
    let _ = BUDGET.set(DecodeBudget::new(limit));
}

/// The ceiling in force.
pub fn limit() -> u64 {
    global().limit
}

fn global() -> &'static DecodeBudget {
    BUDGET.get_or_init(|| DecodeBudget::new(default_limit()))
}

/// An eighth of the machine's memory, at least 1 GiB (one 64 MP RGBA 16-bit image with its
/// RGB copy fits) and at most 4 GiB.
pub fn default_limit() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    total.map_or(1 << 30, |bytes| (bytes / 8).clamp(1 << 30, 4 << 30))
}

/// Reserves `bytes` from the process's budget for a decode of the given priority.
pub(super) fn reserve(bytes: u64, priority: Priority) -> Result<Reservation, ImageError> {
    let wait = match priority {
        Priority::Foreground => Duration::ZERO,
        Priority::Background => BACKGROUND_WAIT,
    };
    global().reserve(bytes, priority == Priority::Background, wait)
}

impl DecodeBudget {
    fn new(limit: u64) -> Self {
        Self { limit: limit.max(1), used: Mutex::new(Used::default()), returned: Condvar::new() }
    }

    fn reserve(&'static self, bytes: u64, background: bool, wait: Duration) -> Result<Reservation, ImageError> {
        if bytes < SMALL {
            return Ok(Reservation { bytes: 0, background });
        }
        if bytes > self.limit {
            return Err(ImageError::OverMemory { needed: bytes, limit: self.limit });
        }
        let fits = |used: &Used| {
            used.all + bytes <= self.limit
                && (!background || used.background == 0 || used.background + bytes <= self.limit / 2)
        };
        let deadline = Instant::now() + wait;
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        while !fits(&used) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ImageError::DecodeBusy { needed: bytes, free: self.limit - used.all, limit: self.limit });
            }
            used = self.returned.wait_timeout(used, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        used.all += bytes;
        if background {
            used.background += bytes;
        }
        Ok(Reservation { bytes, background })
    }

    fn give_back(&self, bytes: u64, background: bool) {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        used.all = used.all.saturating_sub(bytes);
        if background {
            used.background = used.background.saturating_sub(bytes);
        }
        self.returned.notify_all();
    }

    #[cfg(test)]
    fn used(&self) -> u64 {
        self.used.lock().unwrap_or_else(PoisonError::into_inner).all
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            global().give_back(self.bytes, self.background);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A budget of its own, leaked so reservations can point at it like the global one.
    fn budget(limit: u64) -> &'static DecodeBudget {
        Box::leak(Box::new(DecodeBudget::new(limit)))
    }

    /// Reservations against a private budget; given back by hand (Drop returns to the global).
    fn take(budget: &'static DecodeBudget, bytes: u64, wait: Duration) -> Result<u64, ImageError> {
        reserve_as(budget, bytes, false, wait)
    }

    fn reserve_as(
        budget: &'static DecodeBudget,
        bytes: u64,
        background: bool,
        wait: Duration,
    ) -> Result<u64, ImageError> {
        budget.reserve(bytes, background, wait).map(|r| {
            let bytes = r.bytes;
            std::mem::forget(r);
            bytes
        })
    }

    #[test]
    fn over_the_whole_ceiling_is_refused_for_good_and_over_what_is_left_for_now() {
        let b = budget(100 << 20);
        assert!(matches!(take(b, 101 << 20, Duration::ZERO), Err(ImageError::OverMemory { .. })));
        assert_eq!(take(b, 60 << 20, Duration::ZERO).ok(), Some(60 << 20));
        assert!(matches!(take(b, 60 << 20, Duration::ZERO), Err(ImageError::DecodeBusy { .. })));
        b.give_back(60 << 20, false);
        assert_eq!(b.used(), 0);
        assert_eq!(take(b, 60 << 20, Duration::ZERO).ok(), Some(60 << 20));
    }

    #[test]
    fn small_decodes_are_not_counted() {
        let b = budget(8 << 20);
        for _ in 0..100 {
            assert_eq!(take(b, 1 << 20, Duration::ZERO).ok(), Some(0));
        }
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_waiter_gets_its_bytes_when_they_come_back() {
        let b = budget(100 << 20);
        assert!(take(b, 80 << 20, Duration::ZERO).is_ok());
        let waiter = std::thread::spawn(move || take(b, 50 << 20, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        b.give_back(80 << 20, false);
        assert_eq!(waiter.join().ok().and_then(Result::ok), Some(50 << 20));
    }

    /// Background decodes together keep to half the budget (one alone may take more), so the
    /// foreground always has room while a starved background decode holds its bytes.
    #[test]
    fn background_decodes_leave_the_foreground_half_the_budget() {
        let b = budget(100 << 20);
        assert!(reserve_as(b, 40 << 20, true, Duration::ZERO).is_ok());
        assert!(matches!(reserve_as(b, 20 << 20, true, Duration::ZERO), Err(ImageError::DecodeBusy { .. })));
        assert!(take(b, 60 << 20, Duration::ZERO).is_ok());
        b.give_back(40 << 20, true);
        b.give_back(60 << 20, false);
        // Alone, a background decode may need more than half.
        assert!(reserve_as(b, 80 << 20, true, Duration::ZERO).is_ok());
    }

    #[test]
    fn the_default_fits_one_image_at_the_pixel_limit() {
        let limit = default_limit();
        assert!((1 << 30..=4 << 30).contains(&limit), "{limit}");
    }
}
