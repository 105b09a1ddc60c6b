//! The two tiers: the fast model that answers a request, the accurate one that refines it.

/// Which of the two models something belongs to: its settings, its metrics' `tier` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The fast model that answers a request at once.
    Fast,
    /// The slower, more accurate model that refines the answer in the background.
    Accurate,
}

impl Tier {
    /// The tier's name, as in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Fast => "fast",
            Tier::Accurate => "accurate",
        }
    }
}
