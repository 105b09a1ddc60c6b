//! The engine's choices as the command line spells them: clap's `ValueEnum` for [`Tier`],
//! [`Priority`] and [`Spin`], here so that nothing below `cli` depends on clap.

use clap::ValueEnum;
use clap::builder::PossibleValue;

use crate::engine::{Priority, Spin, Tier};

impl ValueEnum for Tier {
    fn value_variants<'a>() -> &'a [Self] {
        &[Tier::Fast, Tier::Accurate]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Tier::Fast => PossibleValue::new("fast").help("The fast model that answers a request at once"),
            Tier::Accurate => PossibleValue::new("accurate")
                .help("The slower, more accurate model that refines the answer in the background"),
        })
    }
}

impl ValueEnum for Priority {
    fn value_variants<'a>() -> &'a [Self] {
        &[Priority::Normal, Priority::Low, Priority::Idle]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Priority::Normal => PossibleValue::new("normal").help("Unchanged: compete for the CPU on equal terms"),
            Priority::Low => PossibleValue::new("low").help("nice 19: a small share of the CPU when it is contended"),
            Priority::Idle => PossibleValue::new("idle").help("SCHED_IDLE: only CPU time nothing else wants"),
        })
    }
}

impl ValueEnum for Spin {
    fn value_variants<'a>() -> &'a [Self] {
        &[Spin::Off, Spin::Idle, Spin::Always]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        // `true`/`false`: the spellings of the flag when it was a boolean.
        Some(match self {
            Spin::Off => {
                PossibleValue::new("off").alias("false").help("Never: threads sleep between operators and between runs")
            }
            Spin::Idle => PossibleValue::new("idle").help(
                "Only inside a run that has the engine to itself (one request, nothing waiting behind it), and \
                 never between runs. Costs a second ORT session of the model (no extra weights: prepacked weights \
                 are shared)",
            ),
            Spin::Always => {
                PossibleValue::new("always").alias("true").help("ORT's default: inside runs and for a while after each")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value parses back from the name it shows, as the derive did.
    #[test]
    fn every_value_round_trips_through_its_name() {
        fn round_trip<T: ValueEnum + PartialEq + std::fmt::Debug>() {
            for value in T::value_variants() {
                let name = value.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default();
                assert_eq!(T::from_str(&name, false).as_ref(), Ok(value), "{name}");
            }
        }
        round_trip::<Tier>();
        round_trip::<Priority>();
        round_trip::<Spin>();
        assert_eq!(Spin::from_str("true", false), Ok(Spin::Always));
        assert_eq!(Spin::from_str("false", false), Ok(Spin::Off));
        assert_eq!(Tier::Accurate.as_str(), "accurate");
    }
}
