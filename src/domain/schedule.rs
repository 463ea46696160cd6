//! Recurring schedules (SPEC 5): when the occurrences of a cron expression fall in a
//! time zone, and what to do about the ones missed while no process ran.
//!
//! Pure functions of (cron, zone, times), tested with a simulated clock. Daylight saving
//! follows croner's rules (the Open Cron Pattern Specification): a fixed-time job in a
//! spring-forward gap runs once, right after the gap; on a fall-back night it runs once,
//! in the first of the two repeated hours.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What happens to occurrences that passed while no process was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// They are skipped; the schedule goes on with the next one.
    #[default]
    Skip,
    /// One operation runs for them (however many there were), then it goes on.
    RunOnce,
}

impl Missed {
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::RunOnce => "run_once",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "skip" => Some(Missed::Skip),
            "run_once" => Some(Missed::RunOnce),
            _ => None,
        }
    }
}

/// An occurrence handled later than this is "missed" (the scheduler looks at least
/// every second, so an on-time one is handled well within it).
pub const GRACE: chrono::Duration = chrono::Duration::seconds(10);

/// Parses a 5-field cron expression (minute hour day-of-month month day-of-week).
pub fn parse_cron(text: &str) -> Result<Cron, String> {
    let fields = text.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "must have 5 fields (minute hour day-of-month month day-of-week), not {fields}"
        ));
    }
    text.parse::<Cron>()
        .map_err(|e| format!("is not a valid cron expression ({e})"))
}

pub fn parse_zone(text: &str) -> Result<Tz, String> {
    text.parse::<Tz>()
        .map_err(|_| "must be an IANA time zone such as Europe/Berlin".to_string())
}

/// The first occurrence strictly after `after`, as an instant.
pub fn next_occurrence(cron: &Cron, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&zone), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// What to do with a schedule whose `next_run_at` (`due`) has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The occurrence to create an operation for, if any.
    pub fire: Option<DateTime<Utc>>,
    /// Occurrences passed over without an operation.
    pub skipped: u32,
    /// The new `next_run_at`.
    pub next: Option<DateTime<Utc>>,
}

/// Plans the occurrences from `due` (itself an occurrence) up to `now`: the latest
/// runs when it is on time, or, missed, under `run_once`; the others are skipped.
pub fn plan(cron: &Cron, zone: Tz, due: DateTime<Utc>, now: DateTime<Utc>, missed: Missed) -> Plan {
    if due > now {
        return Plan {
            fire: None,
            skipped: 0,
            next: Some(due),
        };
    }
    let mut latest = due;
    let mut passed = 1u32;
    // Bounded: a schedule every minute down for a week is 10,080 occurrences.
    while passed < 100_000 {
        match next_occurrence(cron, zone, latest) {
            Some(t) if t <= now => {
                latest = t;
                passed += 1;
            }
            _ => break,
        }
    }
    let on_time = now - latest <= GRACE;
    let fire = (on_time || missed == Missed::RunOnce).then_some(latest);
    Plan {
        fire,
        skipped: passed - u32::from(fire.is_some()),
        next: next_occurrence(cron, zone, latest),
    }
}

/// A stored schedule; its operation's options are sealed (they may name patients).
#[derive(Debug, Clone)]
pub struct Schedule {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub operation_type: super::operation::OperationType,
    pub sealed_operation: Vec<u8>,
    pub enabled: bool,
    pub missed: Missed,
    pub next_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a schedule's sealed operation holds: what every occurrence runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduledOperation {
    pub parameters: super::operation::Parameters,
    pub email_notification: bool,
    pub dry_run: bool,
    /// The options as the API shows them (flat, with `type`).
    pub options: serde_json::Value,
}

/// The associated data of a schedule's sealed operation.
pub fn operation_aad(schedule_id: Uuid) -> Vec<u8> {
    format!("haven-schedule:{schedule_id}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(zone: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        zone.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .unwrap()
            .with_timezone(&Utc)
    }

    /// Runs the scheduler over `[from, to)` one simulated second at a time (skipping
    /// ahead to the next due time), as a process that never stops would.
    fn simulate(
        cron: &str,
        zone: Tz,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let cron = parse_cron(cron).unwrap();
        let mut fired = Vec::new();
        let mut next = next_occurrence(&cron, zone, from);
        let mut now = from;
        while let Some(due) = next {
            if due >= to {
                break;
            }
            now = now.max(due) + chrono::Duration::milliseconds(300);
            let p = plan(&cron, zone, due, now, Missed::Skip);
            fired.extend(p.fire);
            next = p.next;
        }
        fired
    }

    #[test]
    fn every_minute_fires_once_per_minute_over_a_simulated_day() {
        let zone: Tz = "Europe/Berlin".parse().unwrap();
        let from = at(zone, 2026, 6, 1, 0, 0);
        let start = from - chrono::Duration::seconds(1);
        let fired = simulate("* * * * *", zone, start, from + chrono::Duration::days(1));
        assert_eq!(fired.len(), 1440);
        let unique: std::collections::BTreeSet<_> = fired.iter().collect();
        assert_eq!(unique.len(), 1440, "no occurrence twice");
    }

    #[test]
    fn a_0230_job_runs_once_on_daylight_saving_nights() {
        for (zone, spring, fall) in [
            ("Europe/Berlin", (2026, 3, 29), (2026, 10, 25)),
            ("America/New_York", (2026, 3, 8), (2026, 11, 1)),
        ] {
            let zone: Tz = zone.parse().unwrap();
            for (y, m, d) in [spring, fall] {
                let from = at(zone, y, m, d, 0, 0) - chrono::Duration::hours(1);
                let fired = simulate("30 2 * * *", zone, from, from + chrono::Duration::hours(6));
                assert_eq!(fired.len(), 1, "{zone} {y}-{m}-{d}: {fired:?}");
                let local = fired[0].with_timezone(&zone);
                assert_eq!(
                    local.date_naive(),
                    chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap()
                );
                if (y, m, d) == spring {
                    // 02:30 does not exist that night: right after the gap.
                    assert_eq!(local.format("%H:%M").to_string(), "03:00", "{zone}");
                } else {
                    assert_eq!(local.format("%H:%M").to_string(), "02:30", "{zone}");
                }
            }
        }
    }

    #[test]
    fn missed_occurrences_are_skipped_or_run_once() {
        let zone: Tz = "Europe/Berlin".parse().unwrap();
        let cron = parse_cron("*/5 * * * *").unwrap();
        let due = at(zone, 2026, 6, 1, 10, 0);
        // Down from 09:58 to 10:12: 10:00, 10:05 and 10:10 passed.
        let now = at(zone, 2026, 6, 1, 10, 12);
        let skip = plan(&cron, zone, due, now, Missed::Skip);
        assert_eq!(skip.fire, None);
        assert_eq!(skip.skipped, 3);
        assert_eq!(skip.next, Some(at(zone, 2026, 6, 1, 10, 15)));
        let once = plan(&cron, zone, due, now, Missed::RunOnce);
        assert_eq!(
            once.fire,
            Some(at(zone, 2026, 6, 1, 10, 10)),
            "one, for the latest"
        );
        assert_eq!(once.skipped, 2);
        assert_eq!(once.next, Some(at(zone, 2026, 6, 1, 10, 15)));
        // On time: it runs whatever the policy.
        let on_time = plan(
            &cron,
            zone,
            due,
            due + chrono::Duration::seconds(1),
            Missed::Skip,
        );
        assert_eq!(on_time.fire, Some(due));
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        assert!(parse_cron("* * * *").is_err());
        assert!(parse_cron("0 * * * * *").is_err(), "no seconds field");
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_zone("Mars/Olympus").is_err());
        assert!(parse_zone("Europe/Berlin").is_ok());
    }
}
